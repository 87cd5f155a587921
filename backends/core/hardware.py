"""Probe a host's hardware and derive LocalAI's capability string from it.

Everything is read under a probe root (``/`` in production, a fake tree in tests):
sysfs and procfs files, CUDA toolkit folders, and the GPU tools (``nvidia-smi``,
``rocm-smi``, ``vulkaninfo``) found in the usual binary folders below that root.

The decision follows LocalAI (forced value, run file, macOS, Jetson, no GPU, small
VRAM, vendor) with one deliberate change: when ``nvidia-smi`` tells us which CUDA
version the driver supports, that version picks the CUDA build, not the toolkit folders
under ``/usr/local`` (a CUDA 13 build does not start on a driver that only speaks 12.x).

No Django imports: the management command, the node agent and the tests call it alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3
# LocalAI treats a GPU with this much memory or less as no GPU at all (inclusive).
SMALL_VRAM_BYTES = 4 * GIB

# Where GPU tools are looked for, relative to the probe root. We do not use $PATH: it
# describes this process, not the probed tree. WSL keeps nvidia-smi in its own folder.
TOOL_DIRS = ("usr/bin", "usr/local/bin", "bin", "usr/sbin", "sbin", "usr/lib/wsl/lib")

PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
# When several cards are present the strongest compute vendor wins, whatever the order.
VENDOR_PRIORITY = ("nvidia", "amd", "intel")

VENDOR_LABELS = {
    "nvidia": "NVIDIA",
    "amd": "AMD",
    "intel": "Intel",
    "vulkan": "Vulkan",
    "apple": "Apple",
}

# Files under a DRM card folder that report dedicated memory in bytes: amdgpu's
# counter, then the names Intel discrete drivers have used.
CARD_VRAM_FILES = (
    "device/mem_info_vram_total",
    "device/lmem_total_size",
    "lmem_total_bytes",
)

_MACHINE_ALIASES = {
    "x86_64": "amd64",
    "x64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

_CUDA_HEADER = re.compile(r"CUDA Version\s*:\s*(\d+)\.(\d+)")
_DRIVER_HEADER = re.compile(r"Driver Version\s*:\s*([0-9][0-9.]*)")
_TOOLKIT_DIR = re.compile(r"cuda-(\d+)(?:\.\d+)*")


@dataclass(frozen=True)
class Gpu:
    vendor: str  # nvidia / amd / intel / apple / vulkan / ""
    name: str
    vram_bytes: int


@dataclass(frozen=True)
class HardwareReport:
    os: str
    arch: str
    vendor: str
    vram_bytes: int
    gpus: tuple[Gpu, ...]
    driver_version: str
    cuda_version: str
    cuda_toolkits: tuple[int, ...]
    jetson: bool
    capability: str
    capability_source: str  # "forced" | "run-file" | "detected"
    explanation: str

    def to_dict(self) -> dict[str, object]:
        return {
            "os": self.os,
            "arch": self.arch,
            "vendor": self.vendor,
            "vram_bytes": self.vram_bytes,
            "gpus": [
                {"vendor": g.vendor, "name": g.name, "vram_bytes": g.vram_bytes}
                for g in self.gpus
            ],
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "cuda_toolkits": list(self.cuda_toolkits),
            "jetson": self.jetson,
            "capability": self.capability,
            "capability_source": self.capability_source,
            "explanation": self.explanation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> HardwareReport:
        """Rebuild a report stored with ``to_dict`` (e.g. one a node agent sent)."""
        gpus = data.get("gpus")
        toolkits = data.get("cuda_toolkits")
        return cls(
            os=str(data.get("os", "")),
            arch=str(data.get("arch", "")),
            vendor=str(data.get("vendor", "")),
            vram_bytes=_whole(data.get("vram_bytes", 0)),
            gpus=tuple(
                Gpu(str(g["vendor"]), str(g["name"]), _whole(g["vram_bytes"]))
                for g in (gpus if isinstance(gpus, list) else [])
            ),
            driver_version=str(data.get("driver_version", "")),
            cuda_version=str(data.get("cuda_version", "")),
            cuda_toolkits=tuple(
                _whole(t) for t in (toolkits if isinstance(toolkits, list) else [])
            ),
            jetson=bool(data.get("jetson", False)),
            capability=str(data.get("capability", "")),
            capability_source=str(data.get("capability_source", "")),
            explanation=str(data.get("explanation", "")),
        )


@dataclass
class GpuFindings:
    """What the GPU probes found, before any capability decision."""

    vendor: str = ""
    gpus: list[Gpu] = field(default_factory=list)
    # None when no source could measure it: unknown memory never demotes a GPU, only a
    # measured small one does.
    vram_bytes: int | None = None
    driver_version: str = ""
    cuda_version: str = ""
    jetson: bool = False
    # Short remarks for the explanation ("nvidia-smi failed", ...).
    notes: list[str] = field(default_factory=list)


# LocalAI's own override file, read under the probed root.
RUN_FILE = "/run/localai/capability"


def probe(
    root: Path | str = "/",
    *,
    forced: str = "",
    timeout: float = 5.0,
) -> HardwareReport:
    """Probe the host seen through ``root`` and decide its capability string.

    ``forced`` is the value of LOCALAI_FORCE_META_BACKEND_CAPABILITY; the caller reads
    the environment. The hardware is probed even when the capability is forced, so the
    report still shows what is really there.
    """
    root = Path(root)
    os_name, arch = _platform(root)
    if os_name == "darwin":
        found = GpuFindings(vendor="apple") if arch == "arm64" else GpuFindings()
        if arch == "arm64":
            found.gpus.append(Gpu("apple", "Apple silicon GPU", 0))
    else:
        found = _probe_gpus(root, timeout)
    toolkits = cuda_toolkits(root)
    detected, why = decide_capability(os_name, arch, found, toolkits)

    capability, source = detected, "detected"
    run_value = (_read(_under(root, RUN_FILE)) or "").strip()
    if forced.strip():
        capability, source = forced.strip(), "forced"
        why = f"forced by LOCALAI_FORCE_META_BACKEND_CAPABILITY (detected {detected}: {why})"
    elif run_value:
        # An empty run file is ignored rather than producing an empty capability.
        capability, source = run_value, "run-file"
        why = f"read from {RUN_FILE} (detected {detected}: {why})"

    return HardwareReport(
        os=os_name,
        arch=arch,
        vendor=found.vendor,
        vram_bytes=found.vram_bytes or 0,
        gpus=tuple(found.gpus),
        driver_version=found.driver_version,
        cuda_version=found.cuda_version,
        cuda_toolkits=toolkits,
        jetson=found.jetson,
        capability=capability,
        capability_source=source,
        explanation=f"{capability}: {why}",
    )


# --- capability decision ---------------------------------------------------------------


def decide_capability(
    os_name: str, arch: str, found: GpuFindings, toolkits: Sequence[int]
) -> tuple[str, str]:
    """LocalAI's decision table, with the driver's CUDA version taking precedence.

    Returns the capability and the reason, in words, for the explanation line.
    """
    if os_name == "darwin":
        if arch == "arm64":
            return "metal", "macOS on Apple silicon (arm64)"
        return "darwin-x86", f"macOS on {arch}, no Metal builds for Intel Macs"

    if os_name == "linux" and arch == "arm64" and found.vendor == "nvidia":
        # Jetson-class boards share system memory with the GPU, so LocalAI skips the
        # VRAM check here and so do we.
        major, cuda_why = _cuda_major(found, toolkits)
        board = "NVIDIA Jetson/Tegra" if found.jetson else "NVIDIA GPU"
        parts = [f"{board} on arm64", cuda_why]
        if found.vram_bytes:
            parts.append(f"{gib(found.vram_bytes)} unified memory")
        return _cuda_capability("nvidia-l4t", major), "; ".join(parts + found.notes)

    if not found.vendor:
        return "default", "; ".join(["no GPU found", *found.notes])

    label = VENDOR_LABELS.get(found.vendor, found.vendor)
    if found.vram_bytes is not None and found.vram_bytes <= SMALL_VRAM_BYTES:
        reason = (
            f"{label} GPU with VRAM {gib(found.vram_bytes)} <= 4 GiB counts as no GPU"
        )
        return "default", "; ".join([reason, *found.notes])

    memory = (
        f"{gib(found.vram_bytes)} VRAM"
        if found.vram_bytes is not None
        else "VRAM unknown"
    )
    if found.vendor == "nvidia":
        major, cuda_why = _cuda_major(found, toolkits)
        return _cuda_capability("nvidia", major), "; ".join(
            [cuda_why, memory, *found.notes]
        )
    return found.vendor, "; ".join([f"{label} GPU", memory, *found.notes])


def _cuda_major(found: GpuFindings, toolkits: Sequence[int]) -> tuple[int | None, str]:
    """The CUDA major version builds should target, and why."""
    driver = (
        f"NVIDIA driver {found.driver_version}"
        if found.driver_version
        else "NVIDIA driver"
    )
    if found.cuda_version:
        major = int(found.cuda_version.split(".")[0])
        why = f"{driver} supports CUDA {found.cuda_version}"
        newer = [t for t in toolkits if t > major]
        if newer:
            # The toolkit folder alone would have picked this newer build (LocalAI's
            # rule), and it would not start on this driver.
            why += f" (/usr/local/cuda-{max(newer)} ignored)"
        return major, why
    # LocalAI's rule when the driver cannot tell us: the toolkit folders decide.
    newest = max(toolkits, default=0)
    if newest >= 13:
        return 13, f"driver CUDA version unknown, /usr/local/cuda-{newest} found"
    if 12 in toolkits:
        return 12, "driver CUDA version unknown, /usr/local/cuda-12 found"
    return None, "driver CUDA version unknown, no CUDA 12/13 toolkit folder"


def _cuda_capability(prefix: str, major: int | None) -> str:
    if major is None or major < 12:
        return prefix
    return f"{prefix}-cuda-13" if major >= 13 else f"{prefix}-cuda-12"


def gib(size: int) -> str:
    """Human size in GiB: "24 GiB", "4.5 GiB"."""
    text = f"{size / GIB:.1f}".removesuffix(".0")
    return f"{text} GiB"


# --- platform --------------------------------------------------------------------------


def _platform(root: Path) -> tuple[str, str]:
    """OS and architecture: from the probed tree, else from this process."""
    system = _read(_under(root, "proc/sys/kernel/ostype")) or platform.system()
    machine = _read(_under(root, "proc/sys/kernel/arch")) or platform.machine()
    return system.strip().lower(), normalise_machine(machine)


def normalise_machine(machine: str) -> str:
    """Kernel/Python machine names to the OCI (Go) spelling: x86_64 -> amd64."""
    name = machine.strip().lower()
    return _MACHINE_ALIASES.get(name, name)


# --- GPU probing -----------------------------------------------------------------------


def _probe_gpus(root: Path, timeout: float) -> GpuFindings:
    cards = _drm_cards(root)
    cards += _pci_only_cards(root, cards)
    jetson = _is_nvidia_soc(root)
    vendor = _best_vendor(card.vendor for card in cards)
    if not vendor and jetson:
        vendor = "nvidia"
    if not vendor:
        vendor = _vendor_from_tools(root)

    if vendor == "nvidia":
        found = _probe_nvidia(root, cards, timeout)
    elif vendor in ("amd", "intel"):
        found = _probe_card_memory(root, vendor, cards, timeout)
    elif vendor == "vulkan":
        found = _probe_vulkan(root, timeout)
    else:
        found = GpuFindings()
    found.jetson = jetson
    if jetson and found.vendor == "nvidia":
        _use_system_memory(root, found)
    return found


@dataclass(frozen=True)
class _Card:
    name: str
    vendor: str
    vram_bytes: int | None


def _drm_cards(root: Path) -> list[_Card]:
    """PCI display devices under /sys/class/drm with a vendor we know."""
    drm = _under(root, "sys/class/drm")
    try:
        names = sorted(p.name for p in drm.iterdir() if p.name.startswith("card"))
    except OSError:
        return []
    cards = []
    for name in names:
        # card0-DP-1 and friends are connectors of card0, not devices.
        if "-" in name:
            continue
        vendor = PCI_VENDORS.get(
            (_read(drm / name / "device/vendor") or "").strip().lower()
        )
        if vendor is None:
            # BMC display chips (ASPEED), virtual VGA (QEMU, Matrox): not compute GPUs.
            continue
        cards.append(_Card(name, vendor, _card_vram(drm / name)))
    return cards


def _pci_only_cards(root: Path, known: list[_Card]) -> list[_Card]:
    """GPUs on the PCI bus whose vendor has no DRM card, e.g. NVIDIA without nvidia-drm.

    Without this an NVIDIA server whose driver exposes no DRM node would be judged by
    its BMC or integrated GPU alone.
    """
    pci = _under(root, "sys/bus/pci/devices")
    try:
        devices = sorted(pci.iterdir())
    except OSError:
        return []
    seen = {card.vendor for card in known}
    extra = []
    for device in devices:
        # PCI class 0x03xxxx: display controllers (VGA, 3D, other).
        if not (_read(device / "class") or "").strip().startswith("0x03"):
            continue
        vendor = PCI_VENDORS.get((_read(device / "vendor") or "").strip().lower())
        if vendor and vendor not in seen:
            extra.append(_Card(device.name, vendor, None))
    return extra


def _card_vram(card: Path) -> int | None:
    for relative in CARD_VRAM_FILES:
        value = _read_int(card / relative)
        if value is not None:
            return value
    return None


def _best_vendor(vendors: Iterable[str]) -> str:
    seen = set(vendors)
    return next((v for v in VENDOR_PRIORITY if v in seen), "")


def _is_nvidia_soc(root: Path) -> bool:
    """Jetson, Thor, DGX Spark: an NVIDIA SoC rather than a PCI card."""
    family = (_read(_under(root, "sys/devices/soc0/family")) or "").strip()
    soc_id = (_read(_under(root, "sys/devices/soc0/soc_id")) or "").strip().lower()
    # jep106:0426 is NVIDIA's JEDEC manufacturer code.
    if family == "Tegra" or soc_id.startswith("jep106:0426"):
        return True
    return _under(root, "etc/nv_tegra_release").is_file()


def _vendor_from_tools(root: Path) -> str:
    """A vendor implied by an installed GPU tool (the tool is not run here)."""
    for tool, vendor in (
        ("nvidia-smi", "nvidia"),
        ("rocm-smi", "amd"),
        ("xpu-smi", "intel"),
        ("intel_gpu_top", "intel"),
        ("vulkaninfo", "vulkan"),
    ):
        if find_tool(root, tool):
            return vendor
    return ""


def find_tool(root: Path, name: str) -> Path | None:
    for folder in TOOL_DIRS:
        path = _under(root, folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _probe_nvidia(root: Path, cards: list[_Card], timeout: float) -> GpuFindings:
    found = GpuFindings(vendor="nvidia")
    smi = find_tool(root, "nvidia-smi")
    if smi is None:
        found.gpus = [
            Gpu("nvidia", f"NVIDIA GPU ({c.name})", 0)
            for c in cards
            if c.vendor == "nvidia"
        ]
        found.notes.append("no nvidia-smi")
        return found

    query = _run(
        [
            str(smi),
            "--query-gpu=index,name,memory.total,driver_version",
            "--format=csv,noheader,nounits",
        ],
        timeout,
    )
    rows = parse_nvidia_query(query or "")
    header = _run([str(smi)], timeout) or ""
    cuda = _CUDA_HEADER.search(header)
    if cuda:
        found.cuda_version = f"{cuda.group(1)}.{cuda.group(2)}"
    driver = _DRIVER_HEADER.search(header)
    found.driver_version = next(
        (r[2] for r in rows if r[2]), driver.group(1) if driver else ""
    )

    if not rows:
        found.notes.append("nvidia-smi failed or printed nothing usable")
        return found
    found.gpus = [Gpu("nvidia", name, memory or 0) for name, memory, _ in rows]
    if all(memory is not None for _, memory, _ in rows):
        found.vram_bytes = sum(memory or 0 for _, memory, _ in rows)
    else:
        # "[N/A]" comes from GPUs that share system RAM (GB10, Thor): use that instead.
        _use_system_memory(root, found)
    return found


def parse_nvidia_query(text: str) -> list[tuple[str, int | None, str]]:
    """(name, memory bytes or None, driver) per line of the csv,noheader,nounits query."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        # GPU names could hold a comma, so the fixed columns are taken from both ends.
        name = ", ".join(parts[1:-2])
        memory_mib, driver = parts[-2], parts[-1]
        memory = int(float(memory_mib) * 1024**2) if _is_number(memory_mib) else None
        if not re.fullmatch(r"[0-9][0-9.]*", driver):
            driver = ""
        rows.append((name, memory, driver))
    return rows


def _probe_card_memory(
    root: Path, vendor: str, cards: list[_Card], timeout: float
) -> GpuFindings:
    label = VENDOR_LABELS[vendor]
    mine = [c for c in cards if c.vendor == vendor]
    found = GpuFindings(vendor=vendor)
    found.gpus = [
        Gpu(vendor, f"{label} GPU ({c.name})", c.vram_bytes or 0) for c in mine
    ]
    if any(c.vram_bytes is not None for c in mine):
        found.vram_bytes = sum(c.vram_bytes or 0 for c in mine)
    elif vendor == "amd":
        found.vram_bytes = _rocm_smi_vram(root, timeout)
        if found.vram_bytes is not None and not found.gpus:
            found.gpus = [Gpu("amd", "AMD GPU", found.vram_bytes)]
    elif mine:
        # An Intel GPU without a local-memory counter is an integrated one that shares
        # system RAM: no dedicated VRAM.
        found.vram_bytes = 0
    return found


def _rocm_smi_vram(root: Path, timeout: float) -> int | None:
    smi = find_tool(root, "rocm-smi")
    if smi is None:
        return None
    text = _run([str(smi), "--showmeminfo", "vram", "--csv"], timeout) or ""
    lines = [line.split(",") for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    header = [h.strip().lower() for h in lines[0]]
    column = next((i for i, h in enumerate(header) if "total memory" in h), None)
    if column is None:
        return None
    sizes = [
        int(row[column])
        for row in lines[1:]
        if len(row) > column and row[column].strip().isdigit()
    ]
    return sum(sizes) if sizes else None


def _probe_vulkan(root: Path, timeout: float) -> GpuFindings:
    tool = find_tool(root, "vulkaninfo")
    text = _run([str(tool)], timeout) if tool else None
    devices = parse_vulkaninfo(text or "")
    found = GpuFindings(vendor="vulkan")
    if text is None or not devices:
        # vulkaninfo exists but said nothing usable: keep LocalAI's verdict (a Vulkan
        # GPU) with unknown memory rather than guess.
        found.notes.append("vulkaninfo failed or printed no device")
        return found
    gpus = [d for d in devices if not d.software]
    if not gpus:
        # Only llvmpipe or another CPU rasteriser: Vulkan runs, but on the CPU.
        return GpuFindings(notes=["vulkaninfo lists only a CPU (software) device"])
    found.gpus = [Gpu("vulkan", d.name, d.vram_bytes) for d in gpus]
    found.vram_bytes = sum(d.vram_bytes for d in gpus)
    return found


@dataclass
class _VulkanDevice:
    name: str = ""
    software: bool = False
    vram_bytes: int = 0


def parse_vulkaninfo(text: str) -> list[_VulkanDevice]:
    """Devices from plain ``vulkaninfo`` output: name, type, largest device-local heap."""
    devices: list[_VulkanDevice] = []
    current: _VulkanDevice | None = None
    heap_size: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if re.fullmatch(r"GPU\d+:", line):
            current = _VulkanDevice()
            devices.append(current)
            heap_size = None
            continue
        if current is None:
            continue
        if m := re.match(r"deviceName\s*=\s*(.+)", line):
            current.name = m.group(1).strip()
        elif m := re.match(r"deviceType\s*=\s*(\S+)", line):
            current.software = m.group(1).endswith("_CPU")
        elif line.startswith("memoryHeaps["):
            heap_size = None
        elif m := re.match(r"size\s*=\s*(\d+)", line):
            heap_size = int(m.group(1))
        elif "MEMORY_HEAP_DEVICE_LOCAL_BIT" in line and heap_size is not None:
            # Several heaps can be device-local (the small BAR window); the big one is
            # the card's memory.
            current.vram_bytes = max(current.vram_bytes, heap_size)
            heap_size = None
    return devices


def _use_system_memory(root: Path, found: GpuFindings) -> None:
    """Unified-memory devices: report system RAM (MemTotal) as the GPU's memory."""
    total = _meminfo_total(root)
    if total is None:
        return
    found.vram_bytes = total
    if found.gpus:
        found.gpus = [Gpu(g.vendor, g.name, g.vram_bytes or total) for g in found.gpus]
    else:
        model = (_read(_under(root, "proc/device-tree/model")) or "").strip("\x00 \n")
        found.gpus = [Gpu("nvidia", model or "NVIDIA Tegra", total)]


def _meminfo_total(root: Path) -> int | None:
    for line in (_read(_under(root, "proc/meminfo")) or "").splitlines():
        if m := re.match(r"MemTotal:\s*(\d+)\s*kB", line):
            return int(m.group(1)) * 1024
    return None


def cuda_toolkits(root: Path) -> tuple[int, ...]:
    """Major versions of the /usr/local/cuda-<N>[.<M>] toolkit folders."""
    try:
        entries = list(_under(root, "usr/local").iterdir())
    except OSError:
        return ()
    majors = {
        int(m.group(1))
        for entry in entries
        if (m := _TOOLKIT_DIR.fullmatch(entry.name)) and entry.is_dir()
    }
    return tuple(sorted(majors))


# --- small helpers ---------------------------------------------------------------------


def _under(root: Path, path: str | Path) -> Path:
    return root / str(path).lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    text = (_read(path) or "").strip()
    return int(text) if text.isdigit() else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _run(argv: list[str], timeout: float) -> str | None:
    """stdout of a successful run, or None when it fails, hangs or cannot start."""
    try:
        # A new session lets us kill the tool and anything it started: a shell script
        # stuck in `sleep` would otherwise keep the pipe open past the timeout.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    return out.decode("utf-8", errors="replace")


def _whole(value: object) -> int:
    """A count from JSON: ``1857.0`` is the integer 1857 (JSON Schema agrees)."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(str(value))
