"""The results document of a benchmark run (``runtime/bench_schema.json``, docs/bench.md): the
statistics of the samples, one entry per case, the model files with their SHA-256, and reading a
saved document back (``--merge``).

Statistics are computed on the per-iteration samples (milliseconds): min, p50, p90, p99 (linear
interpolation between order statistics, numpy's default), mean, standard deviation (n - 1), max;
throughput is 1000 / mean (one stream, one image at a time).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from nanoplus.runtime.bench import BenchError

if TYPE_CHECKING:
    from nanoplus.runtime.bench import Case, RunRecord

SCHEMA_NAME = "nanoplus-bench"

SCHEMA_VERSION = 1


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


def _count(detections) -> Optional[int]:
    boxes = getattr(detections, "boxes", None)
    return int(len(boxes)) if boxes is not None else None


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


def case_result(case: Case, record: RunRecord, keep_samples: bool = True, file_label: Optional[str] = None,
                accuracy: Optional[dict] = None) -> dict:
    """One entry of the results list of the schema; ``accuracy``: this file's mAP record (--data)."""
    det = case.detector
    meta = getattr(det, "meta", None)
    backend = getattr(det, "backend", None)
    stages = {name: summarize(values) for name, values in case.samples_ms.items() if values}
    warm = case.warmup_ms
    result = {
        "model": model_record(case.model_path, meta, file_label, known_precision=getattr(det, "has_metadata", True)),
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
    if accuracy is not None:
        result["accuracy"] = dict(accuracy)
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


def model_record(model_path: str, meta=None, file_label: Optional[str] = None, known_precision: bool = True) -> dict:
    """Name, file label, format, files with SHA-256 and sizes, and what the metadata says about the model.

    known_precision: False for a file without nanoplus metadata (its precision is then recorded as None).
    """
    path = Path(model_path)
    files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in model_files(path)]
    record = {
        "name": (getattr(meta, "model_name", "") or path.stem) if meta is not None else path.stem,
        "file": file_label or path.name,
        "path": str(path),
        "format": model_format(path),
        "files": files,
    }
    if meta is not None:
        record["num_classes"] = int(meta.num_classes)
        record["file_precision"] = getattr(meta, "precision", None) if known_precision else None
    return record


def file_labels(paths: Sequence[str]) -> dict[str, str]:
    """path -> the shortest tail of it (file name, then parent/file name, ...) that no other path shares.

    ``a/fp32/m.xml`` and ``a/int8/m.xml`` -> ``fp32/m.xml`` and ``int8/m.xml``; ``m.onnx`` and
    ``m.xml`` keep their names. The same path given twice is one file with one label.
    """
    parts = {p: Path(p).parts or (str(p),) for p in dict.fromkeys(str(p) for p in paths)}
    labels = {}
    for path, own in parts.items():
        for count in range(1, len(own) + 1):
            tail = own[-count:]
            if not any(other[-count:] == tail for p, other in parts.items() if p != path):
                break
        labels[path] = "/".join(tail)
    return labels


def model_format(path: Path) -> str:
    from nanoplus.runtime.backends import MODEL_FORMATS

    return MODEL_FORMATS.get(path.suffix.lower(), path.suffix.lower().lstrip(".") or "unknown")


def model_files(path: Path) -> list[Path]:
    """The model's files that exist (graph, weights, ONNX external data)."""
    from nanoplus.runtime import backends

    return [p for p in backends.model_files(path) if p.is_file()]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def build_document(cases: list[Case], record: RunRecord, machine: dict, settings: dict,
                   command: Optional[str] = None, keep_samples: bool = True, accuracy: Optional[dict] = None,
                   max_map_loss: Optional[float] = None) -> dict:
    """The whole results document (``runtime/bench_schema.json``).

    accuracy: ``bench_accuracy.group_key(case)`` -> accuracy record (--data); with it the document
    also gets "pick" (Pareto front and the fastest result within ``max_map_loss``).
    """
    from nanoplus import __version__
    from nanoplus.runtime.bench_accuracy import group_key
    from nanoplus.runtime.bench_pick import pick_record

    labels = file_labels([c.model_path for c in cases])
    results = [case_result(c, record, keep_samples, labels[str(c.model_path)],
                           (accuracy or {}).get(group_key(c))) for c in cases]
    document = {
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
        "results": results,
    }
    pick = pick_record(results, max_map_loss) if accuracy and max_map_loss is not None else None
    if pick is not None:
        document["pick"] = pick
    return document


def schema_path() -> Path:
    return Path(__file__).with_name("bench_schema.json")


def load_document(path: str | os.PathLike) -> dict:
    """Read and check one results file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"--merge {path}: no such file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"--merge {path}: not a JSON file ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_NAME:
        raise BenchError(f"--merge {path}: field 'schema' must be '{SCHEMA_NAME}'; this is not a nanoplus bench results file")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BenchError(f"--merge {path}: field 'schema_version' is {version!r}; this nanoplus reads versions "
                         f"up to {SCHEMA_VERSION} (upgrade nanoplus)")
    problem = validation_problem(doc)
    if problem:
        raise BenchError(f"--merge {path}: {problem}; see docs/bench.md for the fields")
    return doc


def validation_problem(doc: dict) -> Optional[str]:
    """The first way ``doc`` breaks the schema, or None.

    Uses the ``jsonschema`` package when installed; otherwise checks the fields this command reads.
    """
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None and schema_path().is_file():
        schema = json.loads(schema_path().read_text(encoding="utf-8"))
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        return f"field '{where}': {error.message}"
    if not isinstance(doc.get("machine"), dict) or not isinstance(doc["machine"].get("label"), str):
        return "field 'machine/label' is missing"
    if not isinstance(doc.get("results"), list):
        return "field 'results' must be a list"
    for i, result in enumerate(doc["results"]):
        for key in ("model", "backend", "precision", "stages"):
            if key not in result:
                return f"field 'results/{i}/{key}' is missing"
        if not isinstance(result["stages"], dict) or "model" not in result["stages"]:
            return f"field 'results/{i}/stages/model' is missing"
        for stage, stats in result["stages"].items():
            for key in ("n", "p50_ms", "mean_ms"):
                if not isinstance(stats, dict) or not isinstance(stats.get(key), (int, float)):
                    return f"field 'results/{i}/stages/{stage}/{key}' is missing or not a number"
    return None
