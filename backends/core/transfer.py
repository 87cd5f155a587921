"""The transfer rules: every network read has a deadline and every wait can be cancelled.

One ``Watch`` per job (or per maintenance fetch) carries both rules:

* stall: a transfer that makes less than ``MIN_PROGRESS_BYTES`` (1 KiB) of progress in
  ``stall_seconds`` (``LOCALAI_ADMIN_STALL_SECONDS``, default 60) fails that attempt
  with ``Stalled``, whose message names the source (host and path: a query string may
  hold a credential). The socket read timeout is ``stall_seconds`` too, so a source that
  sends nothing at all fails the same way; ``read`` measures a trickling one.
  Callers retry a stalled source at most ``STALL_ATTEMPTS`` times in all.
* cancel: ``should_cancel`` (which may read the database, so it is only called in the
  thread that made the watch) is polled at least every ``POLL_SECONDS`` while the job
  waits. A network call or body read made in that thread runs in a helper thread
  (``call``, ``pump``) so that the job thread never blocks in a socket read; on a
  cancel the sockets of the job's connections are shut down, which wakes a read blocked
  in any thread at once, and ``Cancelled`` is raised.

No Django imports.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import suppress
from typing import Any, TypeVar

import httpx

DEFAULT_STALL_SECONDS = 60.0
MIN_PROGRESS_BYTES = 1024
# How often a waiting job thread looks at the cancel flag (the job runner's own poll
# of the database is throttled to 250 ms as well).
POLL_SECONDS = 0.25
# A stalled source is tried this many times in all before the job fails: a dead source
# costs at most this many stall periods.
STALL_ATTEMPTS = 2
# The helper thread of ``pump`` queues at most this many reads ahead of the consumer.
_PUMP_QUEUE = 8

T = TypeVar("T")


class Cancelled(Exception):
    """``should_cancel`` returned True. Not a failure: nothing went wrong."""


class Stalled(TimeoutError):
    """A source sent less than 1 KiB in the stall period; the message names it."""


def source_label(url: httpx.URL | str) -> str:
    """``host[:port]/path`` of ``url``: what a message may show of a source (no user
    info, no query string, which may hold a signature or token)."""
    url = httpx.URL(str(url))
    host = url.host
    if ":" in host:
        host = f"[{host}]"
    port = f":{url.port}" if url.port else ""
    return f"{host}{port}{url.path}"


def stalled(url: httpx.URL | str, stall_seconds: float, received: int = 0) -> Stalled:
    """The Stalled error for ``url``: ``received`` bytes came in the last period."""
    what = (
        f"less than {MIN_PROGRESS_BYTES // 1024} KiB arrived in"
        if received
        else "nothing arrived (the read timed out) for"
    )
    return Stalled(
        f"{source_label(url)} stalled: {what} {stall_seconds:g} s, the limit set by "
        "LOCALAI_ADMIN_STALL_SECONDS"
    )


class StallClock:
    """Progress of one transfer against the stall rule: each time 1 KiB more has
    arrived the period starts again; a period that ends short of it raises Stalled."""

    def __init__(self, url: httpx.URL | str, stall_seconds: float) -> None:
        self.url = url
        self.stall_seconds = stall_seconds
        self._since = time.monotonic()
        self._received = 0

    def advance(self, size: int) -> None:
        self._received += size
        now = time.monotonic()
        if self._received >= MIN_PROGRESS_BYTES:
            self._since, self._received = now, 0
        elif now - self._since > self.stall_seconds:
            raise stalled(self.url, self.stall_seconds, self._received)


class Watch:
    """The deadlines and cancel switch of one job, shared by the threads it uses."""

    def __init__(
        self,
        should_cancel: Callable[[], bool] | None = None,
        *,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
    ) -> None:
        self.stall_seconds = float(stall_seconds)
        self._should_cancel = should_cancel
        self._owner = threading.get_ident()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._streams: list[Any] = []

    @property
    def timeout(self) -> httpx.Timeout:
        """The per-request timeout: connect, every read and write, the pool wait."""
        return httpx.Timeout(self.stall_seconds)

    @property
    def extensions(self) -> dict[str, Any]:
        """Request extensions that let ``cancel`` reach the connections a request opens."""
        return {"trace": self._trace}

    # -- cancel --

    def check(self) -> None:
        """Raise Cancelled once a cancel was asked. In the thread that made the watch
        this polls ``should_cancel``; elsewhere it only reads the flag."""
        if (
            not self._cancelled.is_set()
            and self._should_cancel is not None
            and threading.get_ident() == self._owner
            and self._should_cancel()
        ):
            self.cancel()
        if self._cancelled.is_set():
            raise Cancelled("cancelled")

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop every transfer of this watch: set the flag and shut the sockets down,
        which ends a read blocked in any thread."""
        self._cancelled.set()
        with self._lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            _shutdown(stream)

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        # httpcore reports each new connection (and its TLS wrapper) here.
        if event in (
            "connection.connect_tcp.complete",
            "connection.start_tls.complete",
        ):
            self._register(info.get("return_value"))

    def _register(self, stream: Any) -> None:
        if stream is None:
            return
        with self._lock:
            if len(self._streams) > 64:  # a long job: forget connections long closed
                del self._streams[:32]
            self._streams.append(stream)
        if self._cancelled.is_set():
            _shutdown(stream)

    # -- reads --

    def read(self, response: httpx.Response, *, raw: bool = False) -> Iterator[bytes]:
        """The body of ``response`` under the stall rule (and the cancel flag)."""
        # A reused connection was registered when it opened, perhaps by another job.
        self._register(response.extensions.get("network_stream"))
        clock = StallClock(response.request.url, self.stall_seconds)
        chunks = response.iter_raw() if raw else response.iter_bytes()
        try:
            for chunk in chunks:
                self.check()
                clock.advance(len(chunk))
                yield chunk
        except httpx.TimeoutException:
            self.check()
            raise stalled(response.request.url, self.stall_seconds) from None
        except httpx.TransportError:
            self.check()  # a cancel shut the socket: say so, not "connection lost"
            raise

    def call(self, work: Callable[[], T]) -> T:
        """``work()``, run in a helper thread when this thread must keep polling for a
        cancel (it made the watch, and a cancel can be asked)."""
        if self._should_cancel is None or threading.get_ident() != self._owner:
            return work()
        self.check()
        box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

        def run() -> None:
            try:
                outcome: tuple[bool, Any] = (True, work())
            except BaseException as exc:
                outcome = (False, exc)
            if self._cancelled.is_set() and outcome[0]:
                _close(outcome[1])  # nobody waits for it any more
            box.put(outcome)

        threading.Thread(target=run, name="transfer-call", daemon=True).start()
        while True:
            try:
                ok, value = box.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self.check()
                continue
            if ok:
                return value  # type: ignore[no-any-return]
            raise value

    def pump(
        self, chunks: Iterator[bytes], response: httpx.Response | None = None
    ) -> Generator[bytes]:
        """Iterate ``chunks`` (a network read of ``response``) in a helper thread,
        handing them on to this one, which checks for a cancel every POLL_SECONDS
        while it waits. Left early, it shuts the response's socket down and lets the
        helper finish before the caller closes the response."""
        if self._should_cancel is None or threading.get_ident() != self._owner:
            yield from chunks
            return
        pieces: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=_PUMP_QUEUE)
        stop = threading.Event()

        def put(item: tuple[int, Any]) -> bool:
            while not stop.is_set():
                try:
                    pieces.put(item, timeout=POLL_SECONDS)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            try:
                for chunk in chunks:
                    if stop.is_set() or not put((0, chunk)):
                        return
                put((1, None))
            except BaseException as exc:
                put((2, exc))

        thread = threading.Thread(target=run, name="transfer-pump", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    kind, value = pieces.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    self.check()
                    continue
                if kind == 1:
                    return
                if kind == 2:
                    raise value
                self.check()
                yield value
        finally:
            stop.set()
            if thread.is_alive():
                if response is not None:
                    _shutdown(response.extensions.get("network_stream"))
                thread.join(1.0)


def _shutdown(stream: Any) -> None:
    if stream is None:
        return
    try:
        sock = stream.get_extra_info("socket")
    except Exception:  # a stream of another kind: nothing to shut
        return
    if sock is None:
        return
    # socket.socket's own shutdown, not SSLSocket's, which would drop its TLS state
    # under the thread still reading it. An error means it is closed already.
    with suppress(OSError, ValueError, TypeError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        with suppress(Exception):  # best effort on an abandoned result
            close()


class BodyTooLarge(ValueError):
    """A response body over the cap its reader set."""


class BodyTimedOut(TimeoutError):
    """A response body still arriving when the whole transfer's deadline passed."""


def read_capped(
    response: httpx.Response, watch: Watch, *, max_bytes: int, deadline: float
) -> bytes:
    """The whole body of a small response (an icon) in memory; see ``copy_capped``."""
    chunks: list[bytes] = []
    copy_capped(response, watch, chunks.append, max_bytes=max_bytes, deadline=deadline)
    return b"".join(chunks)


def copy_capped(
    response: httpx.Response,
    watch: Watch,
    write: Callable[[bytes], object],
    *,
    max_bytes: int,
    deadline: float,
) -> None:
    """Pass a response's body to ``write`` chunk by chunk, under the stall rule, at most
    ``max_bytes`` (the declared length is checked first), and finished before
    ``deadline`` (``time.monotonic()``), so a trickling server cannot hold a fetch."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"larger than {max_bytes} bytes")
    size = 0
    for chunk in watch.read(response):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise BodyTimedOut("the whole transfer took too long")
        write(chunk)
