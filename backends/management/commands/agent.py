from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from backends.core import hardware
from backends.core.install import Installer
from backends.models import Job, Node
from backends.services import dispatch, pipeline, usage

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Run this host as a worker node: register with the controller, heartbeat, and "
        "run the install jobs queued for this node (distributed mode)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--controller", required=True, help="the dashboard's base URL"
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.LOCALAI_ADMIN_INSTALL_WORKERS,
            help="jobs run at once (default: LOCALAI_ADMIN_INSTALL_WORKERS)",
        )

    def handle(self, *args: Any, controller: str, workers: int, **options: Any) -> None:
        if not settings.DISTRIBUTED:
            raise CommandError(
                "an agent needs distributed mode: DATABASE_URL on PostgreSQL and HUEY_REDIS_URL"
            )
        if workers < 1:
            raise CommandError("--workers must be 1 or more")
        token = settings.LOCALAI_ADMIN_REGISTRATION_TOKEN
        if not token and not settings.LOCALAI_ADMIN_ALLOW_EMPTY_TOKEN:
            raise CommandError(
                "LOCALAI_ADMIN_REGISTRATION_TOKEN is empty: set it (the same value as on the "
                "controller), or set LOCALAI_ADMIN_ALLOW_EMPTY_TOKEN=True on both sides"
            )
        client = httpx.Client(
            base_url=controller.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        node = self.register(client)
        self.recover(node)
        # Jobs open their own connection; an idle agent holds none (docs/distributed.md).
        connection.close()
        stop = threading.Event()
        beat = threading.Thread(
            target=self.heartbeat, args=(client, node, stop), daemon=True
        )
        beat.start()
        queue, _task = dispatch.node_queue(dispatch.queue_name(node.name))
        self.stdout.write(
            f"agent {node.name} ({node.capability}) consuming {queue.name}"
        )
        try:
            # The node queue holds only install jobs: periodic maintenance runs on the
            # controller's own worker, so an agent busy with slow installs delays none.
            queue.create_consumer(
                workers=workers, worker_type="thread", periodic=False
            ).run()
        finally:
            stop.set()

    def register(self, client: httpx.Client) -> Node:
        report = hardware.probe(
            settings.LOCALAI_ADMIN_PROBE_ROOT,
            forced=settings.LOCALAI_FORCE_META_BACKEND_CAPABILITY,
        )
        body = {
            "name": settings.NODE_NAME,
            "hardware": report.to_dict(),
            "backends_path": str(settings.LOCALAI_BACKENDS_PATH),
            "models": usage.model_report(report.capability),
        }
        try:
            response = client.post("/api/node/register", json=body)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach the controller: {exc}") from None
        if response.status_code >= 400:
            raise CommandError(
                f"registration refused ({response.status_code}): {response.text}"
            )
        return Node.objects.get(pk=response.json()["id"])

    def recover(self, node: Node) -> None:
        """After a restart: fail this node's orphaned jobs, tidy the folder, reconcile."""
        from django.utils import timezone

        failed = Job.objects.fail_interrupted(node, timezone.now())
        for job in Job.objects.filter(
            node=node, state=Job.State.FAILED, parent__isnull=False
        ):
            if job.parent is not None and job.parent.is_active:
                Job.objects.settle_parent(job.parent.pk)
        actions = Installer(
            Path(settings.LOCALAI_BACKENDS_PATH),
            keep_versions=settings.LOCALAI_ADMIN_KEEP_VERSIONS,
        ).recover()
        pipeline.reconcile(node)
        if failed or actions:
            log.warning(
                "agent %s recovered: %d job(s) failed; %s", node.name, failed, actions
            )

    def heartbeat(
        self, client: httpx.Client, node: Node, stop: threading.Event
    ) -> None:
        while not stop.wait(settings.NODE_HEARTBEAT_SECONDS):
            try:
                client.post(
                    f"/api/node/{node.pk}/heartbeat",
                    json=heartbeat_body(node.capability),
                )
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", exc)
            finally:
                connection.close()  # in case the models report read the database


def disk_report() -> dict[str, Any]:
    """The backends disk's space, for the controller's node cards; nothing if unreadable."""
    # The folder may not exist before the first install: its disk is its parent's.
    path = Path(settings.LOCALAI_BACKENDS_PATH).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        space = shutil.disk_usage(path)
    except OSError:
        return {}
    return {"disk": {"total": space.total, "free": space.free}}


def heartbeat_body(capability: str) -> dict[str, Any]:
    """What each heartbeat carries: the disk's space and LocalAI's models here."""
    return {**disk_report(), "models": usage.model_report(capability)}
