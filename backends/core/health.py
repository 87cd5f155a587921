"""Start a staged build the way LocalAI starts a backend and ask it whether it is healthy.

An install that unpacks cleanly can still fail the first time LocalAI loads it (a missing
shared library, a wrong CPU build, a ``run.sh`` that points nowhere). Before the swap the
installer hands the staging folder to ``HealthCheck``, which

* runs ``<staging>/run.sh --addr 127.0.0.1:<free port>`` with the staging folder as its
  working directory, as LocalAI does (pkg/model/process.go), but in a process group of its
  own and with a minimal environment: PATH, HOME, LANG and the Vulkan loader variables
  LocalAI adds for builds that ship ICD manifests. LocalAI hands a backend its whole
  environment; the worker's holds the database URL, tokens and registry credentials, and
  this is a build we have not trusted yet.
* calls ``backend.Backend/Health`` (an empty ``HealthMessage``) until it answers or
  ``timeout_seconds`` pass. Healthy means what LocalAI's client requires: the ``Reply``
  whose ``message`` (field 1) is exactly ``OK``.
* stops the group: SIGTERM, then SIGKILL after ``grace_seconds``, so that nothing the
  build started is left running.

A failure raises ``HealthCheckFailed`` (an ``InstallError``) carrying the last lines of
what the build printed, with every URL in them redacted. The cancel flag of the job's
``Watch`` is looked at between calls, every ``POLL_SECONDS`` at most.

No Django imports: the job runner builds one from the settings.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc

from backends.core.install import InstallError
from backends.core.installed import RUN_FILE
from backends.core.redact import redact_text
from backends.core.transfer import POLL_SECONDS, Watch

HEALTH_METHOD = "/backend.Backend/Health"
HEALTHY = b"OK"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_GRACE_SECONDS = 5.0
TAIL_LINES = 40
# What is kept of the output: enough for TAIL_LINES long lines, never the whole stream
# (a build may print without end while we wait).
_TAIL_BYTES = 16 * 1024
_LINE_CHARS = 400
# One Health call may take this long before the next try: a server that accepts the
# connection and never answers is retried, and a cancel is still seen within it.
_CALL_SECONDS = 1.0
_REAP_SECONDS = 5.0
# The variables of the worker's environment a backend gets; anything else (database
# URL, tokens, credentials) stays with the worker.
PASSED_VARIABLES = ("PATH", "HOME", "LANG")
_FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"


class HealthCheckFailed(InstallError):
    """The build did not answer the Health call; the message ends with its output."""


@dataclass(frozen=True)
class HealthCheck:
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    grace_seconds: float = DEFAULT_GRACE_SECONDS

    def __call__(self, folder: Path, watch: Watch) -> None:
        folder = folder.resolve()
        address = f"127.0.0.1:{free_port()}"
        output = _Tail()
        try:
            process = subprocess.Popen(
                [str(folder / RUN_FILE), "--addr", address],
                cwd=folder,
                env=backend_environment(folder),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            # e.g. a run.sh without a "#!" line: LocalAI could not start it either.
            raise HealthCheckFailed(
                f"health check failed: {RUN_FILE} could not be started: {exc.strerror}"
            ) from None
        assert process.stdout is not None
        reader = output.follow(process.stdout)
        try:
            problem = self._wait_healthy(process, address, watch)
        finally:
            stop_group(process, self.grace_seconds)
            reader.join(timeout=1)
        if problem:
            raise HealthCheckFailed(_with_tail(problem, output.lines()))

    def _wait_healthy(
        self, process: subprocess.Popen[bytes], address: str, watch: Watch
    ) -> str:
        """ "" once the build answered OK, else why not; Cancelled is raised through."""
        deadline = time.monotonic() + self.timeout_seconds
        last = "it never answered"
        with grpc.insecure_channel(address) as channel:
            health = channel.unary_unary(
                HEALTH_METHOD,
                request_serializer=_raw,
                response_deserializer=_raw,
            )
            while True:
                watch.check()
                code = process.poll()
                if code is not None:
                    return (
                        f"the backend exited with code {code} before answering the "
                        "Health call"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return (
                        f"the backend did not answer the Health call within "
                        f"{self.timeout_seconds:g} s ({last}), the limit set by "
                        "LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS"
                    )
                try:
                    reply = health(b"", timeout=min(_CALL_SECONDS, remaining))
                except grpc.RpcError as exc:
                    status, details = _status(exc)
                    if status == grpc.StatusCode.UNAVAILABLE:
                        last = "nothing listened on its address"
                        time.sleep(min(POLL_SECONDS, max(remaining, 0)))
                        continue
                    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
                        last = "a call got no answer"
                        continue
                    return f"the Health call failed: {status}: {details}"
                message = reply_message(reply)
                if message == HEALTHY:
                    return ""
                shown = message.decode("utf-8", "replace")[:_LINE_CHARS]
                return f"the backend answered the Health call with {shown!r}, not 'OK'"


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    # The errors grpc raises for a call are also grpc.Call objects, which the type
    # stubs cannot express on RpcError.
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    status: grpc.StatusCode | None = code() if callable(code) else None
    text: str = (details() if callable(details) else "") or ""
    return status, text


def free_port() -> int:
    # The port is free when we look; a backend that loses it to another process fails
    # the check, which is the safe side.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def backend_environment(folder: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_VARIABLES if name in os.environ}
    env.setdefault("PATH", _FALLBACK_PATH)
    # LocalAI points the Vulkan loader at the manifests a build bundles, so we do too:
    # without them a Vulkan build would start on the CPU and pass for the wrong reason.
    icd = folder / "vulkan" / "icd.d"
    manifests = (
        sorted(str(p) for p in icd.iterdir() if p.is_file() and p.suffix == ".json")
        if icd.is_dir()
        else []
    )
    if manifests:
        env["VK_DRIVER_FILES"] = env["VK_ICD_FILENAMES"] = os.pathsep.join(manifests)
    return env


def stop_group(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM the build's process group, SIGKILL what is left after the grace period."""
    group = process.pid  # start_new_session: the leader's pid names the group
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or the group never looks empty
        if not _group_alive(group):
            return
        time.sleep(0.05)
    _signal_group(group, signal.SIGKILL)
    process.wait()
    # Killed members that outlived the leader are reaped by init, which may take a
    # second or two (it polls): until then the group still shows. They are dead already;
    # the wait is bounded.
    deadline = time.monotonic() + _REAP_SECONDS
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.02)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def reply_message(reply: bytes) -> bytes:
    """Field 1 (``message``) of a serialized ``Reply``; b"" when absent or malformed."""
    position, message = 0, b""
    try:
        while position < len(reply):
            key, position = _varint(reply, position)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, position = _varint(reply, position)
            elif wire == 1:
                position += 8
            elif wire == 5:
                position += 4
            elif wire == 2:
                size, position = _varint(reply, position)
                if field == 1:
                    message = reply[position : position + size]
                position += size
            else:
                return b""
    except IndexError:
        return b""
    return message


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _raw(data: bytes) -> bytes:
    return data


class _Tail:
    """The last bytes a process wrote, read by a thread so the process never blocks."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()

    def follow(self, stream: IO[bytes]) -> threading.Thread:
        thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        thread.start()
        return thread

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            while chunk := os.read(stream.fileno(), 4096):
                with self._lock:
                    self._chunks.append(chunk)
                    self._size += len(chunk)
                    while self._size - len(self._chunks[0]) >= _TAIL_BYTES:
                        self._size -= len(self._chunks.popleft())

    def lines(self) -> list[str]:
        with self._lock:
            data = b"".join(self._chunks)[-_TAIL_BYTES:]
        text = data.decode("utf-8", "replace")
        lines = text.splitlines()[-TAIL_LINES:]
        return [
            line if len(line) <= _LINE_CHARS else line[:_LINE_CHARS] + "…"
            for line in lines
        ]


def _with_tail(problem: str, lines: list[str]) -> str:
    if not lines:
        return f"health check failed: {problem}; it printed nothing"
    output = redact_text("\n".join(lines))
    return (
        f"health check failed: {problem}; its last {len(lines)} lines of output:\n"
        f"{output}"
    )
