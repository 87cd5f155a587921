"""Hardware probing against fake sysfs/procfs trees and fake GPU tools under tmp_path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from backends.core.hardware import (
    GIB,
    HardwareReport,
    normalise_machine,
    parse_nvidia_query,
    parse_vulkaninfo,
    probe,
)

MIB = 1024**2

# --- fake trees --------------------------------------------------------------------------


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def linux_host(root: Path, machine: str = "x86_64") -> Path:
    write(root, "proc/sys/kernel/ostype", "Linux\n")
    write(root, "proc/sys/kernel/arch", f"{machine}\n")
    write(
        root, "proc/meminfo", "MemTotal:       65536000 kB\nMemFree:        1000 kB\n"
    )
    return root


def add_card(root: Path, card: str, vendor_id: str, **files: int) -> None:
    """A DRM card with a PCI vendor id and optional memory counters (file name -> bytes)."""
    write(root, f"sys/class/drm/{card}/device/vendor", f"{vendor_id}\n")
    for name, value in files.items():
        write(root, f"sys/class/drm/{card}/device/{name}", f"{value}\n")


def add_tool(root: Path, name: str, body: str, folder: str = "usr/bin") -> Path:
    path = write(root, f"{folder}/{name}", f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def add_cuda_toolkit(root: Path, folder: str) -> None:
    (root / "usr/local" / folder / "bin").mkdir(parents=True)


def add_nvidia_smi(
    root: Path,
    *,
    cuda: str = "12.4",
    driver: str = "550.54.14",
    gpus: tuple[tuple[str, str], ...] = (("NVIDIA GeForce RTX 4090", "24564"),),
) -> None:
    """An nvidia-smi that answers the csv query, and prints the usual table otherwise."""
    rows = "\n".join(
        f"{i}, {name}, {mib}, {driver}" for i, (name, mib) in enumerate(gpus)
    )
    table = (
        "+------------------------------------------------------------------------+\n"
        f"| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda}   |\n"
        "+------------------------------------------------------------------------+"
    )
    add_tool(
        root,
        "nvidia-smi",
        f"case \"$1\" in\n--query-gpu=*) cat <<'EOF'\n{rows}\nEOF\n;;\n"
        f"*) cat <<'EOF'\n{table}\nEOF\n;;\nesac",
    )


def nvidia_host(root: Path, **smi: object) -> Path:
    linux_host(root)
    add_card(root, "card0", "0x10de")
    add_nvidia_smi(root, **smi)  # type: ignore[arg-type]
    return root


VULKANINFO = """\
==========
VULKANINFO
==========
Device Properties and Extensions:
=================================
GPU0:
VkPhysicalDeviceProperties:
---------------------------
\tapiVersion        = 1.3.275
\tdeviceType        = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName        = AMD Radeon RX 6800 XT (RADV NAVI21)
VkPhysicalDeviceMemoryProperties:
=================================
memoryHeaps: count = 2
\tmemoryHeaps[0]:
\t\tsize   = 17163091968 (0x3ff000000) (15.98 GiB)
\t\tflags: count = 1
\t\t\tMEMORY_HEAP_DEVICE_LOCAL_BIT
\tmemoryHeaps[1]:
\t\tsize   = 33554432000 (0x7d0000000) (31.25 GiB)
\t\tflags:
\t\t\tNone
GPU1:
VkPhysicalDeviceProperties:
---------------------------
\tdeviceType        = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName        = llvmpipe (LLVM 17.0.6, 256 bits)
VkPhysicalDeviceMemoryProperties:
=================================
memoryHeaps: count = 1
\tmemoryHeaps[0]:
\t\tsize   = 67108864000 (0xfa0000000) (62.50 GiB)
\t\tflags: count = 1
\t\t\tMEMORY_HEAP_DEVICE_LOCAL_BIT
"""


def software_only_vulkaninfo() -> str:
    return (
        VULKANINFO[: VULKANINFO.index("GPU0:")]
        + VULKANINFO[VULKANINFO.index("GPU1:") :]
    )


# --- NVIDIA ------------------------------------------------------------------------------


def test_it_picks_cuda13_when_driver_supports_13(tmp_path: Path) -> None:
    nvidia_host(tmp_path, cuda="13.0", driver="580.65.06")
    report = probe(tmp_path)
    assert report.capability == "nvidia-cuda-13"
    assert report.capability_source == "detected"
    assert report.vendor == "nvidia"
    assert report.cuda_version == "13.0"
    assert report.driver_version == "580.65.06"
    assert report.vram_bytes == 24564 * MIB
    assert report.explanation == (
        "nvidia-cuda-13: NVIDIA driver 580.65.06 supports CUDA 13.0; 24 GiB VRAM"
    )


def test_it_picks_cuda12_when_driver_supports_12(tmp_path: Path) -> None:
    nvidia_host(tmp_path, cuda="12.4")
    report = probe(tmp_path)
    assert report.capability == "nvidia-cuda-12"
    assert report.gpus[0].name == "NVIDIA GeForce RTX 4090"
    assert "supports CUDA 12.4" in report.explanation


def test_it_picks_plain_nvidia_when_driver_supports_only_cuda_11(
    tmp_path: Path,
) -> None:
    nvidia_host(tmp_path, cuda="11.8", driver="520.61.05")
    assert probe(tmp_path).capability == "nvidia"


def test_it_ignores_a_cuda13_toolkit_the_driver_cannot_run(tmp_path: Path) -> None:
    nvidia_host(tmp_path, cuda="12.4")
    add_cuda_toolkit(tmp_path, "cuda-13")
    add_cuda_toolkit(tmp_path, "cuda-12.4")
    report = probe(tmp_path)
    assert report.cuda_toolkits == (12, 13)
    assert report.capability == "nvidia-cuda-12"
    assert "/usr/local/cuda-13 ignored" in report.explanation


def test_it_follows_the_toolkit_folders_without_nvidia_smi(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x10de")
    add_cuda_toolkit(tmp_path, "cuda-12")
    add_cuda_toolkit(tmp_path, "cuda-13")
    report = probe(tmp_path)
    # LocalAI's rule: the newest folder wins. Unknown VRAM does not demote the GPU.
    assert report.capability == "nvidia-cuda-13"
    assert report.cuda_version == ""
    assert "/usr/local/cuda-13 found" in report.explanation
    assert "VRAM unknown" in report.explanation


def test_it_uses_the_cuda12_folder_when_it_is_the_only_one(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x10de")
    add_cuda_toolkit(tmp_path, "cuda-12.8")
    assert probe(tmp_path).capability == "nvidia-cuda-12"


def test_it_reports_plain_nvidia_without_smi_or_toolkit(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x10de")
    report = probe(tmp_path)
    assert report.capability == "nvidia"
    assert report.gpus[0].vendor == "nvidia"


def test_it_counts_2_gib_of_vram_as_no_gpu(tmp_path: Path) -> None:
    nvidia_host(tmp_path, gpus=(("NVIDIA T400", "2048"),))
    report = probe(tmp_path)
    assert report.capability == "default"
    assert report.vendor == "nvidia"
    assert "VRAM 2 GiB <= 4 GiB counts as no GPU" in report.explanation


def test_it_counts_exactly_4_gib_as_no_gpu(tmp_path: Path) -> None:
    nvidia_host(tmp_path, gpus=(("NVIDIA T1000", "4096"),))
    assert probe(tmp_path).capability == "default"


def test_it_counts_just_over_4_gib_as_a_gpu(tmp_path: Path) -> None:
    nvidia_host(tmp_path, gpus=(("NVIDIA T1000", "4097"),))
    assert probe(tmp_path).capability == "nvidia-cuda-12"


def test_it_adds_up_the_vram_of_several_gpus(tmp_path: Path) -> None:
    nvidia_host(tmp_path, gpus=(("NVIDIA T600", "3072"), ("NVIDIA T600", "3072")))
    report = probe(tmp_path)
    assert report.vram_bytes == 6 * GIB
    assert len(report.gpus) == 2
    assert report.capability == "nvidia-cuda-12"


def test_it_prefers_nvidia_over_other_cards(tmp_path: Path) -> None:
    nvidia_host(tmp_path)
    add_card(tmp_path, "card1", "0x8086")
    add_card(tmp_path, "card2", "0x1002", mem_info_vram_total=8 * GIB)
    assert probe(tmp_path).vendor == "nvidia"


def test_it_finds_an_nvidia_card_that_has_no_drm_node(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x8086")  # the integrated GPU is the only DRM card
    write(tmp_path, "sys/bus/pci/devices/0000:01:00.0/class", "0x030200\n")
    write(tmp_path, "sys/bus/pci/devices/0000:01:00.0/vendor", "0x10de\n")
    report = probe(tmp_path)
    assert report.vendor == "nvidia"
    assert [g.name for g in report.gpus] == ["NVIDIA GPU (0000:01:00.0)"]


def test_it_ignores_pci_devices_that_are_not_displays(tmp_path: Path) -> None:
    linux_host(tmp_path)
    write(tmp_path, "sys/bus/pci/devices/0000:00:1f.6/class", "0x020000\n")  # Intel NIC
    write(tmp_path, "sys/bus/pci/devices/0000:00:1f.6/vendor", "0x8086\n")
    assert probe(tmp_path).vendor == ""


def test_it_survives_a_failing_nvidia_smi(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2\nexit 9")
    add_cuda_toolkit(tmp_path, "cuda-12")
    report = probe(tmp_path)
    assert report.vendor == "nvidia"
    assert report.capability == "nvidia-cuda-12"
    assert report.driver_version == report.cuda_version == ""
    assert "nvidia-smi failed" in report.explanation


def test_it_survives_garbage_from_nvidia_smi(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(
        tmp_path,
        "nvidia-smi",
        "printf 'x, y\\n\\0\\377 nonsense, CUDA Version: soon\\n'",
    )
    report = probe(tmp_path)
    assert report.capability == "nvidia"
    assert report.gpus == ()
    assert report.cuda_version == ""


def test_it_gives_up_on_a_hanging_nvidia_smi(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(tmp_path, "nvidia-smi", "sleep 30")
    started = time.monotonic()
    report = probe(tmp_path, timeout=0.2)
    assert time.monotonic() - started < 3
    assert report.capability == "nvidia"


def test_it_uses_system_memory_for_unified_memory_gpus(tmp_path: Path) -> None:
    # A GB10-style machine: arm64, nvidia-smi says the memory is [N/A].
    linux_host(tmp_path, machine="aarch64")
    write(tmp_path, "sys/devices/soc0/soc_id", "jep106:0426:8901\n")
    add_nvidia_smi(
        tmp_path, cuda="13.0", driver="580.95.05", gpus=(("NVIDIA GB10", "[N/A]"),)
    )
    report = probe(tmp_path)
    assert report.capability == "nvidia-l4t-cuda-13"
    assert report.vram_bytes == 65536000 * 1024
    assert report.gpus[0].vram_bytes == 65536000 * 1024


def test_it_parses_gpu_names_with_commas() -> None:
    rows = parse_nvidia_query("0, Tesla V100, PCIe, 16384, 535.1\nWarning: garbage\n")
    assert rows == [("Tesla V100, PCIe", 16384 * MIB, "535.1")]


# --- AMD, Intel, Vulkan -------------------------------------------------------------------


def test_it_detects_amd_with_vram_from_sysfs(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card1", "0x1002", mem_info_vram_total=16 * GIB)
    add_cuda_toolkit(tmp_path, "cuda-12")  # CUDA folders mean nothing to an AMD host
    report = probe(tmp_path)
    assert report.capability == "amd"
    assert report.vram_bytes == 16 * GIB
    assert report.explanation == "amd: AMD GPU; 16 GiB VRAM"


def test_it_asks_rocm_smi_when_sysfs_has_no_vram_counter(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x1002")
    add_tool(
        tmp_path,
        "rocm-smi",
        "echo 'device,VRAM Total Memory (B),VRAM Total Used Memory (B)'\n"
        f"echo 'card0,{24 * GIB},1000'",
        folder="usr/local/bin",
    )
    report = probe(tmp_path)
    assert report.capability == "amd"
    assert report.vram_bytes == 24 * GIB


def test_it_treats_an_amd_apu_carve_out_as_no_gpu(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x1002", mem_info_vram_total=512 * MIB)
    assert probe(tmp_path).capability == "default"


def test_it_detects_an_intel_discrete_gpu(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x8086", lmem_total_size=16 * GIB)
    report = probe(tmp_path)
    assert report.capability == "intel"
    assert report.vram_bytes == 16 * GIB


def test_it_treats_an_intel_integrated_gpu_as_no_gpu(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x8086")
    report = probe(tmp_path)
    assert report.vendor == "intel"
    assert report.capability == "default"
    assert "Intel GPU with VRAM 0 GiB <= 4 GiB counts as no GPU" in report.explanation


def test_it_detects_intel_through_xpu_smi(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(tmp_path, "xpu-smi", "exit 0")
    report = probe(tmp_path)
    assert report.vendor == "intel"


def test_it_detects_vulkan_only_hosts_through_vulkaninfo(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(tmp_path, "vulkaninfo", f"cat <<'EOF'\n{VULKANINFO}EOF")
    report = probe(tmp_path)
    assert report.capability == "vulkan"
    assert report.vram_bytes == 17163091968
    assert [g.name for g in report.gpus] == ["AMD Radeon RX 6800 XT (RADV NAVI21)"]


def test_it_ignores_a_software_vulkan_device(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(tmp_path, "vulkaninfo", f"cat <<'EOF'\n{software_only_vulkaninfo()}EOF")
    report = probe(tmp_path)
    assert report.vendor == ""
    assert report.capability == "default"
    assert "CPU (software) device" in report.explanation


def test_it_reads_the_largest_device_local_heap() -> None:
    devices = parse_vulkaninfo(VULKANINFO)
    assert [(d.software, d.vram_bytes) for d in devices] == [
        (False, 17163091968),
        (True, 67108864000),
    ]


# --- Jetson, Apple, CPU ---------------------------------------------------------------------


def jetson_host(root: Path) -> Path:
    linux_host(root, machine="aarch64")
    write(root, "sys/devices/soc0/family", "Tegra\n")
    write(root, "proc/meminfo", "MemTotal:        7999000 kB\n")
    return root


def test_it_detects_a_jetson_with_a_cuda12_toolkit(tmp_path: Path) -> None:
    jetson_host(tmp_path)
    add_cuda_toolkit(tmp_path, "cuda-12.6")
    report = probe(tmp_path)
    assert (report.os, report.arch) == ("linux", "arm64")
    assert report.jetson
    assert report.vendor == "nvidia"
    assert report.capability == "nvidia-l4t-cuda-12"
    assert report.vram_bytes == 7999000 * 1024
    assert "Jetson" in report.explanation


def test_it_detects_a_cuda13_jetson_from_the_soc_id(tmp_path: Path) -> None:
    linux_host(tmp_path, machine="aarch64")
    write(tmp_path, "sys/devices/soc0/soc_id", "jep106:0426:8701\n")
    add_cuda_toolkit(tmp_path, "cuda-13")
    assert probe(tmp_path).capability == "nvidia-l4t-cuda-13"


def test_it_reports_plain_l4t_from_nv_tegra_release(tmp_path: Path) -> None:
    linux_host(tmp_path, machine="aarch64")
    write(tmp_path, "etc/nv_tegra_release", "# R35 (release), REVISION: 4.1\n")
    report = probe(tmp_path)
    assert report.jetson
    assert report.capability == "nvidia-l4t"


def test_it_skips_the_vram_check_on_jetson(tmp_path: Path) -> None:
    jetson_host(tmp_path)
    write(tmp_path, "proc/meminfo", "MemTotal:        2000000 kB\n")
    assert probe(tmp_path).capability == "nvidia-l4t"


def test_it_reports_metal_on_apple_silicon(tmp_path: Path) -> None:
    write(tmp_path, "proc/sys/kernel/ostype", "Darwin\n")
    write(tmp_path, "proc/sys/kernel/arch", "arm64\n")
    report = probe(tmp_path)
    assert (report.os, report.arch, report.vendor) == ("darwin", "arm64", "apple")
    assert report.capability == "metal"


def test_it_reports_darwin_x86_on_intel_macs(tmp_path: Path) -> None:
    write(tmp_path, "proc/sys/kernel/ostype", "Darwin\n")
    write(tmp_path, "proc/sys/kernel/arch", "x86_64\n")
    report = probe(tmp_path)
    assert report.capability == "darwin-x86"
    assert report.arch == "amd64"


def test_it_reports_default_on_a_cpu_only_server(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_card(tmp_path, "card0", "0x1a03")  # ASPEED BMC display
    # A connector entry: never read as a device, whatever it contains.
    write(tmp_path, "sys/class/drm/card0-VGA-1/device/vendor", "0x10de\n")
    report = probe(tmp_path)
    assert report.vendor == ""
    assert report.gpus == ()
    assert report.capability == "default"
    assert report.explanation == "default: no GPU found"


def test_it_copes_with_an_empty_tree(tmp_path: Path) -> None:
    report = probe(tmp_path)
    assert report.capability == "default"
    assert report.cuda_toolkits == ()


# --- forced value and run file ---------------------------------------------------------------


def test_it_honours_the_forced_capability(tmp_path: Path) -> None:
    linux_host(tmp_path)
    report = probe(tmp_path, forced=" nvidia-cuda-12 ")
    assert report.capability == "nvidia-cuda-12"
    assert report.capability_source == "forced"
    assert report.explanation.startswith(
        "nvidia-cuda-12: forced by LOCALAI_FORCE_META_BACKEND_CAPABILITY (detected default"
    )


def test_it_passes_unknown_forced_values_through(tmp_path: Path) -> None:
    linux_host(tmp_path)
    assert probe(tmp_path, forced="some-future-accelerator").capability == (
        "some-future-accelerator"
    )


def test_it_reads_the_run_file_under_the_root(tmp_path: Path) -> None:
    nvidia_host(tmp_path)
    write(tmp_path, "run/localai/capability", "  vulkan\n")
    report = probe(tmp_path)
    assert report.capability == "vulkan"
    assert report.capability_source == "run-file"
    # The hardware is still reported as it is.
    assert report.vendor == "nvidia"
    assert "detected nvidia-cuda-12" in report.explanation


def test_the_forced_value_wins_over_the_run_file(tmp_path: Path) -> None:
    linux_host(tmp_path)
    write(tmp_path, "run/localai/capability", "vulkan\n")
    report = probe(tmp_path, forced="amd")
    assert (report.capability, report.capability_source) == ("amd", "forced")


def test_it_ignores_an_empty_run_file(tmp_path: Path) -> None:
    linux_host(tmp_path)
    write(tmp_path, "run/localai/capability", "\n")
    assert probe(tmp_path).capability_source == "detected"


# --- platform and plumbing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "amd64"),
        ("AMD64", "amd64"),
        ("aarch64", "arm64"),
        ("riscv64", "riscv64"),
    ],
)
def test_machine_names_use_the_oci_spelling(machine: str, expected: str) -> None:
    assert normalise_machine(machine) == expected


def test_it_finds_tools_in_usr_local_bin(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(tmp_path, "rocm-smi", "exit 1", folder="usr/local/bin")
    assert probe(tmp_path).vendor == "amd"


def test_it_ignores_tools_that_are_not_executable(tmp_path: Path) -> None:
    linux_host(tmp_path)
    add_tool(tmp_path, "nvidia-smi", "exit 0").chmod(0o644)
    assert probe(tmp_path).vendor == ""


def test_the_report_round_trips_through_json(tmp_path: Path) -> None:
    nvidia_host(tmp_path)
    add_cuda_toolkit(tmp_path, "cuda-12")
    report = probe(tmp_path)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["gpus"][0]["name"] == "NVIDIA GeForce RTX 4090"
    assert data["cuda_toolkits"] == [12]
    assert HardwareReport.from_dict(data) == report
