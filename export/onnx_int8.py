"""INT8 ONNX for onnxruntime: static QDQ quantisation calibrated on the user's images.

``onnxruntime.quantization.quantize_static`` inserts QuantizeLinear / DequantizeLinear pairs:
per-output-channel int8 weights, uint8 activations (onnxruntime's U8S8, fast on x86 VNNI and on
ARM), activation ranges from the calibration images pre-processed exactly as the runtime feeds
the model. A file below opset 13 is converted to 13 first (per-channel DequantizeLinear needs
it). The ranges are computed once (a calibration cache in the staging folder) and reused
while mixed precision (``export/mixed_precision.py``) measures which convolutions to leave in
float: those are passed as ``nodes_to_exclude``. The file keeps the float file's metadata with
precision ``int8``, inside it and in the sidecar.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from nanoplus.atomic import write_json_atomic
from nanoplus.errors import NanoplusError
from nanoplus.export.mixed_precision import (Int8Report, calibration_subset, detection_map, keep_costliest_float,
                                             output_error)
from nanoplus.export.onnx_export import set_onnx_metadata
from nanoplus.runtime.metadata import ModelMeta, write_sidecar

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PER_CHANNEL_OPSET = 13


class OnnxInt8Error(NanoplusError, ValueError):
    """A model or option the ONNX INT8 quantiser cannot use; the message says the fix."""


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our calibration blobs."""

    def __init__(self, blobs, input_name: str):
        self.blobs, self.input_name, self._it = blobs, input_name, None

    def get_next(self):
        if self._it is None:
            self._it = iter(self.blobs)
        blob = next(self._it, None)
        return None if blob is None else {self.input_name: blob}

    def rewind(self):
        self._it = None


def _session(path: Path, threads: Optional[int]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_onnx(
    float_onnx: str | os.PathLike,
    meta: ModelMeta,
    calib_dataset,
    onnx_path: str | os.PathLike,
    max_images: int = 300,
    method: str = "percentile",
    budget: Optional[float] = 0.005,
    eval_images: int = 100,
    score_thr: float = 0.05,
    iou_thr: float = 0.6,
    max_det: int = 100,
    threads: Optional[int] = None,
    sensitivity_images: int = 8,
    progress: Callable[[str], None] = print,
) -> tuple[Path, Int8Report]:
    """Quantise ``float_onnx`` (metadata ``meta``) to a QDQ INT8 file at ``onnx_path``.

    Same contract as ``ncnn_int8.quantize_ncnn``: up to ``max_images`` calibration images, the
    first ``eval_images`` of them measure mAP for ``budget`` (None: every Conv int8). Writes the
    file, its sidecar and ``<stem>.quant.json``. Returns (onnx_path, report).
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise OnnxInt8Error("ONNX INT8 export needs onnxruntime and onnx: pip install 'nanoplus[export]'") from None
    from nanoplus.export.quantize import calibration_blobs

    if method not in CALIBRATION_METHODS:
        raise OnnxInt8Error(f"ONNX INT8 calibration method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    float_onnx, onnx_path = Path(float_onnx), Path(onnx_path)
    graph = onnx.load(str(float_onnx))
    input_name = graph.graph.input[0].name
    convs = {node.name: node.op_type for node in graph.graph.node if node.op_type == "Conv"}
    if not convs:
        raise OnnxInt8Error(f"{float_onnx}: no Conv node to quantise; is this a NanoDet-Plus export?")
    calib = calibration_blobs(calib_dataset, meta, max_images=max_images)
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    report = Int8Report(engine="onnxruntime", method=f"QDQ, {method} activation ranges, per-channel weights",
                        calibration_images=len(calib), quantised_layers=len(convs), budget=budget)

    staging = Path(tempfile.mkdtemp(prefix=".int8-", dir=onnx_path.parent))
    try:
        source = float_onnx
        opset = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset < PER_CHANNEL_OPSET:  # per-channel DequantizeLinear (its axis attribute) needs opset 13
            from onnx import version_converter

            source = staging / "float_opset13.onnx"
            onnx.save(version_converter.convert_version(graph, PER_CHANNEL_OPSET), str(source))
        cache = staging / "calibration.json"
        counter = iter(range(1 << 30))

        def quantise(exclude: set[str], path: Optional[Path] = None, only: Optional[list[str]] = None) -> Path:
            path = path or staging / f"candidate{next(counter)}.onnx"
            quantize_static(
                str(source), str(path), _Reader(calib, input_name) if not cache.exists() else None,
                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
                op_types_to_quantize=None if only else ["Conv"], nodes_to_quantize=only,
                nodes_to_exclude=sorted(exclude) or None, calibration_cache_path=str(cache),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": ["Conv"]},
            )
            return path

        progress(f"  calibration: {len(convs)} Conv nodes, {len(calib)} images ({method})")
        all_int8 = quantise(set())
        kept: set[str] = set()
        if budget is not None:
            subset = calibration_subset(calib_dataset, calib.paths[:eval_images])
            thresholds = (score_thr, iou_thr, max_det)

            def map_of(path: Path) -> float:
                session = _session(path, threads)
                return detection_map(lambda blob: session.run(None, {input_name: blob})[0], meta, subset, thresholds)

            report.eval_images = len(subset)
            report.map_float = map_of(float_onnx)
            report.map_all_int8 = map_of(all_int8)
            progress(f"  mAP on {len(subset)} calibration images: float {report.map_float:.4f}, "
                     f"all int8 {report.map_all_int8:.4f}")
            probe = [blob for blob, _ in zip(calib, range(sensitivity_images))]
            float_session = _session(float_onnx, threads)
            reference = [float_session.run(None, {input_name: b})[0] for b in probe]

            def cost_alone(name: str) -> float:
                session = _session(quantise(set(), only=[name]), threads)
                return output_error(reference, [session.run(None, {input_name: b})[0] for b in probe],
                                    meta.num_classes, meta.layout)

            kept = keep_costliest_float(report, convs, cost_alone, lambda keep: map_of(quantise(keep)), progress)
        final = quantise(kept, staging / "final.onnx")
        report.quantised_layers = len(convs) - len(kept)
        model = onnx.load(str(final))
        int8_meta = copy.deepcopy(meta)
        int8_meta.precision = "int8"
        set_onnx_metadata(model, int8_meta)
        onnx.save(model, str(final))
        os.replace(final, onnx_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_sidecar(int8_meta, onnx_path)
    write_json_atomic(onnx_path.with_suffix(".quant.json"), report.to_dict())
    return onnx_path, report
