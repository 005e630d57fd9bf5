"""The machine a latency number was measured on: CPU model, cores, flags, frequency governor,
board, OS, software versions and thread environment (``machine_info``); the CPU temperature; and
how busy the machine was with other work during a run (``run_conditions``).

Everything is read from /proc, /sys and /etc (``root`` points elsewhere in tests); where a system
does not expose a value it is None, never a guess.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Optional

# Environment variables that change how many threads an engine or library uses, or how they spin.
THREAD_ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "BLIS_", "NUMEXPR_", "VECLIB_",
                       "ONEDNN_", "DNNL_", "OV_", "ORT_", "TORCH_", "NCNN_", "OPENCV_")

# CPU features that decide which kernels an engine picks (and, for OpenVINO, the default precision).
CPU_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16",
                         "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "hypervisor",
                         "neon", "asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve", "sve2")

# Thermal zone types that are the CPU (or the SoC the CPU is on), most specific first.
CPU_THERMAL_TYPES = ("x86_pkg_temp", "cpu-thermal", "cpu_thermal", "cpu0-thermal", "cpu", "soc_thermal",
                     "soc-thermal", "acpitz")

CPU_HWMON_NAMES = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal")


def _read(path: str | os.PathLike) -> Optional[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo_fields(root: str = "/") -> dict[str, str]:
    """First value of every key in /proc/cpuinfo (lower-case keys)."""
    text = _read(Path(root) / "proc/cpuinfo") or ""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            values.setdefault(key.strip().lower(), value.strip())
    return values


def cpu_model(root: str = "/") -> str:
    info = _cpuinfo_fields(root)
    for key in ("model name", "cpu model", "hardware", "processor"):
        value = info.get(key, "")
        if value and not value.isdigit():
            return value
    if info.get("cpu implementer"):  # ARM without a name: implementer / part numbers identify the core
        return f"ARM implementer {info['cpu implementer']} part {info.get('cpu part', '?')}"
    return platform.processor() or platform.machine() or "unknown"


def device_model(root: str = "/") -> Optional[str]:
    """The board or product (Raspberry Pi model, phone model, PC product name), where exposed."""
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model", "sys/class/dmi/id/product_name"):
        text = _read(Path(root) / rel)
        if text and text.strip("\x00\n "):
            return text.strip("\x00\n ")
    return None


def _physical_cores(root: str = "/") -> Optional[int]:
    text = _read(Path(root) / "proc/cpuinfo") or ""
    pairs, phys, core = set(), None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if core is not None:
                pairs.add((phys, core))
            phys = core = None
    if core is not None:
        pairs.add((phys, core))
    return len(pairs) or None


def _cpu_flags(root: str = "/") -> list[str]:
    info = _cpuinfo_fields(root)
    flags = set((info.get("flags") or info.get("features") or "").split())
    return [f for f in CPU_FLAGS_OF_INTEREST if f in flags]


def _cpufreq(root: str = "/") -> dict:
    base = Path(root) / "sys/devices/system/cpu/cpu0/cpufreq"
    governor = _read(base / "scaling_governor")
    max_khz = _read(base / "cpuinfo_max_freq")
    return {
        "governor": governor.strip() if governor else None,
        "max_mhz": int(max_khz) / 1000.0 if max_khz and max_khz.strip().isdigit() else None,
    }


def cpu_temperature(root: str = "/") -> tuple[Optional[float], Optional[str]]:
    """(degrees Celsius, source) of the CPU, or (None, None) where the system does not expose it.

    Reads /sys/class/thermal/thermal_zone*/temp (millidegrees; the Raspberry Pi's ``cpu-thermal``),
    preferring zones whose type names the CPU, then hwmon sensors (coretemp, k10temp).
    """
    candidates = []
    for zone in sorted(Path(root).glob("sys/class/thermal/thermal_zone*")):
        kind = (_read(zone / "type") or "").strip()
        value = _read(zone / "temp")
        if value is None or not value.strip().lstrip("-").isdigit():
            continue
        rank = CPU_THERMAL_TYPES.index(kind) if kind in CPU_THERMAL_TYPES else len(CPU_THERMAL_TYPES)
        candidates.append((rank, int(value) / 1000.0, f"{zone} ({kind or 'unknown type'})"))
    for hwmon in sorted(Path(root).glob("sys/class/hwmon/hwmon*")):
        name = (_read(hwmon / "name") or "").strip()
        value = _read(hwmon / "temp1_input")
        if name in CPU_HWMON_NAMES and value and value.strip().lstrip("-").isdigit():
            candidates.append((len(CPU_THERMAL_TYPES) + 1, int(value) / 1000.0, f"{hwmon} ({name})"))
    if not candidates:
        return None, None
    _, celsius, source = min(candidates, key=lambda c: c[0])
    return celsius, source


def _os_release(root: str = "/") -> Optional[str]:
    text = _read(Path(root) / "etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def _arch_family(machine: str) -> str:
    """'x86' or 'arm' for the architectures one kernel runs natively (a 64-bit kernel runs its
    32-bit relatives' programs too); any other name stands for itself."""
    name = machine.lower()
    if name in ("x86_64", "amd64", "i386", "i486", "i586", "i686"):
        return "x86"
    if name.startswith(("arm", "aarch64")):
        return "arm"
    return name


def emulation(root: str = "/") -> Optional[str]:
    """How this process is emulated, or None where it runs on its own architecture.

    User-mode emulation (qemu-user, e.g. an arm64 Debian root on an x86-64 machine) makes ``uname``
    report the guest architecture, but the kernel's own /proc/sys/kernel/arch, and /proc/cpuinfo on
    the qemu versions that pass it through, stay the host's. NANOPLUS_EMULATION (scripts/arm64_check.sh
    sets it) says precisely which emulator and host; it is taken as it is.
    """
    described = os.environ.get("NANOPLUS_EMULATION", "").strip()
    if described:
        return described
    process = platform.machine()
    kernel = (_read(Path(root) / "proc/sys/kernel/arch") or "").strip()
    if not kernel:
        info = _cpuinfo_fields(root)
        kernel = "x86_64" if "vendor_id" in info else "aarch64" if "cpu implementer" in info else ""
    if kernel and process and _arch_family(kernel) != _arch_family(process):
        return f"{process} emulated on a {kernel} kernel (user-mode emulation such as qemu-user)"
    return None


def package_version(*names: str) -> Optional[str]:
    """Installed version of the first of ``names`` found, without importing it."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine_info(label: Optional[str] = None) -> dict:
    """Everything about this machine that a latency number depends on (the schema's ``machine``)."""
    import cv2
    import numpy as np

    from nanoplus import __version__

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    flags = _cpu_flags()
    _, thermal_source = cpu_temperature()
    cpu_name = cpu_model()
    board = device_model()
    emulated = emulation()
    if emulated:
        # what /proc and /sys show is the host's: neither its CPU nor its board is the one emulated
        cpu_name = f"{platform.machine()} emulated on {cpu_name}"
        board = None
    return {
        "label": label or board or cpu_name,
        "device_model": board,
        "emulation": emulated,
        "cpu": {
            "model": cpu_name,
            "architecture": platform.machine(),
            "logical_cores": os.cpu_count(),
            "physical_cores": _physical_cores(),
            "usable_cores": usable,
            "flags": flags,
            "virtualized": "hypervisor" in flags,
            **_cpufreq(),
        },
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "distribution": _os_release(),
        },
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "software": {k: v for k, v in {
            "nanoplus": __version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "onnxruntime": package_version("onnxruntime", "onnxruntime-openvino", "onnxruntime-gpu"),
            "openvino": package_version("openvino"),
            "ncnn": package_version("ncnn"),
            "torch": package_version("torch"),
        }.items() if v},
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(THREAD_ENV_PREFIXES)},
        "thermal_source": thermal_source,
    }


def cpu_times() -> dict:
    """System-wide busy / steal jiffies (/proc/stat) and this process's CPU seconds, for the load check."""
    out = {"wall": time.monotonic(), "self": sum(os.times()[:2])}
    text = _read("/proc/stat")
    if text and text.startswith("cpu "):
        values = [int(v) for v in text.splitlines()[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        out["total"] = sum(values[:8])
        out["busy"] = out["total"] - idle
        out["steal"] = values[7] if len(values) > 7 else 0
    return out


def loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_conditions(before: dict, after: dict, load_before, load_after,
                   temperatures: list[tuple[float, Optional[float]]]) -> dict:
    """How busy the machine was with other work while we measured (``before`` / ``after`` from
    ``cpu_times``, the loads from ``loadavg``, ``temperatures`` (seconds, celsius) read during the run).

    other_cpu_cores: CPU time used by everything except this process, per second of the run (in
    cores); steal_fraction: share of the CPU time the hypervisor gave to other guests. Either well
    above 0 means the numbers are preliminary.
    """
    conditions = {"loadavg_before": load_before, "loadavg_after": load_after,
                  "other_cpu_cores": None, "steal_fraction": None}
    wall = after["wall"] - before["wall"]
    # /proc/stat counts in clock ticks (10 ms): below a second the estimate is mostly rounding
    if "busy" in before and "busy" in after and wall >= 1.0:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy_s = (after["busy"] - before["busy"]) / hz
        own_s = after["self"] - before["self"]
        conditions["other_cpu_cores"] = round(max(0.0, busy_s - own_s) / wall, 3)
        total = after["total"] - before["total"]
        conditions["steal_fraction"] = round((after["steal"] - before["steal"]) / total, 4) if total > 0 else None
    temps = [c for _, c in temperatures if c is not None]
    conditions["cpu_temp_start_c"] = temps[0] if temps else None
    conditions["cpu_temp_end_c"] = temps[-1] if temps else None
    return conditions
