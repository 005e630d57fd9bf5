"""The parity gate: does an exported file give the PyTorch model's answers?

Each exported file is opened with the runtime's ``Detector`` (the code path users run: its
backend, its pre-processing) and fed the same images as the PyTorch deploy model. Both sides take
their input from ``runtime.preprocess.preprocess`` in one process, so both get the same warp (the
compiled one, or the OpenCV fallback where it is absent or NANOPLUS_NATIVE=0), also for a
uint8-input file, whose input is that warp without the normalisation. The raw outputs
are compared: max |difference| of the sigmoid class scores and of the raw box bins, over every
point, class and image. On the PyTorch side the sigmoid is the Detector's (the head's export flag
is off), so a wrong flag or a wrong channel split in a file shows up as a difference.

Bounds (max abs difference over every point of every image, ``PARITY_BOUNDS``: scores, bins), by
the precision the file is stored or run in, whichever is coarser (``bound_for``). What each bound
was chosen from (differences measured when it was set, on the published NanoDet-Plus-m-416
weights and the images named; the README's export table has each exported file's own
differences, next to the command that measured them):

=========  ======  ======  =====================================================================
precision  scores  bins    measured on the published NanoDet-Plus-m-416 weights (20 tiny_coco
                           val images + 7 photos, scores / bins)
=========  ======  ======  =====================================================================
fp32       1e-4    1e-3    onnxruntime 1.6e-6 / 1.4e-4, OpenVINO 1.1e-6 / 3.5e-5, ncnn 3.5e-6 / 2.3e-4
fp16       3e-2    2       OpenVINO 7.2e-3 / 0.55, ncnn 7.0e-3 / 0.84
bf16       1.5e-1  16      OpenVINO run in bf16: 7.1e-2 / 7.3
int8       4e-1    48      OpenVINO NNCF INT8: 0.17 / 12.3 (tiny_coco mAP still within 0.002); NCNN
                           INT8 (export/ncnn_int8.py, all layers int8): 0.31 / 28.9 on the gate's 4
                           tiny_coco train images, tiny_coco val mAP within 0.01
=========  ======  ======  =====================================================================

Why the fp32 bin bound is 1e-3 and not 1e-4: the bins are logits of size up to ~40 in a trained
model, and PyTorch's own float32 output differs from the exact (float64) result by about 1e-4 on
them, ncnn's convolution kernels by a few 1e-4. An error of 1e-3 in the bin logits moves a box
side by under 0.25 px even at stride 64 (at most the spread of the bin distribution, <= 3.5 bins,
times the error, times the stride). Scores keep the 1e-4 bound (they differ by a few 1e-6).
The lossy bounds only catch a broken file: feeding RGB instead of BGR moves the scores by 0.34-0.51,
a 5% error in one FPN weight by 0.02 (caught at fp32, not at fp16; the INT8 bound catches only
grosser breakage, the fp32 file of the same export catches those). The raw bins of low-probability
positions move a lot under fp16/int8 without changing any box that matters. Whether a lossy file
is good enough is what ``--check DATA`` (mAP against the PyTorch model) answers.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from nanoplus.errors import NanoplusError
from nanoplus.runtime.datasets import IMAGE_SUFFIXES
from nanoplus.runtime.images import ImageReadError, read_image
from nanoplus.runtime.metadata import ModelMeta

# precision -> (max score difference, max bin difference)
PARITY_BOUNDS = {
    "fp32": (1e-4, 1e-3),
    "fp16": (3e-2, 2.0),
    "bf16": (1.5e-1, 16.0),
    "int8": (4e-1, 48.0),
}
_COARSENESS = ["fp32", "fp16", "bf16", "int8"]


class ParityError(NanoplusError, RuntimeError):
    """An exported file whose outputs differ from the PyTorch model's beyond the bound."""


@dataclass
class ParityResult:
    path: str
    format: str  # onnx | openvino | ncnn
    precision: str  # of the file (ModelMeta.precision)
    backend: str  # runtime backend that ran it
    runtime_precision: str  # what that backend computed in
    max_score_diff: float
    max_bin_diff: float
    score_bound: float
    bin_bound: float
    num_images: int
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_score_diff <= self.score_bound and self.max_bin_diff <= self.bin_bound

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def bound_for(file_precision: str, runtime_precision: Optional[str]) -> tuple[str, tuple[float, float]]:
    """The coarser of the two precisions and its bounds (unknown names count as fp32)."""
    def rank(p):
        return _COARSENESS.index(p) if p in _COARSENESS else 0

    coarsest = max([file_precision, runtime_precision or "fp32"], key=rank)
    coarsest = coarsest if coarsest in PARITY_BOUNDS else "fp32"
    return coarsest, PARITY_BOUNDS[coarsest]


def parity_images(source: Optional[str | os.PathLike] = None, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """BGR uint8 images for the gate: the first ``count`` photos of a folder, else seeded noise.

    Noise images get varied sizes and aspect ratios so the warp is exercised too.
    """
    import cv2

    if source is not None:
        folder = Path(source)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        images = []
        for path in files[:count]:
            try:
                images.append(read_image(path))
            except ImageReadError:  # a stray non-image in the folder: the others are enough
                continue
        if not images:
            raise ParityError(f"{folder}: no readable images for the parity check (.jpg/.png/...); "
                              "pass a folder of photos with --parity-images, or leave it out to use random images")
        return images
    rng = np.random.default_rng(seed)
    sizes = [(480, 640), (640, 427), (333, 500), (512, 512), (240, 720)]
    images = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        # smooth noise (blurred, upsampled) looks more like a photo to the network than white noise
        small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 32, size=(h, w, 3), dtype=np.uint8))
        images.append(img)
    return images


def torch_meta(meta: ModelMeta) -> ModelMeta:
    """The same metadata for the PyTorch deploy model: float32 NCHW input, (N, C+32) output of
    raw logits."""
    m = copy.deepcopy(meta)
    m.input_dtype = "float32"
    m.layout = "NC"
    m.score_activation = "none"
    return m


def torch_detector(model, meta: ModelMeta, score_thr: float = 0.35, iou_thr: float = 0.6, max_det: int = 100):
    """The PyTorch deploy model as a runtime ``Detector`` (``TorchBackend.from_model``): the same
    pre-processing, sigmoid, decoding and NMS as an exported file. A copy of ``model`` in eval mode
    runs, its export flag off (the sigmoid is the Detector's, so a wrong flag in a file shows)."""
    from nanoplus.runtime.backends import TorchBackend
    from nanoplus.runtime.detector import Detector

    model = copy.deepcopy(model).eval()
    if hasattr(model.head, "sigmoid_scores"):
        model.head.sigmoid_scores = False
    fmeta = torch_meta(meta)
    return Detector.from_backend(TorchBackend.from_model(model, fmeta), fmeta, score_thr, iou_thr, max_det)


def torch_outputs(model, meta: ModelMeta, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The PyTorch deploy model's outputs in the exported contract, one (N, C+32) float32 per image
    with sigmoid scores: ``Detector.infer`` of ``torch_detector`` on each image's pre-processed blob."""
    detector = torch_detector(model, meta)
    return [detector.infer(detector.preprocess(img)[0]) for img in images]


def check_file(
    path: str | os.PathLike,
    fmt: str,
    images: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    threads: Optional[int] = None,
) -> ParityResult:
    """Run ``path`` through ``Detector`` on ``images`` and compare with ``reference`` outputs."""
    from nanoplus.runtime.detector import Detector

    detector = Detector(str(path), threads=threads)
    meta = detector.meta
    num_classes = len(meta.class_names)
    score_diff = bin_diff = 0.0
    for img, ref in zip(images, reference):
        blob, _ = detector.preprocess(img)
        out = np.asarray(detector.infer(blob), dtype=np.float32)
        if out.shape != ref.shape:
            raise ParityError(
                f"{path}: output shape {out.shape} differs from the PyTorch model's {ref.shape}; the "
                f"exported graph does not match the model (input size {tuple(meta.input_hw)})"
            )
        score_diff = max(score_diff, float(np.abs(out[:, :num_classes] - ref[:, :num_classes]).max()))
        bin_diff = max(bin_diff, float(np.abs(out[:, num_classes:] - ref[:, num_classes:]).max()))
    runtime_precision = getattr(detector.backend, "precision", None)
    if runtime_precision == "auto":  # ncnn's defaults: fp16 storage where the CPU has it
        runtime_precision = None
    _, (score_bound, bin_bound) = bound_for(meta.precision, runtime_precision)
    return ParityResult(
        path=str(path), format=fmt, precision=meta.precision, backend=detector.backend.name,
        runtime_precision=str(getattr(detector.backend, "precision", "")),
        max_score_diff=score_diff, max_bin_diff=bin_diff, score_bound=score_bound, bin_bound=bin_bound,
        num_images=len(images),
    )


# ------------------------------------------------------------------------------------------------
# accuracy check (--check DATA)


def evaluate_torch(model, meta, dataset, score_thr=0.05, iou_thr=0.6, max_det=100) -> dict:
    """COCO metrics of the PyTorch deploy model on ``dataset`` (the runtime's one evaluation path)."""
    from nanoplus.runtime.evaluate import evaluate_detector

    detector = torch_detector(model, meta, score_thr, iou_thr, max_det)
    return evaluate_detector(detector, dataset, desc="eval pytorch")[0]


def evaluate_file(path, dataset, score_thr=0.05, iou_thr=0.6, max_det=100, threads=None, label="") -> dict:
    """COCO metrics of an exported file on ``dataset`` through the runtime's ``Detector``."""
    from nanoplus.runtime.detector import Detector
    from nanoplus.runtime.evaluate import evaluate_detector

    detector = Detector(str(path), threads=threads, score_thr=score_thr, iou_thr=iou_thr, max_det=max_det)
    return evaluate_detector(detector, dataset, desc=f"eval {label or Path(path).name}")[0]
