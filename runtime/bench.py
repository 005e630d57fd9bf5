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
the others.

A sustained run (``window_s``) also cuts the run into time windows and reports each window's
medians and the CPU temperature, to show thermal throttling (Raspberry Pi, phones).

Only numpy, OpenCV and the engine under test are imported; torch only for a torch checkpoint.
The machine is described by ``bench_machine``, the results document built by ``bench_results``
(``runtime/bench_schema.json``, docs/bench.md) and shown by ``bench_report``.
"""
from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from nanoplus.errors import NanoplusError
from nanoplus.runtime.bench_machine import cpu_temperature, cpu_times, loadavg, run_conditions

if TYPE_CHECKING:
    import numpy as np

STAGES = ("model", "preprocess", "inference", "postprocess", "end_to_end")


class BenchError(NanoplusError):
    """A benchmark that cannot run as asked: the message names the model file, the option and the fix."""


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
    input_size: Optional[tuple[int, int]]  # (height, width) asked for, None: the model's own
    detector: object = None
    load_ms: Optional[float] = None
    warmup_ms: list[float] = field(default_factory=list)
    first_inference_ms: Optional[float] = None
    samples_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    last_detections: object = None  # what the last end-to-end iteration returned
    blob: object = None
    default_threads: Optional[int] = None  # torch's own thread count, for threads=None (read by open_case)

    @property
    def backend_name(self) -> str:
        return getattr(getattr(self.detector, "backend", None), "name", None) or self.backend

    @property
    def input_hw(self) -> Optional[list[int]]:
        meta = getattr(self.detector, "meta", None)
        if meta is not None:
            return [int(v) for v in meta.input_hw]
        return list(self.input_size) if self.input_size else None


def apply_threads(case: Case) -> None:
    """Give OpenCV (pre-processing) and, for torch, torch's intra-op pool the case's thread count.

    Both are process-wide settings; they are set before every iteration because interleaved cases
    may ask for different counts. ONNX Runtime, OpenVINO and ncnn keep theirs per session / net.
    """
    import cv2

    cv2.setNumThreads(int(case.threads) if case.threads else -1)  # -1: OpenCV's default
    if case.backend_name == "torch" and "torch" in sys.modules:
        torch = sys.modules["torch"]
        wanted = int(case.threads) if case.threads else case.default_threads
        if wanted and torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)


def _ms(ns: int) -> float:
    return ns / 1e6


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


def postprocess_implementation() -> str:
    """What ``Detector.postprocess`` decodes with here (compiled or numpy), for the run record."""
    from nanoplus.runtime.postprocess import implementation

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
    from nanoplus.runtime.backends import choose_backend, import_engine
    from nanoplus.runtime.detector import Detector

    path = Path(case.model_path)
    if not path.is_file():
        raise BenchError(f"{path}: no such model file; check the path")
    if precision not in ENGINE_PRECISION:
        raise BenchError(f"--precision must be one of {', '.join(ENGINE_PRECISION)}, got '{precision}'")
    if precision == "bf16" and choose_backend(path, case.backend) not in ("openvino", "torch"):
        raise BenchError(f"{path}: --precision bf16 runs on OpenVINO and torch only ({choose_backend(path, case.backend)} "
                         "has no bf16 compute on CPUs); bench the other engines with --precision f32")
    torch_threads_before = None
    if choose_backend(path, case.backend) == "torch":
        torch = import_engine("torch", path)  # not installed: a message naming the extra to install
        torch_threads_before = torch.get_num_threads()
    t0 = time.perf_counter_ns()
    try:
        case.detector = Detector(
            str(path), backend=case.backend, threads=case.threads, score_thr=score_thr, iou_thr=iou_thr,
            max_det=max_det, precision=ENGINE_PRECISION[precision],
            input_size=list(case.input_size) if case.input_size else None,
        )
    except NanoplusError as e:
        if case.input_size:  # the Detector names its own flag; say which bench option asked for the size
            raise BenchError(f"{e} (asked with --input-size {case.input_size[0]}x{case.input_size[1]}: leave it out to "
                             "run the model at its own size, or export the model at that size)") from None
        raise
    except Exception as e:  # an engine's own exception type: say which file and backend, not where
        raise BenchError(f"{path}: the {case.backend} backend cannot open this model ({type(e).__name__}: {e}); "
                         "check that the file is a complete NanoDet-Plus model for that engine") from None
    case.load_ms = _ms(time.perf_counter_ns() - t0)
    if torch_threads_before is not None:
        # opening set torch's process-wide pool to this case's count; put it back, so the next case
        # reads torch's own default (apply_threads sets each case's count before its iterations)
        case.default_threads = torch_threads_before
        torch.set_num_threads(torch_threads_before)
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
    cpu_before = cpu_times()
    load_before = loadavg()
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
    record.conditions = run_conditions(cpu_before, cpu_times(), load_before, loadavg(), record.temperatures)
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
