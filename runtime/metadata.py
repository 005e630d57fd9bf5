"""What a deployed NanoDet-Plus model is: the metadata every exported file carries.

Exporters write it (ONNX ``metadata_props`` key ``nanoplus``, OpenVINO ``rt_info['nanoplus']``,
and a sidecar ``<model>.json`` next to any model file); runtimes read it so that nothing hard-codes
a class count, an input size or a layout. Foreign models (upstream ONNX, published ncnn files) have
no metadata: ``ModelMeta.for_foreign_model`` builds one from what can be detected plus the user's
flags.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

from nanoplus.atomic import write_text_atomic
from nanoplus.errors import NanoplusError

METADATA_KEY = "nanoplus"
FORMAT_VERSION = 1

DEFAULT_MEAN_BGR = (103.53, 116.28, 123.675)
DEFAULT_STD_BGR = (57.375, 57.12, 58.395)


# fields written only when they hold something (see ModelMeta.to_json)
OPTIONAL_FIELDS = ("level_outputs", "notes")


class MetadataError(NanoplusError, ValueError):
    """Metadata that is missing a field or has a wrong value; the message names the file and field."""


@dataclass
class ModelMeta:
    class_names: list[str]
    input_hw: list[int]  # (height, width) of the network input
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    reg_max: int = 7
    mean: list[float] = field(default_factory=lambda: list(DEFAULT_MEAN_BGR))  # in colour_order
    std: list[float] = field(default_factory=lambda: list(DEFAULT_STD_BGR))
    color_order: str = "BGR"  # channel order the network expects
    resize_mode: str = "stretch"  # "stretch" (upstream) or "letterbox" (keep ratio, pad bottom/right)
    input_dtype: str = "float32"  # "float32": normalised NCHW; "uint8": mean/std folded into the graph
    score_activation: str = "sigmoid"  # "sigmoid": scores already in [0,1]; "none": raw logits
    layout: str = "NC"  # output (N, C+4*(reg_max+1)) "NC", or channels first (C+4*(reg_max+1), N) "CN"
    input_name: Optional[str] = None  # graph input / ncnn blob names where the format needs them
    output_name: Optional[str] = None
    model_name: str = ""  # e.g. nanodet-plus-m_416
    precision: str = "fp32"  # storage/compute precision of the file: fp32, fp16, int8
    format_version: int = FORMAT_VERSION
    # For programs other than nanoplus (written only when not empty): an ncnn file's per-level
    # head outputs, for decoders that read level by level (ncnn's nanodetplus_pnnx example):
    # [{"stride": 8, "blob": "stride8", "shape": "CHW", "scores": "logits"}, ...]; and what a
    # program must know to get this file's answers (sizes it accepts, the precision to pin).
    level_outputs: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        return self.num_classes + 4 * (self.reg_max + 1)

    def num_points(self, input_hw: Optional[tuple[int, int]] = None) -> int:
        h, w = input_hw or self.input_hw
        return sum(-(-h // s) * -(-w // s) for s in self.strides)

    def validate(self, source: str = "metadata") -> "ModelMeta":
        def bad(name, msg):
            raise MetadataError(f"{source}: field '{name}' {msg}")

        if not self.class_names:
            bad("class_names", "is empty; a model needs at least one class name")
        if len(self.input_hw) != 2 or any(int(v) <= 0 for v in self.input_hw):
            bad("input_hw", f"must be [height, width] with positive values, got {self.input_hw}")
        if not self.strides or any(int(s) <= 0 for s in self.strides):
            bad("strides", f"must be positive integers, got {self.strides}")
        if self.reg_max < 1:
            bad("reg_max", f"must be >= 1, got {self.reg_max}")
        if len(self.mean) != 3 or len(self.std) != 3:
            bad("mean/std", "need three values each")
        for name, allowed in (
            ("color_order", ("BGR", "RGB")),
            ("resize_mode", ("stretch", "letterbox")),
            ("input_dtype", ("float32", "uint8")),
            ("score_activation", ("sigmoid", "none")),
            ("layout", ("NC", "CN")),
        ):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {allowed}, got {getattr(self, name)!r}")
        for level in self.level_outputs:
            if not isinstance(level, dict) or not {"stride", "blob"} <= set(level):
                bad("level_outputs", f"entries need 'stride' and 'blob', got {level!r}")
        if not all(isinstance(note, str) for note in self.notes):
            bad("notes", "must be a list of texts")
        return self

    # -- serialisation ---------------------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        for key in OPTIONAL_FIELDS:  # absent when empty: readers of format 1 before them still read the file
            if not data[key]:
                del data[key]
        return json.dumps(data, indent=1)

    @classmethod
    def from_dict(cls, data: dict, source: str = "metadata") -> "ModelMeta":
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: metadata must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MetadataError(f"{source}: unknown metadata field(s) {unknown}; known: {sorted(known)}")
        if "class_names" not in data or "input_hw" not in data:
            raise MetadataError(f"{source}: metadata needs at least 'class_names' and 'input_hw'")
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise MetadataError(
                f"{source}: metadata format_version {version} is newer than this nanoplus understands "
                f"({FORMAT_VERSION}); upgrade nanoplus"
            )
        return cls(**data).validate(source)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ModelMeta":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetadataError(f"{source}: metadata is not valid JSON ({e})") from None
        return cls.from_dict(data, source)

    @classmethod
    def for_foreign_model(
        cls,
        num_classes: int,
        input_hw: tuple[int, int],
        class_names: Optional[list[str]] = None,
        **overrides,
    ) -> "ModelMeta":
        names = list(class_names) if class_names else [f"class{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise MetadataError(
                f"{len(names)} class names given for a model with {num_classes} classes; "
                "pass a names file with one name per class"
            )
        return cls(class_names=names, input_hw=list(input_hw), **overrides).validate("foreign model")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.json``; for ncnn ``model.param`` -> ``model.json``."""
    p = Path(model_path)
    return p.with_suffix(".json")


def write_sidecar(meta: ModelMeta, model_path: str | os.PathLike) -> Path:
    """Write ``<model>.json`` atomically next to the model file."""
    return write_text_atomic(sidecar_path(model_path), meta.to_json())


def read_sidecar(model_path: str | os.PathLike) -> Optional[ModelMeta]:
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MetadataError(f"{path}: the metadata sidecar is not UTF-8 text (byte {e.start}: {e.reason}); "
                            "restore it from the export, or delete it if the model carries its own metadata") from None
    except OSError as e:
        raise MetadataError(f"{path}: cannot read the metadata sidecar ({e.strerror or e})") from None
    return ModelMeta.from_json(text, source=str(path))


def meta_from_config(cfg, class_names: Sequence[str]) -> ModelMeta:
    """The deploy metadata a model trained with ``cfg`` (a ``nanoplus.train.config.Config``, read by
    attribute only: the runtime does not import train) gets; validation pre-processes with it."""
    return ModelMeta(
        class_names=list(class_names),
        input_hw=list(cfg.data.input_hw),
        strides=list(cfg.model.head.strides),
        reg_max=cfg.model.head.reg_max,
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        resize_mode="letterbox" if cfg.data.keep_ratio else "stretch",
        score_activation="none",
        model_name=cfg.name,
    )
