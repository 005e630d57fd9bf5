"""INT8 OpenVINO IR by post-training quantisation with NNCF on a calibration set.

The calibration images are the user's data (any format ``runtime.datasets.load_dataset`` reads),
pre-processed by ``runtime.preprocess.preprocess`` exactly as the runtime will feed the model, so
the activation ranges NNCF measures are those the deployed model sees. The float IR (from our ONNX
file, optionally with the pre-processing folded in) is quantised; weights become int8 and
FakeQuantize nodes carry the activation scales. The ONNX and NCNN INT8 files are made by
``onnx_int8`` and ``ncnn_int8`` from the same calibration images (``calibration_blobs`` here).

Needs ``nncf`` (pip install nncf; it brings no torch). Tested with nncf 3.4.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from nanoplus.errors import NanoplusError
from nanoplus.runtime.metadata import ModelMeta


class CalibrationError(NanoplusError, ValueError):
    """Calibration data that cannot be used; the message names the data and the fix."""


class CalibrationBlobs:
    """Network inputs for NNCF, made lazily from image files: ``preprocess(img, meta)[0]`` each,
    i.e. (1, 3, H, W) float32, or uint8 for an IR with the pre-processing folded in."""

    def __init__(self, paths: list[str], meta: ModelMeta):
        self.paths, self.meta = paths, meta

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        from nanoplus.runtime.images import ImageReadError, read_image
        from nanoplus.runtime.preprocess import preprocess

        for path in self.paths:
            try:
                img = read_image(path)
            except ImageReadError:  # unreadable files are reported by the dataset loader already
                continue
            yield preprocess(img, self.meta)[0]


def calibration_blobs(dataset, meta: ModelMeta, max_images: int, seed: int = 0) -> CalibrationBlobs:
    """Up to ``max_images`` images of a ``DetectionDataset`` (a seeded choice, in dataset order)."""
    import numpy as np

    records = list(dataset.records)
    if not records:
        raise CalibrationError("the calibration data has no images; pass --calib with a dataset that has some")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(records))[:max_images])
    return CalibrationBlobs([str(records[i].path) for i in chosen], meta)


def quantize_openvino(
    float_xml: str | os.PathLike,
    meta: ModelMeta,
    calib_dataset,
    xml_path: str | os.PathLike,
    subset_size: int = 300,
    seed: int = 0,
) -> Path:
    """Quantise the float IR ``float_xml`` (with metadata ``meta``) to INT8 at ``xml_path``.

    calib_dataset: a ``DetectionDataset``; up to ``subset_size`` of its images are used.
    """
    try:
        import nncf
    except ImportError:
        raise CalibrationError("INT8 export needs NNCF: pip install nncf (it does not install torch)") from None
    import openvino as ov

    from nanoplus.export.openvino_export import save_ir

    ov_model = ov.Core().read_model(str(float_xml))
    blobs = calibration_blobs(calib_dataset, meta, max_images=subset_size, seed=seed)
    nncf.set_log_level(30)  # warnings only; NNCF shows its own progress bar
    quantized = nncf.quantize(
        ov_model,
        nncf.Dataset(blobs),
        subset_size=len(blobs),
        # NNCF's default preset (symmetric, fastest on CPUs): on tiny_coco val2017 the published
        # m-416 weights gave mAP 0.3723 with it and 0.3706 with MIXED (PyTorch: 0.3721)
        preset=nncf.QuantizationPreset.PERFORMANCE,
    )
    int8_meta = copy.deepcopy(meta)
    int8_meta.precision = "int8"
    return save_ir(quantized, int8_meta, xml_path, compress_to_fp16=False)
