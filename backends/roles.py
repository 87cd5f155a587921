"""Roles: who may do what, as Django permissions (docs/security.md, "Roles").

Every page and API route names one of these permissions; groups named after the roles
hold them (migration 0004). A superuser has every permission.
"""

from __future__ import annotations

from backends.core.sources import SourceKind, classify

VIEW = "backends.view_backends"
INSTALL = "backends.install_backend"
UPGRADE = "backends.upgrade_backend"
CANCEL_JOB = "backends.cancel_job"
RETRY_JOB = "backends.retry_job"
DELETE = "backends.delete_backend"
INSTALL_FROM_PATH = "backends.install_from_path"
SYNC_GALLERY = "backends.sync_gallery"
MANAGE_NODES = "backends.manage_nodes"
# Admin only: the log names users and their addresses.
VIEW_AUDIT = "backends.view_audit"
# Not a permission: the agents' routes take the registration token, not a user.
AGENT = "agent registration token"

# Each role holds the permissions of the roles before it.
ROLES: dict[str, tuple[str, ...]] = {
    "viewer": (VIEW,),
    "operator": (VIEW, INSTALL, UPGRADE, CANCEL_JOB, RETRY_JOB),
    "admin": (
        VIEW,
        INSTALL,
        UPGRADE,
        CANCEL_JOB,
        RETRY_JOB,
        DELETE,
        INSTALL_FROM_PATH,
        SYNC_GALLERY,
        MANAGE_NODES,
        VIEW_AUDIT,
    ),
}


def least_role(permission: str) -> str:
    """The first role that holds ``permission``: what a refusal tells the user to ask for."""
    for role, permissions in ROLES.items():
        if permission in permissions:
            return role
    return "superuser"


def refusal(permission: str) -> str:
    """The message of a 403: the permission that is missing, and a role that has it."""
    return f"permission {permission} required ({least_role(permission)} role or above)"


def to_install_from(uri: str) -> str:
    """What an install from ``uri`` needs: a file or folder on this host is more than an
    install, since the worker runs whatever that path holds as the host admin."""
    if classify(uri) in (SourceKind.FILE, SourceKind.FOLDER, SourceKind.PATH):
        return INSTALL_FROM_PATH
    return INSTALL
