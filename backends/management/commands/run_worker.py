from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from huey import Huey
from huey.consumer import Consumer
from huey.consumer_options import ConsumerConfig

log = logging.getLogger(__name__)

# How often a crashed worker thread is replaced, as Huey's own consumer does.
HEALTH_CHECK_SECONDS = 10.0


class Command(BaseCommand):
    help = (
        "Run this host's worker: the maintenance queue (gallery syncs, upgrade checks, "
        "periodic tasks) and the install queue, each with threads of its own, in one "
        "process. SIGINT waits for running tasks (a second signal stops at once); "
        "SIGTERM and SIGHUP stop at once, and the next start fails the jobs left running."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="maintenance threads (default: HUEY_WORKERS, 2)",
        )
        parser.add_argument(
            "--install-workers",
            type=int,
            default=None,
            help="install threads (default: LOCALAI_ADMIN_INSTALL_WORKERS, 4)",
        )

    def handle(
        self,
        *args: Any,
        workers: int | None = None,
        install_workers: int | None = None,
        **options: Any,
    ) -> None:
        consumers = self.consumers(workers, install_workers)
        self.stopping = threading.Event()
        self.hurry = threading.Event()
        self.graceful = False
        for consumer in consumers:
            consumer.start()
        # Each consumer's start() installed handlers meant for a lone consumer; one set
        # here stops both together.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        for consumer in consumers:
            self.stdout.write(
                f"consuming {consumer.huey.name} with {consumer.workers} thread(s)"
            )
        try:
            while not self.stopping.wait(HEALTH_CHECK_SECONDS):
                for consumer in consumers:
                    consumer.check_worker_health()
        finally:
            self.shutdown(consumers)

    def consumers(
        self, workers: int | None, install_workers: int | None
    ) -> list[Consumer]:
        from huey.contrib.djhuey import HUEY

        # Registers every task, periodic task and startup hook on both queues.
        from backends import tasks  # noqa: F401  registers the maintenance tasks
        from backends.services import dispatch

        return [
            self.consumer(HUEY, settings.HUEY, workers, "--workers"),
            self.consumer(
                dispatch.INSTALLS,
                settings.HUEY_INSTALLS,
                install_workers,
                "--install-workers",
            ),
        ]

    def consumer(
        self, huey: Huey, config: dict[str, Any], workers: int | None, flag: str
    ) -> Consumer:
        if huey.immediate:
            raise CommandError(
                f"{huey.name} is in immediate mode (HUEY_IMMEDIATE=True): "
                "tasks run where they are queued, there is nothing to consume"
            )
        options = dict(config.get("consumer", {}))
        if workers is not None:
            options["workers"] = workers
        if options.get("workers", 1) < 1:
            raise CommandError(f"{flag} must be 1 or more")
        values = ConsumerConfig(**options)
        values.validate()
        return huey.create_consumer(**values.values)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping.is_set():
            self.hurry.set()
            return
        self.graceful = signum == signal.SIGINT
        self.stopping.set()

    def shutdown(self, consumers: list[Consumer]) -> None:
        # No thread of either queue takes another task from here on.
        for consumer in consumers:
            consumer.stop_flag.set()
        if self.graceful:
            log.info("waiting for running tasks to end; interrupt again to stop now")
            while any(self.running(c) for c in consumers) and not self.hurry.wait(0.2):
                pass
        for consumer in consumers:
            consumer.stop(graceful=False)
            consumer.huey.notify_interrupted_tasks()

    @staticmethod
    def running(consumer: Consumer) -> bool:
        threads = [thread for _worker, thread in consumer.worker_threads]
        return any(thread.is_alive() for thread in [*threads, consumer.scheduler])
