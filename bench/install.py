"""Figures: install throughput and memory, from a local ``docker-registry``.

Setup (parent process, no Django): Debian's ``docker-registry`` on a free loopback port
with a temporary storage dir; images built here and pushed through the registry HTTP API
(``POST /v2/<name>/blobs/uploads/``, ``PUT <location>?digest=``, ``PUT
/v2/<name>/manifests/<tag>`` with an OCI manifest). Layers are written to temp files as a
stream (tar -> gzip level 1 -> file, hashed on the way), never held in memory:

* ``big``   one layer: ``run.sh`` + 512 MiB of ``os.urandom`` (incompressible)
* ``mid``   the same with 64 MiB (the flat-RSS comparison)
* ``files`` one layer: ``run.sh`` + 20,000 files of 4 KiB in 100 folders

Baseline: ``curl -s <blob URL> | tar -xz -C <empty dir>`` timed in the parent.
Ours: a child process (``--worker``) that times
``backends.core.install.Installer(<backends>).install(name, Source("127.0.0.1:<port>/<repo>:<tag>"), Metadata())``
(resolve, pull, sha256 verify while streaming, safe extraction, run.sh check, metadata,
atomic rename) and reports its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``:
that process alone, interpreter and imports included). Runs alternate baseline / ours;
the installed folder is removed between runs, outside the timing.

Targets: time <= 1.15x the baseline; peak RSS < 80 MB, and within 10 % between the
64 MiB and the 512 MiB layer. If the pipeline cannot install yet, every install figure
says "pipeline not available yet" and the other benchmarks still run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Figure,
    Unavailable,
    free_port,
    median,
    run_worker,
    stop,
    unavailable,
    wait_for_port,
    worker_main,
)

TIME_TARGET = 1.15
RSS_LIMIT_MB = 80.0
RSS_FLAT = 0.10
MiB = 1 << 20
BIG_SIZE = 512 * MiB
MID_SIZE = 64 * MiB
SMALL_FILES = 20_000
SMALL_FILE_SIZE = 4096
GZIP_LEVEL = 1
RUN_SH = b"#!/bin/sh\nexec echo bench backend\n"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Image:
    repo: str
    tag: str
    digest: str  # of the layer blob
    size: int  # compressed bytes of the layer blob
    files: int  # regular files in the layer

    def ref(self, port: int) -> str:
        return f"127.0.0.1:{port}/{self.repo}:{self.tag}"

    def blob_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/v2/{self.repo}/blobs/{self.digest}"


def run(runs: int, **_: Any) -> list[Figure]:
    figures = {
        "big": Figure(
            "install_512mib_time", "s", f"ratio <= {TIME_TARGET:g}", TIME_TARGET
        ),
        "files": Figure(
            "install_20k_files_time", "s", f"ratio <= {TIME_TARGET:g}", TIME_TARGET
        ),
        "mid": Figure(
            "install_64mib_time", "s", f"ratio <= {TIME_TARGET:g}", TIME_TARGET
        ),
        "rss": Figure("install_peak_rss", "MB", f"< {RSS_LIMIT_MB:g} MB", 1.0, "below"),
        "flat": Figure(
            "install_rss_512_vs_64mib",
            "MB",
            f"within {RSS_FLAT:.0%} of 64 MiB",
            RSS_FLAT,
            "within",
        ),
    }
    missing = [
        tool
        for tool in ("docker-registry", "curl", "tar")
        if shutil.which(tool) is None
    ]
    if missing:
        why = f"{', '.join(missing)} not installed (make system-deps)"
        return [unavailable(f, why) for f in figures.values()]
    try:
        _measure(figures, runs)
    except Unavailable as exc:
        for figure in figures.values():
            if figure.value is None and figure.status == "ok":
                unavailable(figure, str(exc))
    return list(figures.values())


def work_dir() -> str | None:
    """Where the registry storage and both extractions go (the same filesystem for both).

    ``BENCH_INSTALL_DIR`` if set; else /dev/shm when it has room, so the figure measures
    the pipeline against ``curl | tar`` rather than the noise of a shared virtual disk
    (there, 20,000 small files take anywhere from 4 to 20 s to create, for both sides);
    else the system temp dir.
    """
    if os.getenv("BENCH_INSTALL_DIR"):
        return os.environ["BENCH_INSTALL_DIR"]
    shm = Path("/dev/shm")
    try:
        usage = shutil.disk_usage(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and usage.free > 4 * BIG_SIZE:
        return str(shm)
    return None


def _measure(figures: dict[str, Figure], runs: int) -> None:
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench-install-", dir=work_dir())
            )
        )
        port = _start_registry(tmp, stack)
        client = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        )
        backends = tmp / "backends"
        backends.mkdir()

        # The small image first: if the pipeline cannot install it, skip the big builds.
        mid = _push(client, tmp, "bench/mid", _random_layer(tmp, MID_SIZE))
        try:
            probe = _ours(mid, port, backends, check=True)
        except RuntimeError as exc:
            probe = {"error": str(exc)}
        if "error" in probe:
            raise Unavailable(f"pipeline not available yet: {probe['error']}")
        big = _push(client, tmp, "bench/big", _random_layer(tmp, BIG_SIZE))
        files = _push(client, tmp, "bench/files", _files_layer(tmp))

        results: dict[str, dict[str, list[float]]] = {}
        for key, image in (("mid", mid), ("big", big), ("files", files)):
            samples: dict[str, list[float]] = {
                "baseline": [],
                "ours": [],
                "rss_mb": [],
                "rss_before_mb": [],
            }
            for _ in range(runs):
                samples["baseline"].append(_baseline(image, port, tmp / "curl-tar"))
                result = _ours(image, port, backends)
                if "error" in result:
                    raise RuntimeError(
                        f"install of {image.repo} failed: {result['error']}"
                    )
                samples["ours"].append(result["seconds"])
                samples["rss_mb"].append(result["peak_rss_kib"] * 1024 / 1e6)
                samples["rss_before_mb"].append(result["rss_before_kib"] * 1024 / 1e6)
            results[key] = samples
            figure = figures[key]
            figure.value = median(samples["ours"])
            figure.baseline = median(samples["baseline"])
            figure.samples = {"ours": samples["ours"], "baseline": samples["baseline"]}
            rates = image.size / 1e6 / figure.value, image.size / 1e6 / figure.baseline
            figure.detail = (
                f"{rates[0]:.0f} MB/s vs {rates[1]:.0f} MB/s (curl | tar) for a "
                f"{image.size / 1e6:.0f} MB blob, {image.files} files; "
                f"peak RSS {median(samples['rss_mb']):.1f} MB "
                f"({median(samples['rss_before_mb']):.1f} MB before install() starts)"
            )
            figure.extra = {
                "mb_per_s": {"ours": rates[0], "baseline": rates[1]},
                "dir": str(tmp),
                "blob_bytes": image.size,
                "files": image.files,
                "peak_rss_mb": samples["rss_mb"],
            }

        peaks = {key: median(results[key]["rss_mb"]) for key in results}
        worst = max(peaks, key=peaks.__getitem__)
        rss = figures["rss"]
        rss.value, rss.baseline = peaks[worst], RSS_LIMIT_MB
        rss.samples = {key: results[key]["rss_mb"] for key in results}
        rss.detail = "largest median peak of " + ", ".join(
            f"{key} {value:.1f}" for key, value in peaks.items()
        )
        flat = figures["flat"]
        flat.value, flat.baseline = peaks["big"], peaks["mid"]
        flat.samples = {
            "ours": results["big"]["rss_mb"],
            "baseline": results["mid"]["rss_mb"],
        }
        flat.detail = "peak RSS installing the 512 MiB layer vs the 64 MiB layer"


# --- registry ----------------------------------------------------------------------------


def _start_registry(tmp: Path, stack: ExitStack) -> int:
    port = free_port()
    config = tmp / "registry.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: no YAML writer needed
            {
                "version": 0.1,
                "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(tmp / "registry")},
                    "delete": {"enabled": True},
                },
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    log = stack.enter_context((tmp / "registry.log").open("w"))
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    stack.callback(stop, proc)
    wait_for_port(port, proc)
    return port


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what goes through to ``out``."""

    def __init__(self, out: Any) -> None:
        self.out, self.sha256, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.out.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


class _RandomReader:
    """``size`` bytes of os.urandom, read in whatever chunks tarfile asks for."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


@dataclass
class _Layer:
    path: Path
    digest: str
    diff_id: str
    size: int
    files: int


def _write_layer(tmp: Path, fill: Any) -> _Layer:
    """Stream a tar.gz layer into a temp file, hashing the blob and the tar (diff_id)."""
    handle, name = tempfile.mkstemp(dir=tmp, suffix=".tar.gz")
    with os.fdopen(handle, "wb") as out:
        blob = _Hashing(out)
        with gzip.GzipFile(
            fileobj=blob, mode="wb", compresslevel=GZIP_LEVEL, mtime=0
        ) as gz:
            tar_bytes = _Hashing(gz)
            with tarfile.open(
                fileobj=tar_bytes, mode="w|", format=tarfile.PAX_FORMAT
            ) as tar:
                info = tarfile.TarInfo("run.sh")
                info.size, info.mode, info.mtime = len(RUN_SH), 0o755, int(time.time())
                tar.addfile(info, io.BytesIO(RUN_SH))
                files = 1 + fill(tar)
    return _Layer(Path(name), blob.digest, tar_bytes.digest, blob.size, files)


def _random_layer(tmp: Path, size: int) -> _Layer:
    def fill(tar: tarfile.TarFile) -> int:
        info = tarfile.TarInfo("lib/model-runtime.bin")
        info.size, info.mode, info.mtime = size, 0o644, int(time.time())
        tar.addfile(info, _RandomReader(size))
        return 1

    return _write_layer(tmp, fill)


def _files_layer(tmp: Path) -> _Layer:
    def fill(tar: tarfile.TarFile) -> int:
        now = int(time.time())
        for number in range(SMALL_FILES):
            info = tarfile.TarInfo(f"share/{number // 200:03d}/file-{number:05d}.dat")
            info.size, info.mode, info.mtime = SMALL_FILE_SIZE, 0o644, now
            tar.addfile(info, io.BytesIO(os.urandom(SMALL_FILE_SIZE)))
        return SMALL_FILES

    return _write_layer(tmp, fill)


def _push(
    client: httpx.Client, tmp: Path, repo: str, layer: _Layer, tag: str = "latest"
) -> Image:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    _upload(client, repo, config_digest, [config], len(config))
    with layer.path.open("rb") as file:
        _upload(
            client, repo, layer.digest, iter(lambda: file.read(MiB), b""), layer.size
        )
    layer.path.unlink()  # the registry holds its own copy
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
        ],
    }
    response = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    _expect(response, 201)
    return Image(repo, tag, layer.digest, layer.size, layer.files)


def _upload(client: httpx.Client, repo: str, digest: str, body: Any, size: int) -> None:
    started = client.post(f"/v2/{repo}/blobs/uploads/")
    _expect(started, 202)
    location = httpx.URL(started.headers["Location"])
    location = location.copy_merge_params({"digest": digest})
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    _expect(client.put(str(location), content=body, headers=headers), 201)


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"registry: {response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:300]}"
        )


# --- the two contenders ------------------------------------------------------------------


def _baseline(image: Image, port: int, folder: Path) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    command = f"curl -sf '{image.blob_url(port)}' | tar -xz -C '{folder}'"
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return elapsed


def _ours(
    image: Image, port: int, backends: Path, check: bool = False
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "task": "install",
        "backends": str(backends),
        "name": image.repo.rpartition("/")[2],
        "uri": image.ref(port),
        "files": image.files,
        "check": check,
    }
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LOCALAI_", "DJANGO_"))
    }
    try:
        return run_worker("bench.install", args, env)
    finally:
        shutil.rmtree(backends / args["name"], ignore_errors=True)


# --- worker ------------------------------------------------------------------------------


def _install(args: dict[str, Any]) -> dict[str, Any]:
    import resource

    try:
        from backends.core import oci
        from backends.core.install import Installer, Source
        from backends.core.installed import Metadata
        from backends.core.policy import SourcePolicy
    except ImportError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    backends = Path(args["backends"])
    # The registry listens on loopback, which the source policy refuses unless listed.
    installer = Installer(backends, policy=SourcePolicy.parse(["127.0.0.1"], []))
    # Built once per process, like the imports: a long-running worker has it from its
    # first job on (this child process only ever runs one).
    oci.tls_context()
    # Interpreter + imports, before a byte is fetched.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        metadata = installer.install(args["name"], Source(args["uri"]), Metadata())
    except Exception as exc:
        if not args["check"]:
            raise
        return {"error": f"{type(exc).__name__}: {exc}"}
    elapsed = time.perf_counter() - start
    folder = backends / args["name"]
    found = (
        sum(len(names) for _, _, names in os.walk(folder)) - 1
    )  # minus metadata.json
    if found != args["files"] or not metadata.digest.startswith("sha256:"):
        return {
            "error": f"installed {found} of {args['files']} files, digest {metadata.digest!r}"
        }
    return {
        "seconds": elapsed,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_before_kib": before,
        "digest": metadata.digest,
    }


if __name__ == "__main__":
    worker_main({"install": _install})
