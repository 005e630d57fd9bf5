"""INT8 ncnn model (``.param`` + ``.bin``) from a float one, calibrated through ncnn itself.

ncnn loads an int8 model from an ordinary ``.param``/``.bin`` pair; no ncnn tool is needed to write
one. The format (ncnn ``src/layer/convolution.cpp``, ``convolutiondepthwise.cpp``,
``tools/quantize/ncnn2int8.cpp``, ``src/modelbin.cpp``), per quantised layer:

- ``.param``: Convolution gets ``8=2`` (one weight scale per output channel), ConvolutionDepthWise
  ``8=1`` (one per group); +100 (``102`` / ``101``) when the layer's output feeds only int8
  convolutions (directly or through a Split): the layer then requantises its output to int8 itself
  and a top-blob scale follows in the ``.bin``.
- ``.bin``: the storage tag ``0x000D4B38``, the int8 weights (w x scale rounded half away from zero,
  clamped to +-127, padded to 4 bytes), the fp32 bias, the fp32 weight scales, one fp32
  bottom-blob scale, and the top-blob scale for the >100 form.

Weight scales are 127 / absmax per output channel (per group for depthwise), 31 / absmax for 3x3
stride-1 dilation-1 convolutions, whose int8 Winograd kernels need 6-bit weights (as ncnn2table).
An all-zero channel gets scale 1 (its int8 weights are zeros whatever the scale).

Activation (bottom-blob) scales come from the fp32 model run by ncnn on the calibration images,
intermediate blobs taken with ``Extractor.extract`` in non-light mode, one 2048-bin histogram of
|x| (zeros skipped) per blob: ``kl`` picks the clipping threshold whose 128-level quantised
distribution has the least KL divergence from the clipped one, as ncnn2table does; ``percentile``
clips at the 99.99th percentile of |x|; ``minmax`` at the absolute maximum; ``auto`` (default)
measures kl and percentile on the calibration images and keeps the better.

Mixed precision by measurement (``export/mixed_precision.py``): when the all-int8 file loses more
mAP on the calibration images than the user's budget, the costliest layers keep their float
storage, byte for byte as in the float file. The report says which layers stayed float and why.

Shapes: weights keep ncnn's flat (out, in/groups, kh, kw) order; blobs from ncnn are (C, H, W).
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from nanoplus.atomic import atomic_open, write_json_atomic
from nanoplus.errors import NanoplusError
from nanoplus.export.mixed_precision import (Int8Report, calibration_subset, detection_map, keep_costliest_float,
                                             output_error)
from nanoplus.runtime.metadata import ModelMeta, write_sidecar

QUANTISABLE_TYPES = ("Convolution", "ConvolutionDepthWise")
TAG_INT8 = 0x000D4B38
HISTOGRAM_BINS = 2048  # ncnn2table's histogram of |x|
TARGET_BINS = 128  # int8 levels on one side of zero
KL_EPS = 1e-4  # ncnn2table adds this to both distributions before the KL divergence
REQUANTISE_OFFSET = 100  # 8=101/102: the layer writes int8 for int8 consumers
SCALE_METHODS = ("auto", "kl", "percentile", "minmax")
PERCENTILE = 0.9999  # share of the non-zero |x| below the "percentile" threshold


class Int8ExportError(NanoplusError, ValueError):
    """A float ncnn model or calibration data the INT8 writer cannot use; the message says the fix."""


# ------------------------------------------------------------------------------------------------
# the float model


@dataclass
class FloatNcnn:
    """A float ncnn model as read: parsed layers (with their byte span in the .bin) and raw text.

    ``lines[i]`` is the .param text line of ``layers[i]``; ``header`` the first two lines.
    """

    param_path: Path
    layers: list  # nanoplus.train.ncnn_model.NcnnLayer
    spans: list[tuple[int, int]]  # (start, end) byte offsets of each layer's data in ``bin_bytes``
    header: list[str]
    lines: list[str]
    bin_bytes: bytes

    def layer(self, name: str):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def consumers(self, blob: str) -> list:
        return [layer for layer in self.layers if blob in layer.bottoms]

    def output_blob(self) -> str:
        """The last blob no layer consumes."""
        consumed = {b for layer in self.layers for b in layer.bottoms}
        return [top for layer in self.layers for top in layer.tops if top not in consumed][-1]

    def source_blob(self, blob: str) -> str:
        """The blob a Split copied (Split outputs hold the same data as its input)."""
        producer = {top: layer for layer in self.layers for top in layer.tops}
        while blob in producer and producer[blob].type == "Split":
            blob = producer[blob].bottoms[0]
        return blob


def load_float_ncnn(param_path: str | os.PathLike) -> FloatNcnn:
    """Read a float ncnn .param/.bin (the .bin beside it) and where each layer's data lies."""
    from nanoplus.train.ncnn_model import NcnnFormatError, load_ncnn_model

    param_path = Path(param_path)
    try:
        model = load_ncnn_model(param_path)
    except NcnnFormatError as e:
        raise Int8ExportError(f"{param_path}: cannot read the float ncnn model to quantise ({e})") from None
    text_lines = [ln for ln in param_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    header, body = text_lines[:2], text_lines[2:]
    spans = [tuple(layer.bin_span) for layer in model.layers]
    for layer in model.layers:
        if layer.weight_storage == "int8" or int(layer.get(8, 0) or 0):
            raise Int8ExportError(f"{param_path}: layer {layer.name} is already int8; quantise the float "
                                  "(fp32 or fp16) ncnn export instead")
    return FloatNcnn(param_path, model.layers, spans, header, body, model.bin_path.read_bytes())


def quantisable_layers(model: FloatNcnn) -> list:
    """Convolution / ConvolutionDepthWise layers with stored weights and one input."""
    return [layer for layer in model.layers
            if layer.type in QUANTISABLE_TYPES and "weight" in layer.weights and len(layer.bottoms) == 1]


# ------------------------------------------------------------------------------------------------
# weights


def uses_6bit_weights(layer) -> bool:
    """ncnn's int8 Winograd F(4,3) for 3x3 stride-1 convolutions needs weights within +-31."""
    if layer.type != "Convolution":
        return False
    kw = int(layer.get(1, 0))
    kh, dw, sw = int(layer.get(11, kw)), int(layer.get(2, 1)), int(layer.get(3, 1))
    dh, sh = int(layer.get(12, dw)), int(layer.get(13, sw))
    return (kw, kh, dw, dh, sw, sh) == (3, 3, 1, 1, 1, 1)


def weight_scales(layer) -> np.ndarray:
    """(num_output,) for Convolution, (group,) for ConvolutionDepthWise; float32; 0 for a zero row."""
    rows = int(layer.get(0, 0)) if layer.type == "Convolution" else int(layer.get(7, 1))
    weight = layer.weights["weight"].astype(np.float32).reshape(rows, -1)
    absmax = np.abs(weight).max(axis=1)
    levels = np.float32(31 if uses_6bit_weights(layer) else 127)
    # an all-zero row quantises to zeros at any scale; 1, not ncnn2table's inf (x86 kernels turn
    # inf into NaN in the dequantisation)
    with np.errstate(divide="ignore"):
        return np.where(absmax > 0, levels / absmax, 1).astype(np.float32)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round(): halves go away from zero (numpy's np.round goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantise_weights(layer, scales: np.ndarray) -> np.ndarray:
    """int8 weights in ncnn's flat order: round(w * scale of its row), clamped to +-127."""
    rows = scales.shape[0]
    weight = layer.weights["weight"].astype(np.float32).reshape(rows, -1)
    q = round_half_away(weight * scales[:, None])
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


# ------------------------------------------------------------------------------------------------
# activation scales


def kl_threshold_bin(histogram: np.ndarray) -> int:
    """ncnn2table's KL search: the number of |x| bins (128..2047) to keep before clipping.

    histogram: (2048,) counts of |x| over [0, absmax). For each candidate threshold t the clipped
    distribution (tail mass added to bin t-1) is compared with its 128-level quantisation spread
    back evenly over the bins (both + 1e-4, as ncnn2table), vectorised over every t.
    """
    h = np.asarray(histogram, dtype=np.float64)
    total = h.sum()
    if total <= 0:
        return HISTOGRAM_BINS - 1
    h = h / total
    cum_h = np.concatenate([[0.0], np.cumsum(h)])
    h_padded = np.concatenate([h, [0.0]])

    def mass_below(x):  # integral of the histogram density from 0 to x (x in bins)
        whole = np.floor(x).astype(np.int64)
        return cum_h[whole] + (x - whole) * h_padded[whole]

    thresholds = np.arange(TARGET_BINS, HISTOGRAM_BINS)  # (T,)
    per_level = thresholds / TARGET_BINS  # bins per quantised level, (T,)
    edges = np.arange(TARGET_BINS + 1)[None, :] * per_level[:, None]  # (T, 129)
    quantised = np.diff(mass_below(edges), axis=1) / per_level[:, None]  # mean density per level (T, 128)
    # the quantised density integrated over each original bin k: G(k+1) - G(k)
    level_mass = np.concatenate([np.zeros((len(thresholds), 1)), np.cumsum(quantised * per_level[:, None], axis=1)], axis=1)
    k = np.arange(HISTOGRAM_BINS + 1)[None, :].astype(np.float64)  # (1, 2049)
    level = np.minimum(np.floor(k / per_level[:, None]).astype(np.int64), TARGET_BINS - 1)  # (T, 2049)
    rows = np.arange(len(thresholds))[:, None]
    integral = level_mass[rows, level] + (k - level * per_level[:, None]) * quantised[rows, level]
    expanded = np.diff(integral, axis=1) + KL_EPS  # (T, 2048), valid for bins < t
    inside = np.arange(HISTOGRAM_BINS)[None, :] < thresholds[:, None]
    clipped = np.where(inside, h[None, :], 0.0)
    clipped[np.arange(len(thresholds)), thresholds - 1] += 1.0 - cum_h[thresholds]
    clipped += KL_EPS
    terms = np.where(inside, clipped * np.log(clipped / expanded), 0.0)
    return int(thresholds[np.argmin(terms.sum(axis=1))])


@dataclass
class BlobStats:
    absmax: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))

    def scale(self, method: str) -> float:
        """The int8 scale (127 / threshold) of this blob; 0 when it was always zero."""
        if self.absmax <= 0:
            return 0.0
        if method == "minmax":
            return 127.0 / self.absmax
        if method == "percentile":  # the upper edge of the bin holding the PERCENTILE-th |x|
            cumulative = np.cumsum(self.histogram)
            last_bin = int(np.searchsorted(cumulative, PERCENTILE * cumulative[-1]))
            return 127.0 / ((last_bin + 1) * self.absmax / HISTOGRAM_BINS)
        threshold = (kl_threshold_bin(self.histogram) + 0.5) * self.absmax / HISTOGRAM_BINS
        return 127.0 / threshold


class NcnnRunner:
    """An ncnn Net in fp32 mode (no fp16/bf16 storage); int8 layers still run int8."""

    def __init__(self, param_path: Path, input_name: str, threads: Optional[int] = None):
        try:
            import ncnn
        except ImportError:
            raise Int8ExportError("NCNN INT8 export needs the ncnn package: pip install ncnn") from None
        self._ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
            if hasattr(opt, flag):
                setattr(opt, flag, False)
        if threads:
            opt.num_threads = int(threads)
        if self.net.load_param(str(param_path)) != 0 or self.net.load_model(str(param_path.with_suffix(".bin"))) != 0:
            raise Int8ExportError(f"{param_path}: ncnn cannot load this model (see ncnn's message above)")
        self.input_name = input_name

    def extract(self, blob: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        """blob: (1, 3, H, W) float32 -> the named blobs, each (C, H, W) float32 (copies)."""
        ncnn = self._ncnn
        image = np.ascontiguousarray(blob[0], dtype=np.float32)
        extractor = self.net.create_extractor()
        extractor.set_light_mode(False)  # keep intermediate blobs so every name can be taken
        extractor.input(self.input_name, ncnn.Mat(image))
        out = []
        for name in names:
            ret, mat = extractor.extract(name)
            if ret != 0:
                raise Int8ExportError(f"{name}: ncnn cannot extract this blob (code {ret})")
            out.append(np.array(mat, dtype=np.float32))
        return out


def collect_blob_stats(runner: NcnnRunner, blob_names: Sequence[str], inputs: Callable[[], Iterable[np.ndarray]],
                       progress: Callable[[str], None] = print) -> dict[str, BlobStats]:
    """Two passes over the calibration inputs (as ncnn2table): |x| maxima, then |x| histograms."""
    stats = {name: BlobStats() for name in blob_names}
    count = 0
    for blob in inputs():
        for name, value in zip(blob_names, runner.extract(blob, blob_names)):
            stats[name].absmax = max(stats[name].absmax, float(np.abs(value).max()))
        count += 1
    if count == 0:
        raise Int8ExportError("no calibration image could be read; pass --calib with readable images")
    progress(f"  calibration: |x| maxima of {len(blob_names)} blobs over {count} images")
    for blob in inputs():
        for name, value in zip(blob_names, runner.extract(blob, blob_names)):
            st = stats[name]
            if st.absmax <= 0:
                continue
            magnitude = np.abs(value[value != 0])
            index = np.minimum((magnitude * np.float32(HISTOGRAM_BINS / st.absmax)).astype(np.int64), HISTOGRAM_BINS - 1)
            st.histogram += np.bincount(index, minlength=HISTOGRAM_BINS)
    progress(f"  calibration: {HISTOGRAM_BINS}-bin histograms done")
    return stats


# ------------------------------------------------------------------------------------------------
# writing


@dataclass
class LayerQuant:
    """How one layer is stored in the int8 file."""

    weight_scales: np.ndarray
    bottom_scale: float
    top_scale: Optional[float] = None  # set: the layer requantises its output (8=101/102)


def _param_line(line: str, int8_term: int) -> str:
    tokens = line.split()
    tokens = [t for t in tokens if not t.startswith("8=")]
    tokens.append(f"8={int8_term}")
    return " ".join(tokens)


def _layer_blob(layer, plan: LayerQuant) -> bytes:
    parts = [np.uint32(TAG_INT8).tobytes()]
    q = quantise_weights(layer, plan.weight_scales).tobytes()
    parts.append(q + b"\0" * (-len(q) % 4))
    if "bias" in layer.weights:
        parts.append(layer.weights["bias"].astype("<f4").tobytes())
    parts.append(plan.weight_scales.astype("<f4").tobytes())
    parts.append(np.float32(plan.bottom_scale).astype("<f4").tobytes())
    if plan.top_scale is not None:
        parts.append(np.float32(plan.top_scale).astype("<f4").tobytes())
    return b"".join(parts)


def int8_term(layer, plan: LayerQuant) -> int:
    base = 2 if layer.type == "Convolution" else 1
    return base + (REQUANTISE_OFFSET if plan.top_scale is not None else 0)


def with_requantisation(model: FloatNcnn, plans: dict[str, LayerQuant]) -> dict[str, LayerQuant]:
    """Plans where each int8 layer whose output feeds only int8 convolutions (directly or through a
    Split) writes int8 itself, with its consumers' bottom scale as its top scale."""
    out = {}
    for name, plan in plans.items():
        layer = model.layer(name)
        consumers = model.consumers(layer.tops[0])
        if len(consumers) == 1 and consumers[0].type == "Split":
            split_tops = consumers[0].tops
            # a Split output nobody consumes is a model output: it must stay float
            consumers = [c for top in split_tops for c in model.consumers(top)] if all(
                model.consumers(top) for top in split_tops) else []
        top_scale = None
        if consumers and all(c.name in plans for c in consumers):
            scales = {plans[c.name].bottom_scale for c in consumers}
            if len(scales) == 1:
                top_scale = scales.pop()
        out[name] = LayerQuant(plan.weight_scales, plan.bottom_scale, top_scale)
    return out


def write_int8_model(model: FloatNcnn, plans: dict[str, LayerQuant], param_path: str | os.PathLike) -> Path:
    """Write ``param_path`` and the ``.bin`` beside it: ``plans``' layers int8, the others as they were."""
    param_path = Path(param_path)
    lines, chunks = list(model.header), []
    for layer, line, (start, end) in zip(model.layers, model.lines, model.spans):
        plan = plans.get(layer.name)
        if plan is None:
            lines.append(line)
            chunks.append(model.bin_bytes[start:end])
        else:
            lines.append(_param_line(line, int8_term(layer, plan)))
            chunks.append(_layer_blob(layer, plan))
    with atomic_open(param_path.with_suffix(".bin"), "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    with atomic_open(param_path) as f:
        f.write("\n".join(lines) + "\n")
    return param_path


# ------------------------------------------------------------------------------------------------
# the whole job


def quantize_ncnn(
    float_param: str | os.PathLike,
    meta: ModelMeta,
    calib_dataset,
    param_path: str | os.PathLike,
    max_images: int = 300,
    method: str = "auto",
    budget: Optional[float] = 0.005,
    eval_images: int = 100,
    score_thr: float = 0.05,
    iou_thr: float = 0.6,
    max_det: int = 100,
    threads: Optional[int] = None,
    sensitivity_images: int = 8,
    progress: Callable[[str], None] = print,
) -> tuple[Path, Int8Report]:
    """Quantise the float ncnn model ``float_param`` (metadata ``meta``) to int8 at ``param_path``.

    calib_dataset: a ``DetectionDataset``; up to ``max_images`` of its images (a seeded choice)
    calibrate the activation scales; the first ``eval_images`` of those (with their labels) measure
    mAP for the accuracy ``budget`` (largest mAP loss against the float model; None: every layer
    int8, nothing measured). Writes the .param, the .bin, the sidecar JSON (precision int8) and
    ``<stem>.quant.json`` (the report). Returns (param_path, report).
    """
    from nanoplus.export.quantize import calibration_blobs

    if method not in SCALE_METHODS:
        raise Int8ExportError(f"--int8-method {method!r}: choose one of {', '.join(SCALE_METHODS)}")
    float_param, param_path = Path(float_param), Path(param_path)
    model = load_float_ncnn(float_param)
    input_name = meta.input_name or model.layers[0].tops[0]
    output_name = meta.output_name or model.output_blob()
    runner = NcnnRunner(float_param, input_name, threads)
    calib = calibration_blobs(calib_dataset, meta, max_images=max_images)

    candidates = quantisable_layers(model)
    sources = {layer.name: model.source_blob(layer.bottoms[0]) for layer in candidates}
    blob_names = sorted(set(sources.values()))
    progress(f"  calibration: {len(candidates)} convolutions, {len(blob_names)} input blobs, {len(calib)} images")
    stats = collect_blob_stats(runner, blob_names, lambda: iter(calib), progress)
    # auto: KL and percentile both, the one with the better calibration mAP wins (percentile
    # without a budget to measure with: it did better on tiny_coco, see the README)
    methods = (["kl", "percentile"] if budget is not None else ["percentile"]) if method == "auto" else [method]
    plans_by_method, notes = {}, []
    for name in methods:
        blob_scales = {blob: stats[blob].scale(name) for blob in blob_names}
        plans_by_method[name] = {layer.name: LayerQuant(weight_scales(layer), blob_scales[sources[layer.name]])
                                 for layer in candidates if blob_scales[sources[layer.name]] > 0}
    notes += [f"{layer.name}: its input was zero on every calibration image; left float"
              for layer in candidates if layer.name not in plans_by_method[methods[0]]]
    chosen = methods[0]
    plans = plans_by_method[chosen]
    report = Int8Report(engine="ncnn", method=f"{chosen} activation scales, per-channel weights",
                        calibration_images=len(calib), quantised_layers=len(plans), budget=budget, notes=notes)

    staging = Path(tempfile.mkdtemp(prefix=".int8-", dir=param_path.parent))
    try:
        def run_file(chosen: dict[str, LayerQuant], tag: str) -> NcnnRunner:
            path = write_int8_model(model, with_requantisation(model, chosen), staging / f"{tag}.param")
            return NcnnRunner(path, input_name, threads)

        kept: set[str] = set()
        if budget is not None:
            subset = calibration_subset(calib_dataset, calib.paths[:eval_images])
            thresholds = (score_thr, iou_thr, max_det)

            def map_of(r: NcnnRunner) -> float:
                return detection_map(lambda blob: r.extract(blob, [output_name])[0], meta, subset, thresholds)

            report.eval_images = len(subset)
            report.map_float = map_of(runner)
            method_maps = {name: map_of(run_file(plans_by_method[name], "all")) for name in methods}
            chosen = max(methods, key=method_maps.get)
            plans, report.map_all_int8 = plans_by_method[chosen], method_maps[chosen]
            report.method = f"{chosen} activation scales, per-channel weights"
            if len(methods) > 1:
                report.notes.append("activation scales chosen by calibration mAP (all layers int8): "
                                    + ", ".join(f"{name} {value:.4f}" for name, value in method_maps.items()))
            progress(f"  mAP on {len(subset)} calibration images: float {report.map_float:.4f}, "
                     f"all int8 {report.map_all_int8:.4f}")
            probe = [blob for blob, _ in zip(calib, range(sensitivity_images))]
            reference = [runner.extract(b, [output_name])[0] for b in probe]

            def cost_alone(name: str) -> float:
                single = run_file({name: plans[name]}, "one")
                return output_error(reference, [single.extract(b, [output_name])[0] for b in probe],
                                    meta.num_classes, meta.layout)

            kept = keep_costliest_float(
                report, {name: model.layer(name).type for name in plans}, cost_alone,
                lambda keep: map_of(run_file({n: p for n, p in plans.items() if n not in keep}, "kept")), progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final = with_requantisation(model, {n: p for n, p in plans.items() if n not in kept})
    report.quantised_layers = len(final)
    write_int8_model(model, final, param_path)
    int8_meta = copy.deepcopy(meta)
    int8_meta.precision = "int8"
    int8_meta.input_name, int8_meta.output_name = input_name, output_name
    write_sidecar(int8_meta, param_path)
    write_json_atomic(report_path(param_path), report.to_dict())
    return param_path, report


def report_path(param_path: str | os.PathLike) -> Path:
    """Where the quantisation report of an INT8 model file goes: ``<stem>.quant.json``."""
    return Path(param_path).with_suffix(".quant.json")
