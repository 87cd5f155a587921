"""The production stack as `make serve` starts it from a fresh clone: nginx of deploy/ in
front of gunicorn, the worker beside them, real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.parts import missing_part

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parent.parent
# The virtualenv running this suite: make serve reuses it instead of building .venv, which
# is what a fresh clone in CI would otherwise spend minutes on.
VENV = Path(sys.executable).parent.parent
CLIENT_TIMEOUT = 8
PASSWORD = "correct-horse-battery-staple"


@dataclass
class Stack:
    url: str
    http_url: str
    clone: Path
    data: Path
    token: str
    env: dict[str, str]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def https_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    def app_log(self) -> str:
        return (self.data / "run" / "logs" / "app-access.log").read_text()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def fresh_clone(source: Path, target: Path) -> None:
    """``git clone`` of the repository with the working tree's edits laid over it, so the
    stack runs the code under test (CI's checkout has none); ignored files such as
    staticfiles/ and var/ stay behind, as in any fresh clone."""
    subprocess.run(
        ["git", "clone", "--quiet", str(source), str(target)], check=True, timeout=60
    )
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (source / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
        else:
            (target / name).unlink(missing_ok=True)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group make serve runs in, as Ctrl-C would, then make sure."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def production_env(data: Path, tmp: Path) -> dict[str, str]:
    """This process's environment without the settings a developer may have exported."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOCALAI_", "DATABASE_", "HUEY_", "SECURE_", "DJANGO_"))
        and k
        not in (
            "SECRET_KEY",
            "SECRET_KEY_FILE",
            "ALLOWED_HOSTS",
            "DEBUG",
            "VIRTUAL_ENV",
        )
        and not k.startswith(("MAKE", "MFLAGS"))
    }
    (tmp / "probe-root").mkdir(exist_ok=True)
    return env | {
        "LOCALAI_ADMIN_DATA_DIR": str(data),
        "LOCALAI_ADMIN_PASSWORD": PASSWORD,
        "LOCALAI_ADMIN_PROBE_ROOT": str(tmp / "probe-root"),
        # No gallery to sync: nothing leaves loopback.
        "LOCALAI_BACKEND_GALLERIES": "[]",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for tool in ("make", "git", "openssl"):
        if shutil.which(tool) is None:
            missing_part(f"{tool} is not installed")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing_part("Debian's nginx is not installed (make system-deps)")
    tmp = tmp_path_factory.mktemp("serve")
    clone, data = tmp / "clone", tmp / "data"
    fresh_clone(REPO, clone)
    https_port, http_port, app_port, status_port = free_ports(4)
    env = production_env(data, tmp)
    log_path = tmp / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                "make",
                "--no-print-directory",
                "serve",
                f"VENV={VENV}",
                # The reused virtualenv is up to date: never rebuild it from the clone.
                "-o",
                f"{VENV}/bin/.installed",
                f"LOCALAI_ADMIN_DATA_DIR={data}",
                "SERVE_HOST=127.0.0.1",
                f"SERVE_HTTPS_PORT={https_port}",
                f"SERVE_HTTP_PORT={http_port}",
                f"SERVE_APP_PORT={app_port}",
                f"SERVE_STATUS_PORT={status_port}",
                f"SERVE_CLIENT_TIMEOUT={CLIENT_TIMEOUT}",
            ],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = wait_for_url(process, log_path)
        token = subprocess.run(
            [f"{VENV}/bin/python", "manage.py", "create_api_token", "admin"],
            cwd=clone,
            env=env
            | {
                "DEBUG": "False",
                "SECRET_KEY_FILE": str(data / "secret_key"),
                "ALLOWED_HOSTS": "127.0.0.1",
            },
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        yield Stack(
            url=url,
            http_url=f"http://127.0.0.1:{http_port}",
            clone=clone,
            data=data,
            token=token,
            env=env,
        )
    finally:
        stop_group(process)


def wait_for_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if match := re.search(r"^localai-admin: (https://\S+?)/? ", log, re.M):
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"make serve did not print its URL:\n{log_path.read_text()[-3000:]}")


def client(stack: Stack, **kwargs: object) -> httpx.Client:
    # The certificate make serve generated is self-signed.
    return httpx.Client(verify=False, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_make_serve_from_a_fresh_clone_serves_the_login_page_and_its_css_over_https(
    stack: Stack,
) -> None:
    with client(stack, follow_redirects=True) as http:
        page = http.get(stack.url + "/")
        assert page.status_code == 200
        assert page.url.path == "/accounts/login/"
        css = re.search(r'href="(/static/[^"]+\.css)"', page.text)
        assert css, page.text[:500]
        # A hashed name: collectstatic ran and the manifest storage found it.
        assert re.search(r"\.[0-9a-f]{12}\.css$", css.group(1))
        sheet = http.get(stack.url + css.group(1))
    assert sheet.status_code == 200
    assert sheet.headers["content-type"].startswith("text/css")


def test_make_serve_runs_the_deploy_check_clean(stack: Stack) -> None:
    log = (stack.data.parent / "serve.log").read_text()
    assert "System check identified no issues" in log


def test_the_api_answers_json_with_a_token_through_the_proxy(stack: Stack) -> None:
    with client(stack) as http:
        response = http.get(
            stack.url + "/backends",
            headers={"Authorization": f"Bearer {stack.token}"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json(), (list, dict))


def test_plain_http_is_redirected_to_the_same_url_over_https(stack: Stack) -> None:
    with client(stack) as http:
        response = http.get(
            stack.http_url + "/backends/jobs?status=running",
            headers={"X-Forwarded-Proto": "https"},
        )
    assert response.status_code == 301
    assert response.headers["location"] == (
        f"https://127.0.0.1:{stack.https_port}/backends/jobs?status=running"
    )


def _wait_for_log_line(stack: Stack, needle: str) -> str:
    # gunicorn writes its access log line after the response has gone out.
    deadline = time.monotonic() + 10
    while True:
        for line in stack.app_log().splitlines():
            if needle in line:
                return line
        assert time.monotonic() < deadline, f"{needle} never reached the app log"
        time.sleep(0.1)


def test_forwarded_headers_a_client_sends_never_reach_the_app(stack: Stack) -> None:
    with client(stack) as http:
        response = http.get(
            stack.url + "/accounts/login/?forged=1",
            headers={
                "X-Forwarded-Proto": "http",
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Ssl": "off",
            },
        )
    # The app saw HTTPS: no redirect to https, and HSTS (sent only on secure requests).
    assert response.status_code == 200
    assert "strict-transport-security" in response.headers
    line = _wait_for_log_line(stack, "/accounts/login/?forged=1")
    assert line.startswith("127.0.0.1 https ")
    assert "203.0.113.9" not in line


def test_a_browser_logs_in_through_the_proxy(stack: Stack) -> None:
    with client(stack) as http:
        form = http.get(stack.url + "/accounts/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert csrf
        response = http.post(
            stack.url + "/accounts/login/",
            data={
                "username": "admin",
                "password": PASSWORD,
                "csrfmiddlewaretoken": csrf.group(1),
            },
            headers={"Origin": stack.url, "Referer": stack.url + "/accounts/login/"},
        )
    assert response.status_code == 302, response.text[:500]
    assert response.headers["location"] == "/"


def test_a_body_over_the_limit_is_refused_by_nginx_with_the_json_envelope(
    stack: Stack,
) -> None:
    with client(stack) as http:
        response = http.post(
            stack.url + "/backends/apply?oversized=1",
            content=b"{" + b" " * (1024 * 1024 + 1) + b"}",
            headers={
                "Authorization": f"Bearer {stack.token}",
                "Content-Type": "application/json",
            },
        )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "too_large"
    assert "oversized=1" not in stack.app_log()


def test_a_kit_upload_over_the_general_body_limit_reaches_the_app(
    stack: Stack,
) -> None:
    # /installed/kits/ has a limit of its own (SERVE_KIT_MAX_BODY) and is streamed: the
    # app answers from the headers (no session: to the login page), not nginx's 413.
    with client(stack) as http:
        response = http.post(
            stack.url + "/installed/kits/?kit=1",
            files={"kit": ("kit.tar", b"\0" * (2 * 1024 * 1024))},
        )
    assert response.status_code == 302, response.text[:500]
    assert response.headers["location"].startswith("/accounts/login/")
    assert "kit=1" in stack.app_log()


def test_bodies_and_responses_beyond_nginx_memory_buffers_still_get_through(
    stack: Stack,
) -> None:
    # Both spill to nginx's temp files, which its workers must be able to write.
    headers = {"Authorization": f"Bearer {stack.token}"}
    with client(stack) as http:
        upload = http.post(
            stack.url + "/backends/apply?buffered=1",
            content=b"{" + b" " * (256 * 1024) + b"}",
            headers=headers | {"Content-Type": "application/json"},
        )
        manifest = json.loads(
            (stack.clone / "staticfiles" / "staticfiles.json").read_text()
        )
        jquery = manifest["paths"]["admin/js/vendor/jquery/jquery.js"]
        script = http.get(
            stack.url + "/static/" + jquery, headers={"Accept-Encoding": "identity"}
        )
    # The app's own refusal (its limit is smaller than nginx's), not an nginx error.
    assert upload.status_code < 500
    assert "error" in upload.json()
    assert "buffered=1" in stack.app_log()
    assert script.status_code == 200
    assert len(script.content) > 256 * 1024
    assert script.content == (stack.clone / "staticfiles" / jquery).read_bytes()


def open_half_request(stack: Stack, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection that starts a request and never ends its headers."""
    raw = socket.create_connection((stack.host, stack.https_port), timeout=10)
    conn = context.wrap_socket(raw, server_hostname=stack.host)
    conn.sendall(b"GET /backends HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return conn


def closed_by_server(conn: ssl.SSLSocket) -> bool:
    # Readable is not enough: TLS 1.3 servers send session tickets after the handshake,
    # which the TLS layer consumes. The server never answers an unfinished request, so
    # anything it does send is its close (or a 408 before it).
    conn.setblocking(False)
    try:
        conn.recv(1)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:
        return True
    finally:
        conn.setblocking(True)
    return True


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_the_api_answers_within_a_second_while_200_clients_trickle_their_headers(
    stack: Stack,
) -> None:
    context = unverified()
    started = time.monotonic()
    attackers = [open_half_request(stack, context) for _ in range(200)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1):
            for conn in attackers:
                with contextlib.suppress(OSError):
                    conn.sendall(b"X-Trickle: 1\r\n")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        with client(stack) as http:
            for _ in range(5):
                began = time.monotonic()
                response = http.get(
                    stack.url + "/backends",
                    headers={"Authorization": f"Bearer {stack.token}"},
                )
                assert response.status_code == 200
                assert time.monotonic() - began < 1.0
                time.sleep(0.2)
        # The attack was on the whole time: nginx still holds (nearly) every connection.
        assert time.monotonic() - started < CLIENT_TIMEOUT
        still_open = sum(not closed_by_server(conn) for conn in attackers)
        assert still_open >= 190
    finally:
        stop.set()
        trickler.join()
        for conn in attackers:
            conn.close()


def test_nginx_drops_a_client_whose_headers_or_body_are_late(stack: Stack) -> None:
    # The header deadline holds however the client trickles; the body one runs from the
    # last bytes received, so a stalled upload is dropped (a trickling one only holds an
    # nginx connection, never a gunicorn worker: the body is buffered first).
    context = unverified()
    header = open_half_request(stack, context)
    body = context.wrap_socket(
        socket.create_connection((stack.host, stack.https_port), timeout=10),
        server_hostname=stack.host,
    )
    body.sendall(
        b"POST /backends/apply HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    started = time.monotonic()
    waiting = {"header": header, "body": body}
    closed_after: dict[str, float] = {}
    try:
        while waiting and time.monotonic() - started < CLIENT_TIMEOUT + 5:
            with contextlib.suppress(OSError):
                header.sendall(b"X-Trickle: 1\r\n")
            for name, conn in list(waiting.items()):
                if closed_by_server(conn):
                    closed_after[name] = time.monotonic() - started
                    del waiting[name]
            time.sleep(0.5)
    finally:
        header.close()
        body.close()
    assert set(closed_after) == {"header", "body"}
    assert all(seconds <= CLIENT_TIMEOUT + 3 for seconds in closed_after.values())


def gunicorn_processes(stack: Stack, lane: str) -> list[int]:
    """The master of a lane (its pid file) and its workers."""
    master = int((stack.data / "run" / f"{lane}.pid").read_text())
    workers = [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if _parent(stat) == master
    ]
    return [master, *workers]


def _parent(stat: Path) -> int:
    try:
        text = stat.read_text()
    except OSError:
        return 0
    return int(text[text.rindex(")") + 2 :].split()[1])


def test_job_status_polls_are_answered_while_every_page_worker_is_stuck(
    stack: Stack,
) -> None:
    job = subprocess.run(
        [
            f"{VENV}/bin/python",
            "manage.py",
            "shell",
            "-c",
            "from backends.models import Job, Node; print(Job.objects.create("
            "kind='install', target='x', node=Node.objects.local(), state='running').pk)",
        ],
        cwd=stack.clone,
        env=stack.env
        | {
            "DEBUG": "False",
            "SECRET_KEY_FILE": str(stack.data / "secret_key"),
            "ALLOWED_HOSTS": "127.0.0.1",
        },
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()[-1]
    headers = {"Authorization": f"Bearer {stack.token}"}
    # Stopped, the app lane's processes hold whatever reaches them, as page renders that
    # fill every worker do.
    stuck = gunicorn_processes(stack, "gunicorn")
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)
    try:
        with client(stack) as http:
            status = http.get(stack.url + f"/backends/jobs/{job}", headers=headers)
            with pytest.raises(httpx.ReadTimeout):
                http.get(stack.url + "/backends", headers=headers, timeout=3)
    finally:
        for pid in stuck:
            os.kill(pid, signal.SIGCONT)
    assert status.status_code == 200
    assert "processed" in status.json()


def test_plain_gunicorn_in_production_mode_serves_http_without_redirecting(
    stack: Stack,
) -> None:
    # The README's scale-out line: gunicorn alone, no proxy, DEBUG=False.
    (port,) = free_ports(1)
    env = stack.env | {
        "DEBUG": "False",
        "SECRET_KEY_FILE": str(stack.data / "secret_key"),
        "ALLOWED_HOSTS": "127.0.0.1",
    }
    process = subprocess.Popen(
        [
            f"{VENV}/bin/gunicorn",
            "localai_admin.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "--no-control-socket",
        ],
        cwd=stack.clone,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/accounts/login/")
                break
            except httpx.ConnectError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        stop_group(process)
    assert response.status_code == 200
    assert "location" not in response.headers
