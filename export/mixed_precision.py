"""Mixed precision by measurement, for any INT8 writer: which layers stay float, and why.

An INT8 file is first measured whole: its mAP on (a labelled part of) the calibration images
against the float model's, through the runtime's pre- and post-processing. When it loses more than
the user's budget, each layer's cost is measured (that layer alone in int8: error of the network
output against float on a few images), and the costliest layers are tried in float one at a time,
costliest first: a layer stays float when that raises the measured mAP, until the file is within
the budget or a quarter of the layers have been tried. The report names every layer kept float, its cost and the mAP once it was float.
"""
from __future__ import annotations

import copy

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from nanoplus.runtime.metadata import ModelMeta

# at most this share of the quantisable layers goes back to float before the search gives up
MAX_FLOAT_SHARE = 0.25


@dataclass
class KeptLayer:
    name: str
    type: str
    error_alone: float  # output error with only this layer in int8 (its measured cost)
    map_after: float  # calibration mAP once this layer (and the ones listed before it) is float


@dataclass
class Int8Report:
    engine: str
    method: str
    calibration_images: int
    quantised_layers: int
    budget: Optional[float]  # None: not measured, every supported layer int8
    map_float: Optional[float] = None  # on the evaluation part of the calibration images
    map_all_int8: Optional[float] = None
    map_final: Optional[float] = None
    eval_images: int = 0
    kept_float: list[KeptLayer] = field(default_factory=list)  # costliest first
    within_budget: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{self.engine} int8: {self.quantised_layers} layers int8 ({self.method}, "
                 f"{self.calibration_images} calibration images)"]
        if self.map_float is not None:
            lines.append(f"  mAP on {self.eval_images} calibration images: float {self.map_float:.4f}, all int8 "
                         f"{self.map_all_int8:.4f}, this file {self.map_final:.4f} (budget: lose at most {self.budget:g})")
        for kept in self.kept_float:
            lines.append(f"  kept float: {kept.name} ({kept.type}): output error {kept.error_alone:.2e} with it alone "
                         f"in int8, the costliest left; mAP {kept.map_after:.4f} once float")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def output_error(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray], num_classes: int,
                 layout: str = "NC") -> float:
    """Relative squared error of the class scores plus that of the box bins, averaged over images.

    reference, outputs: one raw output per image, (N, C+32) for layout NC or (C+32, N) for CN.
    """
    errors = []
    for ref, out in zip(reference, outputs):
        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        if layout == "CN":
            ref, out = ref.T, out.T
        ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        total = 0.0
        for part in (slice(0, num_classes), slice(num_classes, None)):
            total += np.sum((out[:, part] - ref[:, part]) ** 2) / max(np.sum(ref[:, part] ** 2), 1e-12)
        errors.append(total)
    return float(np.mean(errors))


def keep_costliest_float(report: Int8Report, layers: dict[str, str], cost_alone: Callable[[str], float],
                         map_with_float: Callable[[set], float], progress: Callable[[str], None] = print) -> set[str]:
    """Fill ``report`` (its map_float and map_all_int8 already measured) and return the layers to keep float.

    layers: name -> type of every layer quantised so far. cost_alone(name): output error with only
    that layer int8. map_with_float(kept): calibration mAP with the ``kept`` layers float.
    """
    kept: set[str] = set()
    report.map_final = report.map_all_int8
    if report.budget is None or report.map_float - report.map_final <= report.budget:
        return kept
    costs = {name: cost_alone(name) for name in layers}
    broken = sorted(name for name, cost in costs.items() if not np.isfinite(cost))
    if broken:  # a layer whose int8 form gives NaN/inf is a writer bug, not a precision choice
        raise ValueError(f"int8 output is not finite with only these layers int8: {', '.join(broken)}; please report it")
    progress(f"  measured the int8 cost of each of {len(costs)} layers alone")
    limit = max(1, int(len(layers) * MAX_FLOAT_SHARE))
    for name in sorted(costs, key=costs.get, reverse=True)[:limit]:
        trial = map_with_float(kept | {name})
        if trial <= report.map_final:  # no gain measured: the layer stays int8
            progress(f"  {name} (cost {costs[name]:.2e}) float: mAP {trial:.4f}, no gain; stays int8")
            continue
        kept.add(name)
        report.map_final = trial
        report.kept_float.append(KeptLayer(name, layers[name], costs[name], trial))
        progress(f"  keep {name} float (cost {costs[name]:.2e}): mAP {trial:.4f}")
        if report.map_float - report.map_final <= report.budget:
            return kept
    report.within_budget = False
    report.notes.append(f"the budget ({report.budget:g}) was not reached after trying the {limit} costliest layers "
                        f"({len(kept)} kept float as they helped): raise --int8-budget or give more calibration images")
    return kept


def calibration_subset(dataset, paths: Sequence[str]):
    """The records of ``dataset`` whose images are ``paths``, with only their ground truth."""
    wanted = {str(p) for p in paths}
    return dataset.subset([r for r in dataset.records if str(r.path) in wanted])


def detection_map(run: Callable[[np.ndarray], np.ndarray], meta: ModelMeta, dataset, thresholds) -> float:
    """COCO mAP of ``run`` (blob (1, 3, H, W) -> raw output) through the runtime's one evaluation
    path (a ``Detector`` over it: pre-processing, decoding, NMS, pycocotools)."""
    from nanoplus.runtime.backends import FunctionBackend
    from nanoplus.runtime.detector import Detector
    from nanoplus.runtime.evaluate import evaluate_detector

    score_thr, iou_thr, max_det = thresholds
    detector = Detector.from_backend(FunctionBackend(run, name="int8 candidate"), copy.deepcopy(meta),
                                     score_thr, iou_thr, max_det)
    return float(evaluate_detector(detector, dataset, progress=False)[0]["mAP"])