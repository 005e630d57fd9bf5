"""A run folder's logs: ``steps.csv`` (one row per optimiser step), ``results.csv`` /
``results.json`` (one row per epoch) and ``curves.png``. Rank 0 alone keeps one."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional, Sequence

from nanoplus.atomic import write_text_atomic

LOSS_KEYS = ("loss", "loss_qfl", "loss_bbox", "loss_dfl", "loss_aux_qfl", "loss_aux_bbox", "loss_aux_dfl")
STEP_FIELDS = ("step", "epoch", "lr") + LOSS_KEYS + ("num_pos", "grad_norm")


class RunLog:
    """Step rows in memory and on disk; per-epoch results and curves rewritten after each epoch.

    resume_step: on a resumed run, the global step it continues from: the step rows of completed
    epochs are kept, those of the interrupted epoch (which is run again) dropped.
    """

    def __init__(self, out_dir: Path, resume_step: Optional[int] = None):
        self.out_dir = Path(out_dir)
        self.steps_path = self.out_dir / "steps.csv"
        self.step_rows: list[dict] = []
        if resume_step is not None:
            self.step_rows = [r for r in read_csv_rows(self.steps_path)
                              if isinstance(r["step"], int) and r["step"] < resume_step]
        # steps.csv is rewritten whole (atomically) each epoch; the text of the rows already
        # written is kept so that only new rows are formatted
        self._steps_text = csv_text(self.step_rows, STEP_FIELDS)
        self._steps_formatted = len(self.step_rows)
        write_text_atomic(self.steps_path, self._steps_text)

    def add_step(self, row: dict) -> None:
        self.step_rows.append(row)

    def write_epoch(self, history: list[dict], run_info: dict, class_names: list, best_map) -> None:
        """Rewrite steps.csv (with this epoch's rows), results.csv / .json and the curves, each
        atomically. The trainer calls it before it replaces last.ckpt: a kill in between leaves
        rows of an epoch that resuming runs again, and those rows are dropped then."""
        new_rows = csv_text(self.step_rows[self._steps_formatted:], STEP_FIELDS)
        self._steps_text += new_rows[new_rows.index("\n") + 1:]  # without its header line
        self._steps_formatted = len(self.step_rows)
        write_text_atomic(self.steps_path, self._steps_text)
        write_text_atomic(self.out_dir / "results.csv", csv_text(history))
        write_text_atomic(self.out_dir / "results.json", json.dumps(
            {"run": run_info, "class_names": class_names, "best_map": best_map, "epochs": history},
            indent=1, default=float))
        try:
            from nanoplus.train.plots import plot_curves

            plot_curves(self.step_rows, history, self.out_dir / "curves.png")
        except ImportError:  # matplotlib is optional for a run (pip install 'nanoplus[train]')
            pass


def csv_text(rows: list[dict], keys: Optional[Sequence[str]] = None) -> str:
    """CSV of ``rows``; columns ``keys``, else every scalar key in order of appearance."""
    if keys is None:
        keys = []
        for row in rows:
            keys += [k for k in row if k not in keys and not isinstance(row[k], (dict, list))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    return buf.getvalue()


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(v):
    if v in ("", None):
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def plain(obj):
    """numpy scalars / arrays -> Python numbers and lists (checkpoints load with weights_only)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
