"""``Detector``: a deployed NanoDet-Plus model as one callable, whatever engine runs it.

    det = Detector("model.onnx")                  # or .xml, .param (ncnn), a checkpoint, a folder
    dets = det("dog.jpg")                          # boxes in original pixels, scores, classes

Stages (``bench`` times them separately): ``preprocess(img) -> (blob, M)``; ``infer(blob) -> raw``
(N, C+32) in NC layout with sigmoid scores; ``postprocess(raw, M, src_hw) -> Detections``.
``det(img)`` runs the same three, except that it hands the engine's output to decoding as it is
(a channels-first output is only viewed transposed, and logits are thresholded in logit space),
so the sigmoid over all N x C scores that ``infer`` pays for is skipped.

Where the model's description comes from, first found wins:
1. nanoplus metadata inside the file (ONNX ``metadata_props['nanoplus']``, OpenVINO
   ``rt_info['nanoplus']``), or a checkpoint's config (torch backend);
2. the sidecar ``<model>.json``;
3. a foreign NanoDet-Plus model (upstream's ONNX, published ncnn files): the input size from the
   file's static input shape, the ``input_size`` flag or a number in the file name (with a
   notice); one probe run on a blank image gives the layout ((N, C+32) or (C+32, N)), the class
   count (output width - 4*(reg_max+1)) and logits vs sigmoid (class values outside [0, 1] can
   only be logits). Flags override every detected value; 80 classes get the COCO names.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from nanoplus.errors import NanoplusError
from nanoplus.runtime.backends import choose_backend, open_backend, resolve_model_path
from nanoplus.runtime.coco import COCO_CLASS_NAMES
from nanoplus.runtime.images import ImageReadError, as_bgr_uint8, read_image  # noqa: F401 (ImageReadError: part of this API)
from nanoplus.runtime.metadata import MetadataError, ModelMeta, read_sidecar
from nanoplus.runtime.postprocess import Decoder, ModelOutputError, sigmoid
from nanoplus.runtime.preprocess import Preprocessor, boxes_to_original, diagonal_inverse

_UINT8 = np.dtype(np.uint8)

log = logging.getLogger("nanoplus.detector")

SCORE_ACTIVATION_ALIASES = {"sigmoid": "sigmoid", "none": "none", "logits": "none", "logit": "none"}


@dataclass
class Detections:
    """Detections for one image, best first.

    boxes: (k, 4) float32 x1, y1, x2, y2 in original image pixels; scores: (k,) float32;
    class_ids: (k,) int64 class indices; class_names: k names (``names[class_id]``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self, decimals: int = 2) -> list[dict]:
        """JSON-ready: [{"box": [x1, y1, x2, y2], "score", "class_id", "class_name"}, ...]."""
        return [
            {"box": [round(float(v), decimals) for v in box], "score": round(float(score), 5),
             "class_id": int(cid), "class_name": name}
            for box, score, cid, name in zip(self.boxes, self.scores, self.class_ids, self.class_names)
        ]

    def summary(self, limit: int = 6) -> str:
        """e.g. '3 detections: dog 0.93, bicycle 0.87, truck 0.61'."""
        if not len(self):
            return "no detections"
        shown = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.class_names[:limit], self.scores[:limit]))
        more = f", ... (+{len(self) - limit})" if len(self) > limit else ""
        return f"{len(self)} detection{'s' if len(self) != 1 else ''}: {shown}{more}"


def parse_input_size(value) -> Optional[tuple[int, int]]:
    """416 / "416" -> (416, 416); "320x416", "320,416" or (320, 416) -> (height, width)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, np.integer)):
        values = [int(value)] * 2
    elif isinstance(value, str):
        parts = [p for p in re.split(r"[x,*\s]+", value.strip().lower()) if p]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= 2
    else:
        values = [int(v) for v in value]
    if len(values) != 2 or min(values) <= 0:
        raise NanoplusError(f"input size '{value}' is not a size; write 416 or HEIGHTxWIDTH such as 320x416")
    return values[0], values[1]


def input_size_from_name(path: Path) -> Optional[int]:
    """A square input size written in a file name (nanodet-plus-m_416 -> 416), if exactly one
    number there is a plausible size (a multiple of 32 from 64 to 4096)."""
    numbers = {int(n) for n in re.findall(r"(?<![\d.])(\d{2,4})(?![\d.])", path.stem)}
    sizes = sorted(n for n in numbers if 64 <= n <= 4096 and n % 32 == 0)
    return sizes[0] if len(sizes) == 1 else None


def read_class_names(value) -> Optional[list[str]]:
    """Class names from a list, or from a text file with one name per line."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise NanoplusError(f"{path}: class names file not found (one class name per line)")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise NanoplusError(f"{path}: class names file is empty (one class name per line)")
        return names
    return [str(v) for v in value]


class Detector:
    """A NanoDet-Plus model file (+ engine) with its pre- and post-processing.

    model_path: .onnx, .xml (OpenVINO IR), .param (ncnn), a nanoplus checkpoint, or a folder with
    one of them. backend: "auto" (from the file type), "onnxruntime", "openvino", "ncnn", "torch".
    threads: engine threads (None: the engine's default). precision: OpenVINO fp32 (default) /
    fp16 / bf16 / auto; ncnn auto (default) / fp32; torch fp32 (default) / bf16 (autocast);
    onnxruntime fp32 (the file's own).
    Foreign-model flags (override what the file says or what is detected): input_size (416 or
    (H, W)), class_names (list or names file), layout ("NC" | "CN"), score_activation ("sigmoid" |
    "none"/"logits"), input_name / output_name (ncnn blobs), strides, reg_max.

    Threads: one Detector may be shared by several threads, with every backend; calls run
    concurrently (OpenVINO: one infer request per thread) and each gets its own image's
    Detections. ``infer`` returns an array the caller owns. Changing attributes (thresholds,
    ``meta``) while other threads call it is not guarded. The pre-processing and decoding settings
    of ``meta`` are read when the Detector is made: for another input size or class count, make
    a new Detector.
    """

    def __init__(
        self,
        model_path: Union[str, os.PathLike],
        backend: str = "auto",
        threads: Optional[int] = None,
        score_thr: float = 0.35,
        iou_thr: float = 0.6,
        max_det: int = 100,
        multi_label: bool = True,
        *,
        precision: Optional[str] = None,
        input_size=None,
        class_names=None,
        layout: Optional[str] = None,
        score_activation: Optional[str] = None,
        input_name: Optional[str] = None,
        output_name: Optional[str] = None,
        strides: Optional[Sequence[int]] = None,
        reg_max: Optional[int] = None,
    ):
        self.score_thr = float(score_thr)
        self.iou_thr = float(iou_thr)
        self.max_det = int(max_det)
        self.multi_label = bool(multi_label)
        path = resolve_model_path(model_path)
        self.model_path = path
        if score_activation is not None:
            if score_activation not in SCORE_ACTIVATION_ALIASES:
                raise NanoplusError(f"score activation '{score_activation}': use 'sigmoid' or 'logits'")
            score_activation = SCORE_ACTIVATION_ALIASES[score_activation]
        if layout is not None and layout not in ("NC", "CN"):
            raise NanoplusError(f"layout '{layout}': use 'NC' for (points, channels) or 'CN' for (channels, points)")

        sidecar, sidecar_error = None, None
        if choose_backend(path, backend) != "torch":
            try:
                sidecar = read_sidecar(path)
            except MetadataError as e:  # fatal only if the file has no metadata of its own
                sidecar_error = e
        self.backend = open_backend(
            path, backend, threads, precision,
            input_name=input_name or (sidecar.input_name if sidecar else None),
            output_name=output_name or (sidecar.output_name if sidecar else None),
        )

        meta = getattr(self.backend, "meta", None)
        if meta is None and self.backend.embedded_meta:
            meta = ModelMeta.from_json(self.backend.embedded_meta, source=f"{path} (embedded nanoplus metadata)")
        if meta is None:
            if sidecar_error is not None:
                raise sidecar_error
            meta = sidecar
        elif sidecar_error is not None:
            log.warning(f"{sidecar_error}; ignored: {path.name} carries its own metadata")
        overrides = {
            "input_hw": list(parse_input_size(input_size)) if input_size is not None else None,
            "class_names": read_class_names(class_names),
            "layout": layout,
            "score_activation": score_activation,
            "strides": list(strides) if strides else None,
            "reg_max": reg_max,
        }
        # a foreign file's metadata is guessed: its precision field says nothing about the file
        self.has_metadata = meta is not None
        if meta is None:
            meta = self._describe_foreign_model(path, overrides)
        else:
            for key, value in overrides.items():
                if value is not None:
                    setattr(meta, key, value)
            meta.validate(f"{path} metadata with the given flags")
        self._set_meta(meta)

    @classmethod
    def from_backend(cls, backend, meta: ModelMeta, score_thr: float = 0.35, iou_thr: float = 0.6,
                     max_det: int = 100, multi_label: bool = True) -> "Detector":
        """A Detector over an opened backend and its metadata, e.g. a torch model in memory
        (``backends.TorchBackend.from_model``): the same pre-processing, decoding and NMS as a file."""
        det = cls.__new__(cls)
        det.score_thr, det.iou_thr, det.max_det = float(score_thr), float(iou_thr), int(max_det)
        det.multi_label = bool(multi_label)
        det.model_path = Path(meta.model_name or "model")
        det.backend = backend
        det.has_metadata = True  # given by the caller
        meta.validate(f"metadata of the {backend.name} model in memory")
        det._set_meta(meta)
        return det

    def _set_meta(self, meta: ModelMeta) -> None:
        meta.input_name = meta.input_name or self.backend.input_name
        meta.output_name = meta.output_name or self.backend.output_name
        self.meta = meta
        if self.backend.input_hw and tuple(self.backend.input_hw) != tuple(meta.input_hw):
            raise MetadataError(
                f"{self.model_path}: the model's input is {self.backend.input_hw[0]}x{self.backend.input_hw[1]} but "
                f"its metadata (or --input-size) says {meta.input_hw[0]}x{meta.input_hw[1]}; fix the size"
            )
        self._num_points = meta.num_points()
        self._num_channels = meta.num_channels
        self._scores_are_sigmoid = meta.score_activation == "sigmoid"
        # the per-image steps with the model's settings read once (see Preprocessor, Decoder)
        self._preprocessor = Preprocessor(meta)
        self._decoder = Decoder(meta.input_hw, meta.strides, meta.reg_max, meta.num_classes)

    # -- model description -----------------------------------------------------------------------
    def _describe_foreign_model(self, path: Path, overrides: dict) -> ModelMeta:
        strides = overrides["strides"] or [8, 16, 32, 64]
        reg_max = overrides["reg_max"] if overrides["reg_max"] is not None else 7
        input_hw = overrides["input_hw"] or self.backend.input_hw
        if input_hw is None:
            size = input_size_from_name(path)
            if size is None:
                raise MetadataError(
                    f"{path}: no nanoplus metadata (no {path.with_suffix('.json').name} beside it) and the "
                    "input size cannot be detected; pass it: --input-size 416 (or HEIGHTxWIDTH)"
                )
            input_hw = (size, size)
            log.warning(f"{path.name}: no metadata; input size {size}x{size} taken from the file name "
                        "(pass --input-size to change it)")
        input_hw = [int(v) for v in input_hw]

        # One probe run on a blank (mean-coloured) image: the output shape and score range tell
        # the layout, class count and activation.
        output = self._engine_output(np.zeros((1, 3, *input_hw), dtype=np.float32))
        num_points = sum(-(-input_hw[0] // s) * -(-input_hw[1] // s) for s in strides)
        num_bins = 4 * (reg_max + 1)
        layout = overrides["layout"]
        if layout is None:
            layout = "NC" if output.shape[0] == num_points else "CN" if output.shape[1] == num_points else None
        points, width = (output.shape[0], output.shape[1]) if layout == "NC" else (output.shape[1], output.shape[0])
        if layout is None or points != num_points or width - num_bins < 1:
            raise ModelOutputError(
                f"{path}: output of shape {tuple(output.shape)} does not look like NanoDet-Plus with input "
                f"{input_hw[0]}x{input_hw[1]} and strides {strides}: expected ({num_points}, classes + {num_bins}) "
                f"or (classes + {num_bins}, {num_points}). Check --input-size (and --output-name for ncnn)"
            )
        num_classes = width - num_bins
        activation = overrides["score_activation"]
        if activation is None:
            cls = output[:, :num_classes] if layout == "NC" else output[:num_classes]
            inside = bool(np.all((cls >= 0) & (cls <= 1)))
            activation = "sigmoid" if inside else "none"
        names = overrides["class_names"]
        if names is None and num_classes == len(COCO_CLASS_NAMES):
            names = list(COCO_CLASS_NAMES)
            log.info(f"{path.name}: 80 classes, no names given: using the COCO class names")
        return ModelMeta.for_foreign_model(
            num_classes, input_hw, class_names=names, strides=list(strides), reg_max=reg_max,
            layout=layout, score_activation=activation, model_name=path.stem,
        )

    def _engine_output(self, blob: np.ndarray, keep: bool = True) -> np.ndarray:
        """Run the engine; its output as a 2-D array (points x channels in either order).
        keep=False: may be the engine's buffer, overwritten by the next run."""
        try:
            output = self.backend.run(blob, keep=keep)
        except NanoplusError:
            raise
        except Exception as e:  # an engine refusing the input: most often a wrong size
            hint = ("check --input-size" if self.backend.input_hw is None or tuple(self.backend.input_hw) != blob.shape[2:]
                    else "the input's size matches the file, so the engine itself failed: please report it")
            raise ModelOutputError(f"{self.model_path}: the model failed to run on a {blob.shape} input ({e}); {hint}") from None
        output = np.asarray(output)
        while output.ndim > 2 and output.shape[0] == 1:
            output = output[0]
        if output.ndim != 2:
            raise ModelOutputError(f"{self.model_path}: output of shape {tuple(output.shape)} is not a 2-D "
                                   "NanoDet-Plus output (points x channels)")
        return output

    # -- the three stages ------------------------------------------------------------------------
    def preprocess(self, img_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, 3) BGR uint8 (or grey, BGRA, uint16: see ``images.as_bgr_uint8``) ->
        (blob (1, 3, H, W), M (3, 3) original->input, read-only: shared by the images of one size)."""
        # the usual image goes straight on (each check costs time right after an inference)
        if not (type(img_bgr) is np.ndarray and img_bgr.dtype is _UINT8 and img_bgr.ndim == 3 and img_bgr.shape[2] == 3
                and img_bgr.size):
            img_bgr = as_bgr_uint8(img_bgr)
        return self._preprocessor(img_bgr)

    def _run_nc(self, blob: np.ndarray, keep: bool = True) -> np.ndarray:
        """The engine's output as an (N, C+32) array (a transposed view for CN models), scores as
        the model emits them. keep=False: valid until the next run (see backends.py)."""
        output = self._engine_output(blob, keep)
        expected = (self._num_points, self._num_channels) if self.meta.layout == "NC" else (self._num_channels, self._num_points)
        if output.shape != expected:
            raise ModelOutputError(
                f"{self.model_path}: output shape {tuple(output.shape)}, but the metadata ({self.meta.num_classes} "
                f"classes, input {self.meta.input_hw[0]}x{self.meta.input_hw[1]}, layout {self.meta.layout}) "
                f"expects {expected}; fix the metadata or the --input-size / --layout flags"
            )
        return output if self.meta.layout == "NC" else output.T

    def infer(self, blob: np.ndarray) -> np.ndarray:
        """blob (1, 3, H, W) -> raw (N, C + 4*(reg_max+1)) float32 in NC layout, sigmoid scores."""
        raw = self._run_nc(blob)
        if self._scores_are_sigmoid:
            return raw
        c = self.meta.num_classes
        if self.meta.layout == "CN":  # keep the engine's channels-first memory; return a view
            out = np.array(raw.T, dtype=np.float32)
            out[:c] = sigmoid(out[:c])
            return out.T
        out = np.array(raw, dtype=np.float32)
        out[:, :c] = sigmoid(out[:, :c])
        return out

    def postprocess(self, raw: np.ndarray, matrix: np.ndarray, src_hw: Sequence[int],
                    scores_are_sigmoid: bool = True) -> Detections:
        """raw (N, C+32) as ``infer`` returns it -> Detections in original pixels."""
        # preprocess's matrices are diagonal: the way back is part of the decoding call (known
        # without looking into the matrix when it is the one preprocess just made)
        last = self._preprocessor.last
        to_original = last[3] if matrix is last[2] and tuple(src_hw) == last[0] else diagonal_inverse(matrix, src_hw)
        boxes, scores, labels = self._decoder(raw, self.score_thr, self.iou_thr, self.max_det, scores_are_sigmoid,
                                              self.multi_label, to_original)
        if to_original is None:
            boxes = boxes_to_original(boxes, matrix, src_hw)
        names = self.meta.class_names
        return Detections(boxes=boxes, scores=scores, class_ids=labels, class_names=[names[i] for i in labels.tolist()])

    def __call__(self, image: Union[np.ndarray, str, os.PathLike]) -> Detections:
        """An image (BGR uint8 (h, w, 3) array, or a path) -> Detections. Grey (h, w) / (h, w, 1),
        BGRA and uint16 arrays are converted; any other shape or dtype is an ``ImageArrayError``
        saying what is expected (see ``images.as_bgr_uint8``)."""
        img = read_image(image) if isinstance(image, (str, os.PathLike, bytes)) else as_bgr_uint8(image)
        blob, matrix = self.preprocess(img)
        # the raw output is decoded into new arrays before the next run: no copy of it is needed
        raw = self._run_nc(blob, keep=False)
        return self.postprocess(raw, matrix, img.shape[:2], scores_are_sigmoid=self._scores_are_sigmoid)

    def describe(self) -> str:
        """One line: model, classes, input size, engine."""
        m, b = self.meta, self.backend
        return (f"{m.model_name or self.model_path.name}: {m.num_classes} classes, input {m.input_hw[0]}x{m.input_hw[1]} "
                f"({m.resize_mode}), {b.name} {b.version} {b.precision}")

    def __repr__(self) -> str:
        return f"Detector({self.describe()})"
