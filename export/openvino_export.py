"""OpenVINO IR export (``.xml`` + ``.bin``) from our ONNX file, FP32 or FP16 weights.

The IR keeps the ONNX contract (input ``data`` (1, 3, H, W), output ``output`` (1, N, C+32) with
sigmoid scores). Optionally the pre-processing is folded into the graph (``uint8_input``): the
input becomes the raw warped BGR image as uint8 NCHW and the graph subtracts the mean and divides
by the std itself, so the runtime skips normalisation (metadata ``input_dtype = "uint8"``).
The metadata goes into the IR's ``rt_info['nanoplus']`` and the sidecar JSON.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from nanoplus.runtime.metadata import METADATA_KEY, ModelMeta, write_sidecar


# What a program other than nanoplus must know to get this file's answers (README "Using the
# exported files elsewhere"); written into the sidecar and rt_info['nanoplus'] as metadata notes.
OPENVINO_NOTES = {
    "precision": ("OpenVINO's CPU plugin computes in bf16 on CPUs that have it (AVX-512 BF16, AMX) unless the "
                  "program pins f32: core.compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'}) "
                  "(benchmark_app: -infer_precision f32); nanoplus pins f32 unless asked for bf16"),
    "uint8_input": ("input: the warped BGR image as uint8 (1, 3, H, W), not normalised; the graph subtracts "
                    "mean and divides by std itself"),
}


def fold_preprocessing(ov_model, meta: ModelMeta):
    """Make the model take uint8 NCHW images in ``meta.color_order`` and normalise inside the graph.

    (v - mean) / std per channel, the same arithmetic as ``runtime.preprocess.normalize_to_blob``.
    """
    import openvino as ov

    ppp = ov.preprocess.PrePostProcessor(ov_model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    inp.model().set_layout(ov.Layout("NCHW"))
    inp.preprocess().convert_element_type(ov.Type.f32).mean([float(v) for v in meta.mean]).scale(
        [float(v) for v in meta.std]
    )
    return ppp.build()


def save_ir(ov_model, meta: ModelMeta, xml_path: str | os.PathLike, compress_to_fp16: bool) -> Path:
    """Write ``xml_path`` + its ``.bin`` (atomically, via a temporary folder beside them) and the sidecar."""
    import openvino as ov

    xml_path = Path(xml_path)
    meta = copy.deepcopy(meta)
    meta.notes = [note for note in meta.notes if note not in OPENVINO_NOTES.values()] + [OPENVINO_NOTES["precision"]]
    if meta.input_dtype == "uint8":
        meta.notes.append(OPENVINO_NOTES["uint8_input"])
    ov_model.set_rt_info(meta.to_json(), [METADATA_KEY])
    staging = Path(tempfile.mkdtemp(prefix=".ov-", dir=xml_path.parent))
    try:
        staged = staging / xml_path.name
        ov.save_model(ov_model, str(staged), compress_to_fp16=compress_to_fp16)
        os.replace(staged.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(staged, xml_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_sidecar(meta, xml_path)
    return xml_path


def export_openvino(
    onnx_path: str | os.PathLike,
    meta: ModelMeta,
    xml_path: str | os.PathLike,
    half: bool = False,
    uint8_input: bool = False,
) -> Path:
    """Convert our ONNX file to an IR at ``xml_path``; FP16 weights when ``half``.

    meta: the ONNX file's metadata; the IR's copy gets its precision and input dtype.
    """
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_path))
    meta = copy.deepcopy(meta)
    meta.precision = "fp16" if half else "fp32"
    if uint8_input:
        ov_model = fold_preprocessing(ov_model, meta)
        meta.input_dtype = "uint8"
    return save_ir(ov_model, meta, xml_path, compress_to_fp16=half)


def read_openvino_metadata(xml_path: str | os.PathLike) -> Optional[ModelMeta]:
    """The ``nanoplus`` metadata in an IR's rt_info, or None."""
    import openvino as ov

    ov_model = ov.Core().read_model(str(xml_path))
    if not ov_model.has_rt_info([METADATA_KEY]):
        return None
    text = ov_model.get_rt_info([METADATA_KEY]).astype(str)
    return ModelMeta.from_json(text, source=f"{xml_path} (rt_info['{METADATA_KEY}'])")
