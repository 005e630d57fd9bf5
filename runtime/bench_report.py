"""The benchmark report: a terminal table, a Markdown report and box plots, from one or more
results documents (this run's and ``--merge``d files), with the footnotes a reader needs (mixed
precisions, a busy machine, a synthetic image)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from nanoplus.atomic import atomic_open
from nanoplus.runtime.bench import BenchError
from nanoplus.runtime.bench_pick import pareto_front, pick_sentence, result_file_label, result_points

BUSY_OTHER_CORES = 0.2  # other processes using more than this many cores on average: numbers are preliminary

BUSY_STEAL = 0.02


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
        front = pareto_front(result_points(results))
        base = {}
        for r in results:
            if baseline and r.get("backend") == baseline:
                base.setdefault((r["model"].get("name"), _size(r), r.get("threads")), r)
        precisions: dict = {}
        for r in results:
            precisions.setdefault((result_file_label(r), _size(r)), set()).add(r.get("precision"))
        for r, on_front in zip(results, front):
            key = (r["model"].get("name"), _size(r), r.get("threads"))
            mixed = len(precisions[(result_file_label(r), _size(r))]) > 1
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
                "file": result_file_label(r),
                "file precision": str(r["model"].get("file_precision") or "-"),
                "MB": _megabytes(r),
                "mAP": _fmt_map((r.get("accuracy") or {}).get("mAP")),
                "AP50": _fmt_map((r.get("accuracy") or {}).get("AP50")),
                "front": "*" if on_front else "",
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
                note = (f"! {result_file_label(r)} {_size(r)} ran in several precisions "
                        f"({', '.join(sorted(map(str, precisions[(result_file_label(r), _size(r))])))}): "
                        "compare rows of one precision only")
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
        if doc.get("pick"):
            notes.append(f"{labels[d_index]}: {pick_sentence(doc['pick'])}")
    if any(r["mAP"] != "-" for r in rows):
        notes.insert(0, "mAP / AP50: COCO box mAP of the file on the --data images at nanoplus eval's thresholds; "
                        "front *: on the Pareto front of mAP vs model p50 (no other row of the machine is as fast "
                        "and as accurate)")
    if baseline and any(r["speed-up"] != "-" for r in rows):
        notes.insert(0, f"speed-up: {baseline} p50 / this p50, model-only/end-to-end, same machine, model, size and threads")
    return rows, notes


def _megabytes(result: dict) -> str:
    sizes = [f.get("bytes") for f in result["model"].get("files") or []]
    if not sizes or not all(isinstance(b, int) for b in sizes):
        return "-"
    return f"{sum(sizes) / 1e6:.2f}"


def _fmt_map(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ratio(a, b) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


COLUMNS = ["file", "file precision", "MB", "size", "backend", "precision", "threads", "first", "model p50", "p90",
           "p99", "e2e p50", "pre", "post", "overhead", "e2e fps", "mAP", "AP50", "front", "speed-up"]

ACCURACY_COLUMNS = ("mAP", "AP50", "front")

LEFT_ALIGNED = {"machine", "file", "file precision", "backend", "precision", "front"}


def _columns(documents: list[dict], rows: list[dict]) -> list[str]:
    """COLUMNS, with a machine column for several documents, no speed-up column without a baseline
    and no accuracy columns when no row has an mAP."""
    columns = (["machine"] if len(documents) > 1 else []) + COLUMNS
    if all(r["speed-up"] == "-" for r in rows):
        columns.remove("speed-up")
    if all(r["mAP"] == "-" for r in rows):
        columns = [c for c in columns if c not in ACCURACY_COLUMNS]
    return columns


def render_text(documents: list[dict], baseline: Optional[str] = "torch") -> str:
    """A fixed-width table for the terminal, with the machines above it and the footnotes below."""
    rows, notes = build_rows(documents, baseline)
    columns = _columns(documents, rows)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in columns}
    def line(values):
        return "  ".join(v.ljust(widths[c]) if c in LEFT_ALIGNED else v.rjust(widths[c]) for c, v in zip(columns, values))

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
        f"EMULATED ({m['emulation']}): these timings are the emulator's, not this architecture's"
        if m.get("emulation") else "",
        # the label is the CPU's name unless a board or --label named the machine: say it once
        (f"{m.get('label')}: " if m.get("label") != cpu.get("model") else "")
        + f"{cpu.get('model', '?')}, {cpu.get('architecture', '?')}, "
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
        out.append(f"sustained {result_file_label(r)} {_size(r)} {r.get('backend')} t{r.get('threads') or 'default'}: "
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
        if m.get("emulation"):
            out.append(f"- **EMULATED**: {m['emulation']}. The timings are the emulator's, not this architecture's.")
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
                       f"pre-processing {run.get('preprocess_implementation') or 'not recorded'}, decode/NMS "
                       f"{run.get('postprocess_implementation') or 'not recorded'}, image "
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
    out.append("|" + "|".join("---" if c in LEFT_ALIGNED else "---:" for c in columns) + "|")
    for r in rows:
        out.append("| " + " | ".join(r[c] for c in columns) + " |")
    out.append("")
    # footnote markers (!, !!, *) in code spans, so that Markdown shows them instead of nesting a list
    out.extend("- " + re.sub(r"^([!*]+) ", r"`\1` ", n) for n in notes)
    out.append("")
    out.append("## Warm-up and model files")
    out.append("")
    out.append("| machine | file | backend | threads | load ms | first ms | first inference ms | warm-up mean ms | file | sha256 |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    for doc in documents:
        for r in doc["results"]:
            warm = r.get("warmup") or {}
            files = r["model"].get("files") or [{}]
            out.append(f"| {doc['machine'].get('label')} | {result_file_label(r)} {_size(r)} | {r.get('backend')} | "
                       f"{r.get('threads') or 'default'} | {_fmt_ms(r.get('load_ms'))} | {_fmt_ms(warm.get('first_ms'))} | "
                       f"{_fmt_ms(warm.get('first_inference_ms'))} | {_fmt_ms(warm.get('mean_ms'))} | "
                       f"{Path(str(files[0].get('path', '-'))).name} | {str(files[0].get('sha256', '-'))[:16]} |")
    sustained = [line for doc in documents for line in sustained_lines(doc)]
    if sustained:
        out += ["", "## Sustained", "", "```", *sustained, "```"]
    out.append("")
    return "\n".join(out)


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
                label = f"{result_file_label(r)} {_size(r)} {r.get('backend')} {r.get('precision')} t{r.get('threads') or 'd'}"
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


def pareto_points(documents: list[dict]) -> list[tuple]:
    """(label, model p50 ms, mAP, on its machine's front, machine) of every result that has an mAP."""
    points = []
    for doc in documents:
        results = doc["results"]
        latency_map = result_points(results)
        for r, (t, m), on in zip(results, latency_map, pareto_front(latency_map)):
            if t is None or m is None:
                continue
            label = f"{result_file_label(r)} {r.get('backend')} t{r.get('threads') or 'd'} {_size(r)}"
            if len(documents) > 1:
                label = f"{doc['machine'].get('label')}: {label}"
            points.append((label, t, m, on, doc["machine"].get("label")))
    return points


def front_lines(points: list[tuple]) -> dict:
    """{group: [(latency, mAP), ...] by latency} of the points on a front, one line per group (the
    optional 5th element of a point, e.g. its machine: each machine has its own front)."""
    lines: dict = {}
    for point in points:
        if point[3]:
            lines.setdefault(point[4] if len(point) > 4 else None, []).append((point[1], point[2]))
    return {group: sorted(line) for group, line in lines.items()}


def plot_pareto(points: list[tuple], path: str, xlabel: str = "model p50 latency (ms)") -> None:
    """mAP against latency, one dot per (label, latency, mAP, on_front[, group]), each group's front
    (a machine's) joined by its own line; one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib") from None
    if not points:
        raise BenchError("the mAP-vs-latency plot needs results with an mAP (run with --data)")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lines = front_lines(points)
    colors = dict(zip(lines, ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"] * 4))
    for point in points:
        label, latency, accuracy, on_front = point[:4]
        color = colors.get(point[4] if len(point) > 4 else None, "tab:red") if on_front else "tab:gray"
        ax.scatter(latency, accuracy, color=color, zorder=3)
        ax.annotate(label, (latency, accuracy), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for group, front in lines.items():
        name = "Pareto front" if group is None or len(lines) == 1 else f"Pareto front, {group}"
        ax.plot([t for t, _ in front], [m for _, m in front], color=colors[group], lw=1, label=name)
    ax.margins(x=0.3, y=0.1)  # room for the labels right of the dots
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def pareto_plot_path(plot_path: str) -> str:
    """Where --plot FILE.png puts the mAP-vs-latency plot: FILE-pareto.png beside it."""
    path = Path(plot_path)
    return str(path.with_name(f"{path.stem}-pareto{path.suffix or '.png'}"))
