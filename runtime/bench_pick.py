"""Which model file to ship: the mAP-vs-latency Pareto front and the fastest file within an mAP loss.

Pure functions on plain numbers, shared by ``nanoplus bench --data`` (results document, table,
Markdown report, plot) and ``bench/int8_table.py``. Latency is the model-only p50 in ms (lower is
better), accuracy the COCO mAP (higher is better).
"""
from __future__ import annotations

from typing import Optional, Sequence

DEFAULT_MAX_MAP_LOSS = 0.01  # nanoplus bench --max-map-loss


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """points: (latency_ms, mAP) per row -> whether each row is on the front.

    A row is on the front when no other row is at least as fast and at least as accurate and
    strictly better in one of the two. Equal points do not dominate each other (both stay on).
    A point with a missing (None / NaN) value is never on the front and dominates nothing.
    """
    usable = [_usable(t, m) for t, m in points]
    front = []
    for i, (t, m) in enumerate(points):
        if not usable[i]:
            front.append(False)
            continue
        dominated = any(usable[j] and t2 <= t and m2 >= m and (t2 < t or m2 > m)
                        for j, (t2, m2) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def fastest_within_loss(points: Sequence[tuple[float, float]], max_map_loss: float) -> Optional[int]:
    """Index of the fastest row whose mAP is at least (best mAP - max_map_loss); None without usable rows.

    Ties in latency go to the more accurate row, then to the earlier one.
    """
    if max_map_loss < 0:
        raise ValueError(f"max_map_loss must be 0 or more, got {max_map_loss}")
    usable = [i for i, (t, m) in enumerate(points) if _usable(t, m)]
    if not usable:
        return None
    best = max(points[i][1] for i in usable)
    eligible = [i for i in usable if points[i][1] >= best - max_map_loss - 1e-12]
    return min(eligible, key=lambda i: (points[i][0], -points[i][1], i))


def _usable(latency, accuracy) -> bool:
    return (isinstance(latency, (int, float)) and isinstance(accuracy, (int, float))
            and latency == latency and accuracy == accuracy)  # NaN != NaN


def result_points(results: Sequence[dict]) -> list[tuple[Optional[float], Optional[float]]]:
    """(model p50 ms, mAP) of each result of a results document (None where not measured / evaluated)."""
    points = []
    for r in results:
        model = (r.get("stages") or {}).get("model") or {}
        points.append((model.get("p50_ms"), (r.get("accuracy") or {}).get("mAP")))
    return points


def pick_record(results: Sequence[dict], max_map_loss: float) -> Optional[dict]:
    """The "pick" part of a results document: the front and the fastest result within the loss.

    None when no result has an mAP (a run without --data). ``fastest`` names the result by its index
    in ``results``, its file, backend, threads and input size, with its p50 and mAP.
    """
    points = result_points(results)
    choice = fastest_within_loss(points, max_map_loss)
    if choice is None:
        return None
    best = max(m for t, m in points if _usable(t, m))
    r = results[choice]
    return {
        "max_map_loss": max_map_loss,
        "best_mAP": best,
        "front": [i for i, on in enumerate(pareto_front(points)) if on],
        "fastest": {
            "result": choice,
            "file": result_file_label(r),
            "backend": r.get("backend"),
            "threads": r.get("threads"),
            "input_hw": r.get("input_hw"),
            "model_p50_ms": points[choice][0],
            "mAP": points[choice][1],
        },
    }


def result_file_label(result: dict) -> str:
    """The name a results row goes by: its file label, else the file's name, else the model name
    (documents written before file labels were recorded)."""
    model = result.get("model") or {}
    if model.get("file"):
        return str(model["file"])
    if model.get("path"):
        return model["path"].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return str(model.get("name"))


def pick_sentence(pick: dict) -> str:
    """One line: which file is fastest within the loss, at which threads and size."""
    f = pick["fastest"]
    hw = f.get("input_hw")
    size = f"{hw[0]}x{hw[1]}" if hw else "its own size"
    return (f"fastest within {pick['max_map_loss']:g} mAP of the best ({pick['best_mAP']:.4f}): {f['file']} on "
            f"{f['backend']}, {f.get('threads') or 'default'} thread(s), {size}: model p50 "
            f"{f['model_p50_ms']:.2f} ms, mAP {f['mAP']:.4f}")
