from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.test import TestCase
from huey.contrib.djhuey import HUEY
from huey.storage import MemoryStorage

from backends.models import ApiToken, Gallery
from backends.services import dispatch
from tests.parts import FIXTURES

# The groups as migration 0004 makes them.
ROLE_GROUPS = importlib.import_module("backends.migrations.0004_role_groups")

REAL_GALLERY = FIXTURES / "galleries" / "localai-index.yaml"
KNOWN_BACKENDS = FIXTURES / "known-backends.json"

SMALL_GALLERY = """
- &llama
  name: llama-cpp
  alias: llama-cpp
  description: LLM inference in C/C++
  tags: [text-to-text, LLM]
  capabilities:
    default: cpu-llama-cpp
    nvidia: cuda12-llama-cpp
    nvidia-cuda-12: cuda12-llama-cpp
    metal: metal-llama-cpp
- !!merge <<: *llama
  name: cpu-llama-cpp
  uri: quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp
- !!merge <<: *llama
  name: cuda12-llama-cpp
  uri: quay.io/go-skynet/local-ai-backends:latest-gpu-nvidia-cuda-12-llama-cpp
- !!merge <<: *llama
  name: metal-llama-cpp
  uri: quay.io/go-skynet/local-ai-backends:latest-metal-darwin-arm64-llama-cpp
- name: whisper
  description: Speech to text
  tags: [asr]
  capabilities:
    default: cpu-whisper
- name: cpu-whisper
  alias: whisper
  uri: quay.io/go-skynet/local-ai-backends:latest-cpu-whisper
"""


@contextmanager
def queued_tasks() -> Iterator[None]:
    """Enqueued tasks wait in memory, as with a stopped worker, instead of running at once.

    Tests run with Huey's immediate mode (tests/conftest.py); leaving it also swaps the
    storage back to the configured one, so an in-memory queue replaces it here, on the
    maintenance queue and the install queue alike.
    Use ``with queued_tasks():`` or ``self.enterContext(queued_tasks())`` in ``setUp``.
    """
    queues = (HUEY, dispatch.INSTALLS)
    saved = [(queue.immediate, queue.storage) for queue in queues]
    for queue in queues:
        queue.immediate = False
        queue.storage = MemoryStorage(queue.name)
    try:
        yield
    finally:
        for queue, (immediate, storage) in zip(queues, saved, strict=True):
            queue.immediate = immediate
            queue.storage = storage


def user_with_role(username: str, role: str = "", **fields: Any) -> User:
    """A user in one of the role groups (migration 0004), or in none.

    Tests on a flushed database (TransactionTestCase, live_server) lose the groups the
    migration made, not the permissions: the group is made again then.
    """
    user = User.objects.create_user(username, password="password", **fields)
    if role:
        group, created = Group.objects.get_or_create(name=role)
        if created:
            group.permissions.set(
                Permission.objects.filter(
                    content_type__app_label="backends",
                    codename__in=ROLE_GROUPS.ROLES[role],
                )
            )
        user.groups.add(group)
    return user


class BaseTestCase(TestCase):
    """Named personas and a small synced gallery.

    alice is an admin (and staff, for the Django admin), bob a viewer, carol an operator,
    and dave is signed in with no role at all.
    """

    def setUp(self) -> None:
        super().setUp()
        self.alice = user_with_role("alice", "admin", is_staff=True)
        self.bob = user_with_role("bob", "viewer")
        self.carol = user_with_role("carol", "operator")
        self.dave = user_with_role("dave")
        self.token_value = ApiToken.objects.create_token(self.alice, "tests")[1]
        self.gallery_file = Path(settings.LOCALAI_BACKENDS_PATH).parent / "gallery.yaml"
        self.gallery_file.write_text(SMALL_GALLERY)
        self.gallery = Gallery.objects.create(
            name="localai", url=self.gallery_file.as_uri()
        )

    def api_get(self, url: str, **kwargs: Any) -> Any:
        return self.client.get(
            url, headers={"Authorization": f"Bearer {self.token_value}"}, **kwargs
        )

    def api_post(self, url: str, data: Any = None, **kwargs: Any) -> Any:
        body = json.dumps(data) if data is not None else ""
        return self.client.post(
            url,
            body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.token_value}"},
            **kwargs,
        )

    def install_on_disk(
        self, name: str, *, alias: str = "", meta_for: str = ""
    ) -> Path:
        """Lay out an installed backend folder the way the installer leaves it."""
        folder = Path(settings.LOCALAI_BACKENDS_PATH) / name
        folder.mkdir(parents=True)
        metadata: dict[str, str] = {"name": name}
        if meta_for:
            metadata["meta_backend_for"] = meta_for
        else:
            run = folder / "run.sh"
            run.write_text("#!/bin/sh\necho run\n")
            run.chmod(0o755)
        if alias:
            metadata["alias"] = alias
        (folder / "metadata.json").write_text(json.dumps(metadata))
        return folder


def make_build(
    folder: Path, version: str = "v1", extra: dict[str, str] | None = None
) -> Path:
    """A backend build laid out as a local folder source: run.sh plus any extra files."""
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / "run.sh"
    run.write_text(f"#!/bin/sh\necho {version}\n")
    run.chmod(0o755)
    for name, content in (extra or {}).items():
        (folder / name).write_text(content)
    return folder


class PipelineTestCase(BaseTestCase):
    """A gallery whose builds are local folders, so installs run without a network."""

    def setUp(self) -> None:
        super().setUp()
        self.sources = self.gallery_file.parent / "sources"
        for name in ("cpu-foo", "cuda12-foo", "cpu-bar"):
            make_build(self.sources / name)
        self.write_gallery()
        self.gallery.sync(force=True)

    def write_gallery(self, version: str = "") -> None:
        version_line = f"  version: '{version}'\n" if version else ""
        self.gallery_file.write_text(
            "- name: foo\n  capabilities:\n    default: cpu-foo\n    nvidia: cuda12-foo\n"
            "- name: foo-twin\n  capabilities:\n    default: cpu-foo\n"
            f"- name: cpu-foo\n  alias: foo\n  uri: {self.sources / 'cpu-foo'}\n{version_line}"
            f"- name: cuda12-foo\n  alias: foo\n  uri: {self.sources / 'cuda12-foo'}\n"
            f"- name: cpu-bar\n  uri: {self.sources / 'cpu-bar'}\n"
            f"- name: broken\n  uri: {self.sources / 'missing'}\n"
        )

    def apply(self, target: str, **extra: Any) -> Any:
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post("/backends/apply", {"id": target, **extra})

    def status(self, response: Any) -> dict[str, Any]:
        body: dict[str, Any] = self.api_get(
            f"/backends/jobs/{response.json()['id']}"
        ).json()
        return body

    @property
    def backends(self) -> Path:
        return Path(settings.LOCALAI_BACKENDS_PATH)
