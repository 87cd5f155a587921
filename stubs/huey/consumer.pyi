import threading
from typing import Any

from huey.api import Huey

class Consumer:
    huey: Huey
    workers: int
    stop_flag: threading.Event
    worker_threads: list[tuple[Any, threading.Thread]]
    scheduler: threading.Thread
    def run(self) -> None: ...
    def start(self) -> None: ...
    def stop(self, graceful: bool = ...) -> None: ...
    def check_worker_health(self) -> None: ...
