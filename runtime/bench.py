"""Latency measurement: warm-up, model-only and end-to-end timings, interleaved, with the machine recorded.

One *case* is one (model file, backend, threads, input size) combination, opened as a
``Detector``. All cases are measured in one run, round-robin (A B C A B C ...), one iteration
each per round, so that a slow period of a noisy machine hits every case alike and the ratios
between them hold. Per round and case:

1. model-only: ``detector.backend.run(blob)`` on a blob prepared beforehand (the engine alone);
2. end to end: ``preprocess`` (decoded BGR image -> blob), the engine, ``postprocess`` (decode +
   NMS + boxes back to the image), each stage timed: the path ``detector(image)`` takes.

Before that, ``warmup`` end-to-end iterations per case (also round-robin); the first call is
reported on its own ("first run": lazy compilation, memory allocation, caches), then the mean of
the others. Statistics are computed on the per-iteration samples (milliseconds): min, p50, p90,
p99 (linear interpolation between order statistics, numpy's default), mean, standard deviation
(n - 1), max; throughput is 1000 / mean (one stream, one image at a time).

A sustained run (``window_s``) also cuts the run into time windows and reports each window's
medians and the CPU temperature, to show thermal throttling (Raspberry Pi, phones).

Only numpy, OpenCV and the engine under test are imported; torch only for a torch checkpoint.
The JSON document written here follows ``runtime/bench_schema.json`` (see docs/bench.md).
"""
from __future__ import annotations

import datetime
import gc
import hashlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from nanoplus.errors import NanoplusError

if TYPE_CHECKING:
    import numpy as np

SCHEMA_NAME = "nanoplus-bench"
SCHEMA_VERSION = 1
STAGES = ("model", "preprocess", "inference", "postprocess", "end_to_end")

# Environment variables that change how many threads an engine or library uses, or how they spin.
THREAD_ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "BLIS_", "NUMEXPR_", "VECLIB_",
                       "ONEDNN_", "DNNL_", "OV_", "ORT_", "TORCH_", "NCNN_", "OPENCV_")
# CPU features that decide which kernels an engine picks (and, for OpenVINO, the default precision).
CPU_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16",
                         "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "hypervisor",
                         "neon", "asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve", "sve2")
# Thermal zone types that are the CPU (or the SoC the CPU is on), most specific first.
CPU_THERMAL_TYPES = ("x86_pkg_temp", "cpu-thermal", "cpu_thermal", "cpu0-thermal", "cpu", "soc_thermal",
                     "soc-thermal", "acpitz")
CPU_HWMON_NAMES = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal")


class BenchError(NanoplusError):
    """A benchmark that cannot run as asked: the message names the model file, the option and the fix."""


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def summarize(samples_ms: Sequence[float]) -> dict:
    """Summary of latency samples in milliseconds.

    Percentiles interpolate linearly between order statistics (numpy's default, "type 7"); std is
    the sample standard deviation (n - 1 in the denominator, 0 for one sample); throughput_fps is
    1000 / mean, the images per second of one stream processing one image after another.
    """
    import numpy as np

    values = np.asarray(samples_ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("summarize needs a non-empty 1-D sequence of samples")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    mean = float(values.mean())
    return {
        "n": int(values.size),
        "min_ms": float(values.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "std_ms": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "max_ms": float(values.max()),
        "throughput_fps": 1000.0 / mean if mean > 0 else None,
    }


def overhead_ratio(stages: dict) -> Optional[float]:
    """(pre-processing + post-processing) / model-only, on medians; None without those stages."""
    try:
        return (stages["preprocess"]["p50_ms"] + stages["postprocess"]["p50_ms"]) / stages["model"]["p50_ms"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def drift(windows: list[dict], key: str) -> Optional[float]:
    """Relative change of a per-window median from the first window to the last (0.05 = 5% slower)."""
    values = [w[key] for w in windows if w.get(key) is not None]
    if len(values) < 2 or values[0] <= 0:
        return None
    return values[-1] / values[0] - 1.0


# ---------------------------------------------------------------------------------------------
# one combination
# ---------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One (model, backend, threads, input size) combination and the samples measured for it.

    detector: a ``Detector``, or anything with the same parts: ``preprocess(img) -> (blob, M)``,
    ``postprocess(raw, M, src_hw, scores_are_sigmoid) -> detections``, ``.meta`` (``layout``,
    ``score_activation``, ``input_hw``) and ``.backend`` (``run(blob)``, ``name``, ``precision``,
    ``version``).
    """

    model_path: str
    backend: str
    threads: Optional[int]
    imgsz: Optional[tuple[int, int]]
    detector: object = None
    load_ms: Optional[float] = None
    warmup_ms: list[float] = field(default_factory=list)
    first_inference_ms: Optional[float] = None
    samples_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    last_detections: object = None  # what the last end-to-end iteration returned
    blob: object = None

    @property
    def backend_name(self) -> str:
        return getattr(getattr(self.detector, "backend", None), "name", None) or self.backend

    @property
    def input_hw(self) -> Optional[list[int]]:
        meta = getattr(self.detector, "meta", None)
        if meta is not None:
            return [int(v) for v in meta.input_hw]
        return list(self.imgsz) if self.imgsz else None


# ---------------------------------------------------------------------------------------------
# thread settings
# ---------------------------------------------------------------------------------------------
_torch_default_threads: Optional[int] = None  # torch's own count, read before any case changes it


def apply_threads(case: Case) -> None:
    """Give OpenCV (pre-processing) and, for torch, torch's intra-op pool the case's thread count.

    Both are process-wide settings; they are set before every iteration because interleaved cases
    may ask for different counts. ONNX Runtime, OpenVINO and ncnn keep theirs per session / net.
    """
    import cv2

    cv2.setNumThreads(int(case.threads) if case.threads else -1)  # -1: OpenCV's default
    if case.backend_name == "torch" and "torch" in sys.modules:
        torch = sys.modules["torch"]
        wanted = int(case.threads) if case.threads else _torch_default_threads
        if wanted and torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)


# ---------------------------------------------------------------------------------------------
# the measurement loop
# ---------------------------------------------------------------------------------------------
def _ms(ns: int) -> float:
    return ns / 1e6


def _count(detections) -> Optional[int]:
    boxes = getattr(detections, "boxes", None)
    return int(len(boxes)) if boxes is not None else None


def end_to_end_once(case: Case, image: np.ndarray, clock: Callable[[], int]) -> tuple[float, float, float]:
    """One image to final boxes, the path ``detector(image)`` takes; returns (pre, inference, post) in ms.

    Inference is the engine's own output (a channels-first output viewed transposed, scores as the
    model emits them); decoding then thresholds logits in logit space. ``Detector.infer`` would
    also apply a sigmoid to all N x C scores of a logit model, which ``detector(image)`` skips.
    """
    det = case.detector
    meta = det.meta
    t0 = clock()
    blob, matrix = det.preprocess(image)
    t1 = clock()
    output = det.backend.run(blob, keep=False)  # as detector(image): decoded before the next run
    raw = output if meta.layout == "NC" else output.T
    t2 = clock()
    detections = det.postprocess(raw, matrix, image.shape[:2], scores_are_sigmoid=meta.score_activation == "sigmoid")
    t3 = clock()
    case.blob = blob
    case.last_detections = detections
    return _ms(t1 - t0), _ms(t2 - t1), _ms(t3 - t2)


def model_only_once(case: Case, clock: Callable[[], int]) -> float:
    """The engine alone on a ready blob (``detector.backend.run``), in ms."""
    t0 = clock()
    case.detector.backend.run(case.blob, keep=False)  # the engine's work only, no copy of its output
    return _ms(clock() - t0)


def preprocess_implementation() -> str:
    """What ``Detector.preprocess`` runs here (compiled or OpenCV + numpy), for the run record."""
    from nanoplus.runtime.preprocess import implementation

    return implementation()


# bench --precision -> the Detector's precision argument
ENGINE_PRECISION = {"f32": "fp32", "native": "auto", "bf16": "bf16"}


def open_case(case: Case, precision: str = "f32", score_thr: float = 0.35, iou_thr: float = 0.6,
              max_det: int = 100) -> Case:
    """Open ``case.model_path`` as a ``Detector`` (timed as ``load_ms``).

    precision: "f32" asks every engine for float32 compute (OpenVINO's CPU plugin would pick bf16
    where the CPU has it; ncnn fp16 storage/arithmetic off); "native" leaves each engine's default;
    "bf16" asks OpenVINO and torch (autocast) for bfloat16 compute (the others have none).
    A model the runtime cannot load, or an engine that is not installed, raises a ``NanoplusError``.
    """
    from nanoplus.runtime.backends import _import_engine, choose_backend
    from nanoplus.runtime.detector import Detector

    path = Path(case.model_path)
    if not path.is_file():
        raise BenchError(f"{path}: no such model file; check the path")
    if precision not in ENGINE_PRECISION:
        raise BenchError(f"--precision must be one of {', '.join(ENGINE_PRECISION)}, got '{precision}'")
    if precision == "bf16" and choose_backend(path, case.backend) not in ("openvino", "torch"):
        raise BenchError(f"{path}: --precision bf16 runs on OpenVINO and torch only ({choose_backend(path, case.backend)} "
                         "has no bf16 compute on CPUs); bench the other engines with --precision f32")
    global _torch_default_threads
    if _torch_default_threads is None and choose_backend(path, case.backend) == "torch":
        torch = _import_engine("torch", path)  # not installed: a message naming the extra to install

        _torch_default_threads = torch.get_num_threads()
    t0 = time.perf_counter_ns()
    try:
        case.detector = Detector(
            str(path), backend=case.backend, threads=case.threads, score_thr=score_thr, iou_thr=iou_thr,
            max_det=max_det, precision=ENGINE_PRECISION[precision],
            input_size=list(case.imgsz) if case.imgsz else None,
        )
    except NanoplusError as e:
        if case.imgsz:  # the Detector names its own flag; say which bench option asked for the size
            raise BenchError(f"{e} (asked with --imgsz {case.imgsz[0]}x{case.imgsz[1]}: leave --imgsz out to "
                             "run the model at its own size, or export the model at that size)") from None
        raise
    except Exception as e:  # an engine's own exception type: say which file and backend, not where
        raise BenchError(f"{path}: the {case.backend} backend cannot open this model ({type(e).__name__}: {e}); "
                         "check that the file is a complete NanoDet-Plus model for that engine") from None
    case.load_ms = _ms(time.perf_counter_ns() - t0)
    return case


@dataclass
class RunRecord:
    """What one measurement run saw besides the samples: its rounds, windows and conditions."""

    rounds: int = 0
    round_start_s: list[float] = field(default_factory=list)  # since the start of the measured phase
    duration_s: float = 0.0
    window_s: Optional[float] = None
    temperatures: list[tuple[float, Optional[float]]] = field(default_factory=list)  # (t_s, celsius)
    conditions: dict = field(default_factory=dict)
    interrupted: bool = False  # stopped early with Ctrl-C


def measure(
    cases: list[Case],
    image: np.ndarray,
    warmup: int = 10,
    runs: Optional[int] = None,
    seconds: Optional[float] = None,
    window_s: Optional[float] = None,
    clock: Callable[[], int] = time.perf_counter_ns,
    read_temperature: Callable[[], Optional[float]] = lambda: cpu_temperature()[0],
    progress: bool = True,
    settle_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RunRecord:
    """Warm up, then measure every case round-robin until ``runs`` rounds or ``seconds`` elapsed.

    cases: opened cases (``case.detector`` set); their ``warmup_ms`` / ``samples_ms`` are filled.
    image: (h, w, 3) uint8 BGR. Exactly one of runs / seconds; ``window_s`` cuts the measured phase
    into windows of that length for the sustained report (temperature read at each window edge).
    Every case gets the same number of rounds: a round is never cut short.
    settle_s: a pause before each case's turn (not timed), so that the worker threads of the engine
    that ran before (ONNX Runtime and OpenMP pools spin for a while after a run) are idle again and
    do not compete with the next engine for the cores.
    """
    if not cases:
        raise BenchError("nothing to measure: no model / backend / threads combination was opened")
    if warmup < 1:
        raise BenchError("--warmup must be at least 1 (the first call is reported apart as the first-run latency)")
    if (runs is None) == (seconds is None):
        raise BenchError("give exactly one of --runs N or --seconds S (or --sustained S)")
    if runs is not None and runs < 1:
        raise BenchError(f"--runs must be at least 1, got {runs}")
    if seconds is not None and seconds <= 0:
        raise BenchError(f"--seconds / --sustained must be positive, got {seconds}")

    record = RunRecord(window_s=window_s)
    bar = _Progress(len(cases), warmup, runs, seconds, progress)
    cpu_before = _cpu_times()
    load_before = _loadavg()
    record.temperatures.append((0.0, read_temperature()))

    # warm-up: end to end, round-robin, so that lazy initialisation of one engine doesn't land
    # in another's measured phase
    for i in range(warmup):
        for case in cases:
            apply_threads(case)
            pre, inf, post = end_to_end_once(case, image, clock)
            if i == 0:
                case.first_inference_ms = inf
            case.warmup_ms.append(pre + inf + post)
        bar.warmup_round()

    gc.collect()  # start the measured phase without garbage from loading and warm-up
    start = clock()
    try:
        _measured_rounds(cases, image, runs, seconds, window_s, clock, read_temperature, record, bar, start,
                         lambda: sleep(settle_s) if settle_s > 0 else None)
    except KeyboardInterrupt:
        if record.rounds == 0:
            raise
        record.interrupted = True  # a long sustained run stopped with Ctrl-C keeps what it measured
        for case in cases:  # drop the samples of the unfinished round, so every case has the same count
            for values in case.samples_ms.values():
                del values[record.rounds:]
        del record.round_start_s[record.rounds:]
    record.duration_s = _ms(clock() - start) / 1000.0
    record.temperatures.append((record.duration_s, read_temperature()))
    bar.close()
    record.conditions = _conditions(cpu_before, _cpu_times(), load_before, _loadavg(), record)
    return record


def _measured_rounds(cases, image, runs, seconds, window_s, clock, read_temperature, record, bar, start,
                     settle) -> None:
    """Rounds of (model-only, end to end) per case, in case order, until runs / seconds; fills ``record``."""
    next_window_edge = window_s
    while True:
        elapsed = _ms(clock() - start) / 1000.0
        if window_s is not None and elapsed >= next_window_edge:
            record.temperatures.append((elapsed, read_temperature()))
            while next_window_edge <= elapsed:
                next_window_edge += window_s
        record.round_start_s.append(elapsed)
        for case in cases:
            apply_threads(case)
            settle()
            case.samples_ms["model"].append(model_only_once(case, clock))
            pre, inf, post = end_to_end_once(case, image, clock)
            case.samples_ms["preprocess"].append(pre)
            case.samples_ms["inference"].append(inf)
            case.samples_ms["postprocess"].append(post)
            case.samples_ms["end_to_end"].append(pre + inf + post)
        record.rounds += 1
        elapsed = _ms(clock() - start) / 1000.0
        bar.measured_round(elapsed)
        if runs is not None and record.rounds >= runs:
            break
        if seconds is not None and elapsed >= seconds:
            break


class _Progress:
    """tqdm over rounds (``runs``) or seconds (``seconds``), when asked for and tqdm is installed."""

    def __init__(self, num_cases: int, warmup: int, runs: Optional[int], seconds: Optional[float], enabled: bool):
        self.bar = None
        self.by_rounds = runs is not None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        total = warmup + runs if self.by_rounds else float(seconds)
        self.bar = tqdm(total=total, unit="round" if self.by_rounds else "s", leave=False, file=sys.stderr,
                        desc=f"bench: {num_cases} case(s), warm-up", dynamic_ncols=True)

    def warmup_round(self) -> None:
        if self.bar is not None and self.by_rounds:
            self.bar.update(1)

    def measured_round(self, elapsed_s: float) -> None:
        if self.bar is None:
            return
        self.bar.set_description("bench: measuring", refresh=False)
        if self.by_rounds:
            self.bar.update(1)
        else:
            self.bar.update(max(0.0, min(elapsed_s, self.bar.total) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
def window_summaries(case: Case, record: RunRecord) -> list[dict]:
    """Per-window medians of model-only and end-to-end latency for one case, with the temperature."""
    import numpy as np

    if not record.window_s:
        return []
    width = record.window_s
    count = max(1, int(np.ceil(record.duration_s / width - 1e-9)))
    starts = np.asarray(record.round_start_s[: len(case.samples_ms["model"])])
    index = np.minimum((starts // width).astype(int), count - 1)
    temps = record.temperatures
    windows = []
    for w in range(count):
        mask = index == w
        if not mask.any():
            continue
        model = np.asarray(case.samples_ms["model"])[mask]
        e2e = np.asarray(case.samples_ms["end_to_end"])[mask]
        end = min((w + 1) * width, record.duration_s)
        # the temperature read at this window's end edge (the first reading at or after it)
        temp = next((c for t, c in temps if t >= end - 1e-9 and c is not None), None)
        windows.append({
            "start_s": round(w * width, 3),
            "end_s": round(end, 3),
            "n": int(mask.sum()),
            "model_p50_ms": float(np.median(model)),
            "end_to_end_p50_ms": float(np.median(e2e)),
            "cpu_temp_c": temp,
        })
    return windows


def case_result(case: Case, record: RunRecord, keep_samples: bool = True) -> dict:
    """One entry of the results list of the schema."""
    det = case.detector
    meta = getattr(det, "meta", None)
    backend = getattr(det, "backend", None)
    stages = {name: summarize(values) for name, values in case.samples_ms.items() if values}
    warm = case.warmup_ms
    result = {
        "model": model_record(case.model_path, meta),
        "backend": case.backend_name,
        "engine_version": str(getattr(backend, "version", "") or "") or None,
        "device": "CPU",
        "precision": str(getattr(backend, "precision", "") or "unknown"),
        "threads": int(case.threads) if case.threads else None,
        "input_hw": case.input_hw,
        "load_ms": case.load_ms,
        "warmup": {
            "iterations": len(warm),
            "first_ms": warm[0] if warm else None,
            "first_inference_ms": case.first_inference_ms,
            "mean_ms": sum(warm[1:]) / (len(warm) - 1) if len(warm) > 1 else None,
        },
        "stages": stages,
        "overhead_ratio": overhead_ratio(stages),
        "detections": _count(case.last_detections),
    }
    if keep_samples:
        result["samples_ms"] = {name: [round(v, 4) for v in values] for name, values in case.samples_ms.items() if values}
    if record.window_s:
        windows = window_summaries(case, record)
        result["sustained"] = {
            "duration_s": round(record.duration_s, 3),
            "window_s": record.window_s,
            "windows": windows,
            "drift": {"model": drift(windows, "model_p50_ms"), "end_to_end": drift(windows, "end_to_end_p50_ms")},
        }
    return result


def model_record(model_path: str, meta=None) -> dict:
    """Name, format, files with SHA-256 and sizes, and what the metadata says about the model."""
    path = Path(model_path)
    files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in model_files(path)]
    record = {
        "name": (getattr(meta, "model_name", "") or path.stem) if meta is not None else path.stem,
        "path": str(path),
        "format": model_format(path),
        "files": files,
    }
    if meta is not None:
        record["num_classes"] = int(meta.num_classes)
        record["file_precision"] = getattr(meta, "precision", None)
    return record


def model_format(path: Path) -> str:
    return {".onnx": "onnx", ".xml": "openvino", ".param": "ncnn", ".bin": "ncnn", ".ckpt": "torch",
            ".pth": "torch", ".pt": "torch"}.get(path.suffix.lower(), path.suffix.lower().lstrip(".") or "unknown")


def model_files(path: Path) -> list[Path]:
    """The model file and the weight files that travel with it (.xml/.bin, .param/.bin, ONNX external data)."""
    files = [path]
    if path.suffix.lower() in (".xml", ".param"):
        files.append(path.with_suffix(".bin"))
    elif path.suffix.lower() == ".onnx":
        files.extend(p for p in (path.with_name(path.name + ".data"), path.with_suffix(".onnx_data")))
    return [p for p in files if p.is_file()]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------
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
    return {
        "label": label or board or cpu_name,
        "device_model": board,
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


def _cpu_times() -> dict:
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


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _conditions(before: dict, after: dict, load_before, load_after, record: RunRecord) -> dict:
    """How busy the machine was with other work while we measured.

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
    temps = [c for _, c in record.temperatures if c is not None]
    conditions["cpu_temp_start_c"] = temps[0] if temps else None
    conditions["cpu_temp_end_c"] = temps[-1] if temps else None
    return conditions


def build_document(cases: list[Case], record: RunRecord, machine: dict, settings: dict,
                   command: Optional[str] = None, keep_samples: bool = True) -> dict:
    """The whole results document (``runtime/bench_schema.json``)."""
    from nanoplus import __version__

    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generator": {"name": "nanoplus bench", "version": __version__, "command": command},
        "machine": machine,
        "run": {
            **settings,
            "rounds": record.rounds,
            "interrupted": record.interrupted,
            "duration_s": round(record.duration_s, 3),
            "interleaved": True,
            "timer": "time.perf_counter_ns",
            "conditions": record.conditions,
        },
        "results": [case_result(c, record, keep_samples) for c in cases],
    }
