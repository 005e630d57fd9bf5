"""PNG training curves for a run folder: losses, learning rate, mAP.

Reads the per-step and per-epoch rows the trainer logs (lists of dicts) and writes
``curves.png`` atomically. matplotlib runs headless (Agg) and is imported only here.
"""
from __future__ import annotations

import os
from pathlib import Path

from nanoplus.atomic import atomic_open


def plot_curves(step_rows: list[dict], epoch_rows: list[dict], path: str | os.PathLike) -> Path:
    """Three panels: training losses per epoch (mean), lr per step, mAP / AP50 per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    ax = axes[0]
    if epoch_rows:
        loss_keys = [k for k in epoch_rows[0] if k.startswith("loss")]
        epochs = [r["epoch"] for r in epoch_rows]
        for key in loss_keys:
            ax.plot(epochs, [r.get(key, float("nan")) for r in epoch_rows], marker=".", label=key)
        ax.legend(fontsize=7)
    ax.set_title("training losses (epoch mean)")
    ax.set_xlabel("epoch")

    ax = axes[1]
    if step_rows:
        ax.plot([r["step"] for r in step_rows], [r["lr"] for r in step_rows])
    ax.set_title("learning rate")
    ax.set_xlabel("global step")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))

    ax = axes[2]
    evaluated = [r for r in epoch_rows if r.get("mAP") is not None]
    if evaluated:
        ax.plot([r["epoch"] for r in evaluated], [r["mAP"] for r in evaluated], marker="o", label="mAP")
        ax.plot([r["epoch"] for r in evaluated], [r["AP50"] for r in evaluated], marker="o", label="AP50")
        ax.legend()
    ax.set_title("validation (EMA weights)")
    ax.set_xlabel("epoch")

    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return path
