"""Small real backends for the health check: a run.sh that execs this venv's Python on a
server script, as a LocalAI build execs its own binary.

Each script first writes what it saw (its process group, working directory, arguments
and environment names) to ``<folder>.seen.json`` beside the source folder, since the
staging folder it runs in is gone once the check ends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_RECORD = """\
import json, os, sys
with open({seen!r}, "w") as f:
    json.dump({{"pgid": os.getpgrp(), "cwd": os.getcwd(), "argv": sys.argv[1:],
               "env": sorted(os.environ)}}, f)
address = sys.argv[sys.argv.index("--addr") + 1]
host, port = address.rsplit(":", 1)
"""

_GRPC_SERVER = """\
from concurrent import futures
import grpc

def health(request, context):
    return {reply!r}

handler = grpc.method_handlers_generic_handler(
    "backend.Backend", {{"Health": grpc.unary_unary_rpc_method_handler(health)}}
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(address)
server.start()
server.wait_for_termination()
"""

BODIES = {
    # Reply{message: "OK"}: what LocalAI's client calls healthy.
    "healthy": _GRPC_SERVER.format(reply=b"\x0a\x02OK"),
    "not-ok": _GRPC_SERVER.format(reply=b"\x0a\x07LOADING"),
    # A start-up error: many lines (only the tail is kept), one with a credential.
    "exits": (
        "for n in range(60):\n"
        "    print(f'loading part {n}', flush=True)\n"
        "print('fetching https://bob:hunter2secret@example.com/lib.so?token=abcdef123',"
        " flush=True)\n"
        "print('error: libcuda.so.1: cannot open shared object file', file=sys.stderr)\n"
        "sys.exit(3)\n"
    ),
    # Takes the connection, never speaks HTTP/2.
    "hangs": (
        "import socket, time\n"
        "sock = socket.create_server((host, int(port)))\n"
        "held = []\n"
        "while True:\n"
        "    held.append(sock.accept())\n"
    ),
    "never-listens": "import time\nprint('warming up', flush=True)\ntime.sleep(600)\n",
}


def grpc_backend(folder: Path, kind: str, *, stubborn_child: bool = False) -> Path:
    """A build folder whose run.sh starts the ``kind`` server of ``BODIES``.
    ``stubborn_child`` adds a child in the same group that ignores SIGTERM."""
    folder.mkdir(parents=True, exist_ok=True)
    seen = str(seen_file(folder))
    child = (
        "import subprocess\n"
        "ignorer = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " time.sleep(600)'\n"
        "subprocess.Popen([sys.executable, '-c', ignorer])\n"
        if stubborn_child
        else ""
    )
    (folder / "server.py").write_text(_RECORD.format(seen=seen) + child + BODIES[kind])
    run = folder / "run.sh"
    # A relative server.py: the build must be started in its own folder, as LocalAI does.
    run.write_text(f'#!/bin/sh\nexec {sys.executable} server.py "$@"\n')
    run.chmod(0o755)
    return folder


def seen_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".seen.json")


def seen(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(seen_file(folder).read_text())
    return record
