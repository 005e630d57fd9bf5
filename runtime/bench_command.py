"""Measure latency per model, backend, thread count and input size: model-only and end to end.

Every combination is measured in one run, interleaved round-robin (A B A B ...), so that the
ratios between them hold on a noisy machine. Per combination: the first-run latency and the
warm-up mean; model-only latency (the engine on a ready blob); end-to-end latency from a decoded
BGR image to final boxes, split into pre-processing, inference and decode + NMS; min / p50 / p90 /
p99 / mean / std and throughput; the overhead ratio (pre + post) / model-only; the speed-up over a
baseline backend (torch by default). The machine, the software versions, the thread settings and
each model file's SHA-256 are recorded with the numbers (--json, schema in docs/bench.md).

examples:
  nanoplus bench model.onnx model.xml model.param --threads 1,2
  nanoplus bench model.onnx --backend onnxruntime,openvino --runs 300 --json here.json
  nanoplus bench best.ckpt model.onnx --baseline torch --image photo.jpg --markdown report.md
  nanoplus bench model.param --sustained 600 --window 30     # drift and CPU temperature over 10 min
  nanoplus bench --merge x86.json pi5.json phone.json --markdown devices.md
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Optional

from nanoplus.atomic import atomic_open, write_text_atomic
from nanoplus.errors import NanoplusError
from nanoplus.runtime.bench import BenchError

BACKENDS = ("auto", "onnxruntime", "openvino", "ncnn", "torch")
# Which file formats each backend reads, to pair models with a list of backends.
BACKEND_FORMATS = {"onnxruntime": ("onnx",), "openvino": ("onnx", "openvino"), "ncnn": ("ncnn",), "torch": ("torch",)}
BUSY_OTHER_CORES = 0.2  # other processes using more than this many cores on average: numbers are preliminary
BUSY_STEAL = 0.02


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="model files: .onnx, .xml (OpenVINO IR), .param (ncnn), .ckpt/.pth (torch checkpoint), "
                             "or a folder holding one")
    parser.add_argument("--backend", default="auto",
                        help="comma-separated backends (auto, onnxruntime, openvino, ncnn, torch); each model runs "
                             "on every listed backend that reads its format (default: auto, one per model)")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts, e.g. 1,2,4; 'default' leaves the engine's own (default: 1)")
    parser.add_argument("--imgsz", default=None,
                        help="comma-separated input sizes (416 or HEIGHTxWIDTH); default: each model's own size. "
                             "Sizes other than a model's own need a model that accepts them (ncnn, dynamic ONNX / OpenVINO)")
    parser.add_argument("--precision", choices=("f32", "native", "bf16"), default="f32",
                        help="f32 (default): every engine computes in float32 (OpenVINO would pick bf16 on CPUs that "
                             "have it); native: each engine's own default, recorded per result; bf16: OpenVINO and "
                             "torch (autocast) in bfloat16, for a like-for-like bf16 comparison")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations per combination (default 10, at least 1)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--runs", type=int, default=None, help="measured rounds per combination (default 100)")
    length.add_argument("--seconds", type=float, default=None, help="measure for this many seconds instead of --runs")
    length.add_argument("--sustained", type=float, default=None, metavar="SECONDS",
                        help="sustained run of this many seconds, reporting drift per time window and the CPU temperature")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="window length for --sustained (default: a tenth of the run, at least 1 s)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="MS",
                        help="pause before each case's turn (not timed) so the previous engine's spinning worker "
                             "threads go idle first; try 20 when multi-threaded engines are interleaved on few cores "
                             "(default 0)")
    parser.add_argument("--image", default=None,
                        help="image file the end-to-end timings start from (default: a synthetic 640x480 image; a real photo "
                             "gives realistic decode + NMS cost)")
    parser.add_argument("--score-thr", type=float, default=0.35, help="score threshold of the post-processing (default 0.35)")
    parser.add_argument("--iou-thr", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--max-det", type=int, default=100, help="maximum detections kept (default 100)")
    parser.add_argument("--baseline", default="torch",
                        help="backend the speed-up column compares against, same model, size and threads (default torch)")
    parser.add_argument("--label", default=None, help="name of this machine in tables (default: board or CPU model)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results document (schema: docs/bench.md)")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="write the report as Markdown")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="plot the latency distributions (needs matplotlib)")
    parser.add_argument("--no-samples", action="store_true", help="leave the raw per-iteration samples out of --json")
    parser.add_argument("--merge", nargs="+", default=[], metavar="FILE",
                        help="results files (from this command or any program writing the schema) shown in one table "
                             "with this run's results, if any")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def run(args) -> int:
    if not args.models and not args.merge:
        raise BenchError("nothing to do: give model files to measure, or --merge FILE ... to show saved results")
    documents = [(str(p), load_document(p)) for p in args.merge]
    if args.models:
        documents.insert(0, ("this run", measure_models(args)))
        if args.json:
            write_text_atomic(args.json, json.dumps(documents[0][1], indent=1, allow_nan=False) + "\n")
    elif args.json:
        raise BenchError("--json writes this run's measurements; with only --merge there are none (use --markdown)")

    print(render_text([d for _, d in documents], args.baseline))
    if args.markdown:
        write_text_atomic(args.markdown, render_markdown([d for _, d in documents], args.baseline))
    if args.plot:
        plot_distributions([d for _, d in documents], args.plot)
    for name, path in (("results", args.json), ("report", args.markdown), ("plot", args.plot)):
        if path:
            print(f"{name} written to {path}", file=sys.stderr)
    return 0


def parse_threads(text: str) -> list[Optional[int]]:
    values = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part in ("default", "auto", "0"):
            values.append(None)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise BenchError(f"--threads: '{part}' is not a thread count; write e.g. 1,2,4 or 'default'")
    return list(dict.fromkeys(values))


def parse_imgsz(text: str) -> tuple[int, int]:
    """'416' -> (416, 416); '320x416' -> (height 320, width 416)."""
    from nanoplus.runtime.detector import parse_input_size

    try:
        return parse_input_size(text.strip())
    except NanoplusError as e:
        raise BenchError(f"--imgsz: {e}") from None


def plan_cases(models: list[str], backends: list[str], threads: list[Optional[int]], sizes: list) -> list:
    """Every (model, backend, threads, size) combination to measure, in a stable order.

    With ``auto`` each model runs on the backend the Detector picks for its format; with a list of
    backends, each model runs on every listed backend that reads its format.
    """
    from nanoplus.runtime.bench import Case, model_format

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise BenchError(f"--backend: unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    cases, used = [], set()
    for model in dict.fromkeys(models):  # a file given twice is measured once
        path = Path(model)
        if path.is_dir():  # a folder holding one model file, as the Detector accepts
            from nanoplus.runtime.backends import resolve_model_path

            path = resolve_model_path(path)
        if not path.is_file():
            hint = " (an OpenVINO IR is given by its .xml, an ncnn model by its .param)" if path.suffix == ".bin" else ""
            raise BenchError(f"{model}: no such model file{hint}; check the path")
        fmt = model_format(path)
        chosen = [b for b in backends if b == "auto" or fmt in BACKEND_FORMATS[b]]
        if not chosen:
            readers = [b for b, formats in BACKEND_FORMATS.items() if fmt in formats] or ["none"]
            raise BenchError(f"{model}: none of --backend {','.join(backends)} reads {fmt} files "
                             f"(backends for this format: {', '.join(readers)})")
        used.update(chosen)
        for backend in chosen:
            for size in sizes:
                for count in threads:
                    cases.append(Case(model_path=str(path), backend=backend, threads=count, imgsz=size))
    unused = [b for b in backends if b not in used]
    if unused:
        formats = "; ".join(f"{b} reads {'/'.join(BACKEND_FORMATS[b])}" for b in unused)
        raise BenchError(f"--backend {','.join(unused)}: none of the models given has a format it reads ({formats})")
    return cases


def measure_models(args) -> dict:
    """Open every combination, measure them interleaved, return the results document."""
    from nanoplus.runtime import bench

    if args.warmup < 1:
        raise BenchError("--warmup must be at least 1 (the first call is reported apart as the first-run latency)")
    backends = [b.strip().lower() for b in args.backend.split(",") if b.strip()] or ["auto"]
    threads = parse_threads(args.threads)
    sizes = [parse_imgsz(s) for s in args.imgsz.split(",")] if args.imgsz else [None]
    cases = plan_cases(args.models, backends, threads, sizes)
    image, image_info = load_image(args.image)

    seconds = args.sustained if args.sustained is not None else args.seconds
    runs = None if seconds is not None else (args.runs if args.runs is not None else 100)
    window = None
    if args.sustained is not None:
        window = args.window if args.window is not None else max(1.0, args.sustained / 10)
    elif args.window is not None:
        raise BenchError("--window applies to --sustained runs only")

    for case in cases:
        bench.open_case(case, precision=args.precision, score_thr=args.score_thr, iou_thr=args.iou_thr,
                        max_det=args.max_det)
    machine = bench.machine_info(args.label)
    if args.settle < 0:
        raise BenchError(f"--settle must be 0 or more milliseconds, got {args.settle}")
    record = bench.measure(cases, image, warmup=args.warmup, runs=runs, seconds=seconds, window_s=window,
                           progress=not args.quiet, settle_s=args.settle / 1000.0)
    settings = {
        "warmup": args.warmup, "runs": runs, "seconds": args.seconds, "sustained_s": args.sustained,
        "settle_ms": args.settle,
        "precision_policy": args.precision,
        "preprocess_implementation": bench.preprocess_implementation(),
        "postprocess": {"score_thr": args.score_thr, "iou_thr": args.iou_thr, "max_det": args.max_det},
        "image": image_info,
    }
    command = "nanoplus bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    return bench.build_document(cases, record, machine, settings, command=command, keep_samples=not args.no_samples)


def load_image(path: Optional[str]):
    """The BGR image the end-to-end timings start from, and its description for the results."""
    import numpy as np

    from nanoplus.runtime.bench import file_sha256
    from nanoplus.runtime.images import read_image

    if path is None:
        image = synthetic_image()
        return image, {"source": "synthetic", "height": image.shape[0], "width": image.shape[1]}
    if not Path(path).is_file():
        raise BenchError(f"--image {path}: no such file")
    image = read_image(path)
    return np.ascontiguousarray(image), {"source": str(path), "sha256": file_sha256(path),
                                         "height": image.shape[0], "width": image.shape[1]}


def synthetic_image(height: int = 480, width: int = 640):
    """A fixed (h, w, 3) uint8 BGR scene: gradients, blobs and noise (same on every machine)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(20240601)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xs / width * 200, ys / height * 200, (xs + ys) / (width + height) * 255], axis=-1)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(20, 120)), int(rng.integers(20, 120)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(image, center, axes, float(rng.integers(0, 180)), 0, 360, color, -1)
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def schema_path() -> Path:
    return Path(__file__).with_name("bench_schema.json")


def load_document(path: str | os.PathLike) -> dict:
    """Read and check one results file; errors name the file and the field."""
    from nanoplus.runtime.bench import SCHEMA_NAME, SCHEMA_VERSION

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


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _fmt_ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _stage(result: dict, stage: str, key: str):
    stats = result.get("stages", {}).get(stage)
    return stats.get(key) if isinstance(stats, dict) else None


def _size(result: dict) -> str:
    hw = result.get("input_hw")
    return f"{hw[0]}x{hw[1]}" if hw else "-"


def build_rows(documents: list[dict], baseline: Optional[str]) -> tuple[list[dict], list[str]]:
    """Table rows (strings) for every result of every document, and the footnotes they need."""
    notes: list[str] = []
    rows = []
    labels = [d["machine"].get("label", "?") for d in documents]
    for d_index, doc in enumerate(documents):
        results = doc["results"]
        base = {}
        for r in results:
            if baseline and r.get("backend") == baseline:
                base.setdefault((r["model"].get("name"), _size(r), r.get("threads")), r)
        precisions: dict = {}
        for r in results:
            precisions.setdefault((r["model"].get("name"), _size(r)), set()).add(r.get("precision"))
        for r in results:
            key = (r["model"].get("name"), _size(r), r.get("threads"))
            mixed = len(precisions[key[:2]]) > 1
            speedup = "-"
            b = base.get(key)
            if b is r:
                speedup = "baseline"
            elif b is not None:
                m = _ratio(_stage(b, "model", "p50_ms"), _stage(r, "model", "p50_ms"))
                e = _ratio(_stage(b, "end_to_end", "p50_ms"), _stage(r, "end_to_end", "p50_ms"))
                speedup = f"{m}/{e}"
                if b.get("precision") != r.get("precision"):
                    speedup += " !"
                    note = (f"! precision differs from the {baseline} baseline ({r.get('precision')} vs "
                            f"{b.get('precision')}): not a like-for-like speed-up")
                    if note not in notes:
                        notes.append(note)
            overhead = r.get("overhead_ratio")
            n = _stage(r, "model", "n")
            p99 = _fmt_ms(_stage(r, "model", "p99_ms"))
            if isinstance(n, int) and n < 100:
                p99 += "*"
                note = "* p99 from fewer than 100 samples lies close to the maximum; use --runs 200 or more"
                if note not in notes:
                    notes.append(note)
            rows.append({
                "machine": labels[d_index],
                "model": str(r["model"].get("name")),
                "size": _size(r),
                "backend": str(r.get("backend")),
                "precision": str(r.get("precision")) + (" !" if mixed else ""),
                "threads": str(r.get("threads") or "default"),
                "first": _fmt_ms((r.get("warmup") or {}).get("first_ms")),
                "model p50": _fmt_ms(_stage(r, "model", "p50_ms")),
                "p90": _fmt_ms(_stage(r, "model", "p90_ms")),
                "p99": p99,
                "e2e p50": _fmt_ms(_stage(r, "end_to_end", "p50_ms")),
                "pre": _fmt_ms(_stage(r, "preprocess", "p50_ms")),
                "post": _fmt_ms(_stage(r, "postprocess", "p50_ms")),
                "overhead": f"{overhead * 100:.1f}%" if isinstance(overhead, (int, float)) else "-",
                "e2e fps": f"{1000 / _stage(r, 'end_to_end', 'mean_ms'):.1f}" if _stage(r, "end_to_end", "mean_ms") else "-",
                "speed-up": speedup,
            })
            if mixed:
                note = (f"! {r['model'].get('name')} {_size(r)} ran in several precisions "
                        f"({', '.join(sorted(map(str, precisions[key[:2]])))}): compare rows of one precision only")
                if note not in notes:
                    notes.append(note)
        conditions = (doc.get("run") or {}).get("conditions") or {}
        other, steal = conditions.get("other_cpu_cores"), conditions.get("steal_fraction")
        if (other or 0) > BUSY_OTHER_CORES or (steal or 0) > BUSY_STEAL:
            notes.append(f"!! {labels[d_index]}: other processes used {other} CPU cores on average during the run "
                         f"(steal {steal}): the machine was busy, these numbers are preliminary")
        image = (doc.get("run") or {}).get("image") or {}
        if image.get("source") == "synthetic":
            counts = sorted({r.get("detections") for r in results if r.get("detections") is not None})
            notes.append(f"{labels[d_index]}: end to end on a synthetic image ({counts or '?'} detections): decode + NMS "
                         "cost grows with the candidates; --image with a real photo is closer to real use")
    if baseline and any(r["speed-up"] != "-" for r in rows):
        notes.insert(0, f"speed-up: {baseline} p50 / this p50, model-only/end-to-end, same machine, model, size and threads")
    return rows, notes


def _ratio(a, b) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


COLUMNS = ["model", "size", "backend", "precision", "threads", "first", "model p50", "p90", "p99", "e2e p50",
           "pre", "post", "overhead", "e2e fps", "speed-up"]


def _columns(documents: list[dict], rows: list[dict]) -> list[str]:
    """COLUMNS, with a machine column for several documents and no speed-up column without a baseline."""
    columns = (["machine"] if len(documents) > 1 else []) + COLUMNS
    if all(r["speed-up"] == "-" for r in rows):
        columns.remove("speed-up")
    return columns


def render_text(documents: list[dict], baseline: Optional[str] = "torch") -> str:
    """A fixed-width table for the terminal, with the machines above it and the footnotes below."""
    rows, notes = build_rows(documents, baseline)
    columns = _columns(documents, rows)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in columns}
    left = {"machine", "model", "backend", "precision"}

    def line(values):
        return "  ".join(v.ljust(widths[c]) if c in left else v.rjust(widths[c]) for c, v in zip(columns, values))

    out = [machine_line(d) for d in documents]
    out.append("latency in ms (p50 = median); model = engine on a ready blob; e2e = pre + inference + post; "
               "overhead = (pre + post) / model p50")
    out.append(line(columns))
    out.append("  ".join("-" * widths[c] for c in columns))
    out.extend(line([r[c] for c in columns]) for r in rows)
    out.extend(notes)
    for doc in documents:
        out.extend(sustained_lines(doc))
    return "\n".join(out)


def machine_line(doc: dict) -> str:
    m = doc["machine"]
    cpu = m.get("cpu") or {}
    os_info = m.get("os") or {}
    software = m.get("software") or {}
    run = doc.get("run") or {}
    cond = run.get("conditions") or {}
    parts = [
        f"{m.get('label')}: {cpu.get('model', '?')}, {cpu.get('architecture', '?')}, "
        f"{cpu.get('usable_cores') or cpu.get('logical_cores', '?')} cores"
        + (" (virtual machine)" if cpu.get("virtualized") else ""),
        f"{os_info.get('distribution') or os_info.get('system', '')}".strip(),
        ", ".join(f"{k} {v}" for k, v in software.items()),
    ]
    if run.get("rounds") is not None:
        parts.append(f"{run.get('rounds')} interleaved rounds, warm-up {run.get('warmup')}")
    if cond.get("other_cpu_cores") is not None:
        parts.append(f"other load {cond['other_cpu_cores']} cores")
    if cond.get("cpu_temp_start_c") is not None:
        parts.append(f"CPU {cond['cpu_temp_start_c']:.0f}->{cond.get('cpu_temp_end_c', 0):.0f} C")
    return " | ".join(p for p in parts if p)


def sustained_lines(doc: dict) -> list[str]:
    out = []
    for r in doc["results"]:
        sustained = r.get("sustained")
        if not sustained:
            continue
        d = sustained.get("drift") or {}
        out.append(f"sustained {r['model'].get('name')} {_size(r)} {r.get('backend')} t{r.get('threads') or 'default'}: "
                   f"drift model {_pct(d.get('model'))}, end-to-end {_pct(d.get('end_to_end'))} over "
                   f"{sustained.get('duration_s')} s")
        for w in sustained.get("windows", []):
            temp = w.get("cpu_temp_c")
            span = f"{w['start_s']:g}-{w['end_s']:g} s"
            out.append(f"  {span:>15}  n={w['n']:<5} model p50 {_fmt_ms(w['model_p50_ms'])}"
                       f"  e2e p50 {_fmt_ms(w.get('end_to_end_p50_ms'))}  CPU {'-' if temp is None else f'{temp:.1f} C'}")
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def render_markdown(documents: list[dict], baseline: Optional[str] = "torch") -> str:
    """The report: machines, table, footnotes, warm-up and sustained details, and the commands."""
    rows, notes = build_rows(documents, baseline)
    columns = _columns(documents, rows)
    out = ["# nanoplus bench", ""]
    for doc in documents:
        m = doc["machine"]
        cpu = m.get("cpu") or {}
        run = doc.get("run") or {}
        out.append(f"## {m.get('label')}")
        out.append("")
        out.append(f"- CPU: {cpu.get('model')} ({cpu.get('architecture')}), {cpu.get('logical_cores')} logical / "
                   f"{cpu.get('physical_cores')} physical cores, {cpu.get('usable_cores')} usable"
                   + (", virtual machine" if cpu.get("virtualized") else "")
                   + (f", flags {' '.join(cpu.get('flags') or [])}" if cpu.get("flags") else ""))
        if m.get("device_model"):
            out.append(f"- Device: {m['device_model']}")
        os_info = m.get("os") or {}
        out.append(f"- OS: {os_info.get('distribution') or ''} ({os_info.get('system')} {os_info.get('release')})"
                   + (f", Python {m['python']}" if m.get("python") else ""))
        out.append("- Software: " + ", ".join(f"{k} {v}" for k, v in (m.get("software") or {}).items()))
        if m.get("env"):
            out.append("- Environment: " + ", ".join(f"`{k}={v}`" for k, v in m["env"].items()))
        if run:
            image = run.get("image") or {}
            settle = f", {run['settle_ms']:g} ms pause before each case" if run.get("settle_ms") else ""
            out.append(f"- Run: {run.get('rounds')} interleaved rounds{settle} after {run.get('warmup')} warm-up iterations, "
                       f"{run.get('duration_s')} s measured, precision policy {run.get('precision_policy')}, "
                       f"pre-processing {run.get('preprocess_implementation') or 'not recorded'}, image "
                       f"{image.get('source')} ({image.get('width')}x{image.get('height')}), post-processing "
                       + ", ".join(f"{k} {v}" for k, v in (run.get("postprocess") or {}).items()))
            cond = run.get("conditions") or {}
            temps = (f"{cond.get('cpu_temp_start_c')} -> {cond.get('cpu_temp_end_c')} C"
                     if cond.get("cpu_temp_start_c") is not None else "not exposed by this system")
            out.append(f"- Conditions: load average {cond.get('loadavg_before')} -> {cond.get('loadavg_after')}, "
                       f"other processes {cond.get('other_cpu_cores')} cores, steal {cond.get('steal_fraction')}, "
                       f"CPU temperature {temps}")
        if (doc.get("generator") or {}).get("command"):
            out.append(f"- Command: `{doc['generator']['command']}`")
        out.append(f"- Created: {doc.get('created_utc')} by {(doc.get('generator') or {}).get('name')} "
                   f"{(doc.get('generator') or {}).get('version')}")
        out.append("")
    out.append("## Latency (ms)")
    out.append("")
    out.append("model = the engine alone on a ready input blob; e2e = pre-processing + inference + decode/NMS from a "
               "decoded BGR image to final boxes; p50 = median; overhead = (pre + post) / model p50; first = the "
               "very first end-to-end call.")
    out.append("")
    out.append("| " + " | ".join(columns) + " |")
    out.append("|" + "|".join("---" if c in ("machine", "model", "backend", "precision") else "---:" for c in columns) + "|")
    for r in rows:
        out.append("| " + " | ".join(r[c] for c in columns) + " |")
    out.append("")
    # footnote markers (!, !!, *) in code spans, so that Markdown shows them instead of nesting a list
    out.extend("- " + re.sub(r"^([!*]+) ", r"`\1` ", n) for n in notes)
    out.append("")
    out.append("## Warm-up and model files")
    out.append("")
    out.append("| machine | model | backend | threads | load ms | first ms | first inference ms | warm-up mean ms | file | sha256 |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for doc in documents:
        for r in doc["results"]:
            warm = r.get("warmup") or {}
            files = r["model"].get("files") or [{}]
            out.append(f"| {doc['machine'].get('label')} | {r['model'].get('name')} {_size(r)} | {r.get('backend')} | "
                       f"{r.get('threads') or 'default'} | {_fmt_ms(r.get('load_ms'))} | {_fmt_ms(warm.get('first_ms'))} | "
                       f"{_fmt_ms(warm.get('first_inference_ms'))} | {_fmt_ms(warm.get('mean_ms'))} | "
                       f"{Path(str(files[0].get('path', '-'))).name} | {str(files[0].get('sha256', '-'))[:16]} |")
    sustained = [line for doc in documents for line in sustained_lines(doc)]
    if sustained:
        out += ["", "## Sustained", "", "```", *sustained, "```"]
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------
def plot_distributions(documents: list[dict], path: str) -> None:
    """Box plots (whiskers at p1 / p99) of model-only and end-to-end samples per result, one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib") from None
    entries = []
    for doc in documents:
        for r in doc["results"]:
            samples = r.get("samples_ms") or {}
            if samples.get("model"):
                label = f"{r['model'].get('name')} {_size(r)} {r.get('backend')} {r.get('precision')} t{r.get('threads') or 'd'}"
                if len(documents) > 1:
                    label = f"{doc['machine'].get('label')}: {label}"
                entries.append((label, samples.get("model"), samples.get("end_to_end")))
    if not entries:
        raise BenchError("--plot: no result carries raw samples (run without --no-samples)")
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(entries) + 1.6), sharey=True, squeeze=False)
    for ax, index, title in ((axes[0][0], 1, "model only"), (axes[0][1], 2, "end to end")):
        data = [e[index] or [float("nan")] for e in entries]
        style = {"whis": (1, 99), "showfliers": True, "flierprops": {"markersize": 2}}
        try:
            ax.boxplot(data, orientation="horizontal", **style)  # matplotlib >= 3.10
        except TypeError:
            ax.boxplot(data, vert=False, **style)
        values = [v for e in entries for v in (e[index] or [])]
        if values and min(values) > 0 and max(values) / min(values) > 20:  # fast and slow cases in one plot
            ax.set_xscale("log")
        ax.set_title(f"{title} latency (ms), whiskers p1-p99")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(1, len(entries) + 1), [e[0] for e in entries], fontsize=8)
    axes[0][0].invert_yaxis()  # first result on top, as in the table
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
