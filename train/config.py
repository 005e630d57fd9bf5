"""Typed, strict configuration.

A config is a YAML file (or a built-in name such as ``nanodet-plus-m_416``) that may start from
another one with ``base: NAME_OR_PATH``; the command line overrides any key as
``section.key=value`` (the value is parsed as YAML, so ``data.input_hw=[320,416]`` works).
Every key is checked against the dataclasses below: an unknown or misspelt key is an error that
names it and suggests the closest valid key.

Sizes are always (height, width): ``data.input_hw``. Upstream NanoDet wrote [w, h] and some of
its tools transposed non-square sizes; here there is only one order.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from nanoplus.atomic import atomic_open
from nanoplus.errors import NanoplusError

BUILTIN_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(NanoplusError, ValueError):
    """A config file or override that does not fit the schema; the message says where and how."""


@dataclass
class BackboneConfig:
    name: str = "ShuffleNetV2"  # "ShuffleNetV2" or "MobileNetV2"
    model_size: str = "1.0x"  # ShuffleNetV2: 0.5x, 1.0x, 1.5x; MobileNetV2: 1.0x
    out_stages: list[int] = field(default_factory=lambda: [2, 3, 4])
    activation: str = "LeakyReLU"
    pretrained_weights: Optional[str] = None  # local ImageNet state dict; never downloaded


@dataclass
class FPNConfig:
    in_channels: list[int] = field(default_factory=lambda: [116, 232, 464])
    out_channels: int = 96
    kernel_size: int = 5
    num_extra_level: int = 1
    use_depthwise: bool = True
    activation: str = "LeakyReLU"


@dataclass
class HeadConfig:
    feat_channels: int = 96
    stacked_convs: int = 2
    kernel_size: int = 5
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    reg_max: int = 7
    activation: str = "LeakyReLU"


@dataclass
class AuxHeadConfig:
    feat_channels: int = 192  # input is concat(main FPN, aux FPN): 2 x fpn.out_channels
    stacked_convs: int = 4
    num_groups: int = 32  # GroupNorm groups
    activation: str = "LeakyReLU"


@dataclass
class LossConfig:
    qfl_weight: float = 1.0
    qfl_beta: float = 2.0
    giou_weight: float = 2.0
    dfl_weight: float = 0.25


@dataclass
class AssignerConfig:
    topk: int = 13
    iou_factor: float = 3.0


@dataclass
class ModelConfig:
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    aux_head: AuxHeadConfig = field(default_factory=AuxHeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    detach_epoch: int = 10  # from this epoch on the aux branch sends no gradient to backbone/FPN


@dataclass
class AugmentConfig:
    """One random perspective warp per sample, then colour jitter (SPEC §2 training recipe)."""

    perspective: float = 0.0
    scale: list[float] = field(default_factory=lambda: [0.6, 1.4])
    stretch: list[list[float]] = field(default_factory=lambda: [[0.8, 1.2], [0.8, 1.2]])  # [w range, h range]
    rotation: float = 0.0  # degrees
    shear: float = 0.0  # degrees
    translate: float = 0.2
    flip: float = 0.5
    brightness: float = 0.2
    contrast: list[float] = field(default_factory=lambda: [0.6, 1.4])
    saturation: list[float] = field(default_factory=lambda: [0.5, 1.2])
    colour_prob: float = 0.5  # each colour jitter is applied with this probability


@dataclass
class DataConfig:
    input_hw: list[int] = field(default_factory=lambda: [416, 416])  # (height, width), multiples of 32
    keep_ratio: bool = False  # False: stretch (upstream); True: letterbox
    mean: list[float] = field(default_factory=lambda: [103.53, 116.28, 123.675])  # BGR
    std: list[float] = field(default_factory=lambda: [57.375, 57.12, 58.395])  # BGR
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 96  # total over all processes
    workers: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 500
    warmup_ratio: float = 1e-4  # lr starts at lr * warmup_ratio
    min_lr: float = 5e-5  # cosine annealing floor
    grad_clip: float = 35.0  # max gradient norm; 0 disables
    ema_decay: float = 0.9998  # 0 disables EMA
    val_interval: int = 10  # epochs between evaluations
    amp: bool = True  # mixed precision, used on CUDA only
    seed: int = 0
    freeze: list[str] = field(default_factory=list)  # module prefixes, e.g. ["backbone"]


@dataclass
class EvalConfig:
    score_thr: float = 0.05
    iou_thr: float = 0.6
    max_det: int = 100


@dataclass
class Config:
    name: str = "nanodet-plus-m_416"
    class_names: Optional[list[str]] = None  # taken from the data when not given
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Loading


def builtin_config_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_CONFIG_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def _resolve_source(name_or_path: str, relative_to: Optional[Path] = None) -> Path:
    candidate = Path(name_or_path)
    if relative_to is not None and not candidate.is_absolute():
        rel = relative_to.parent / candidate
        if rel.is_file():
            return rel
    if candidate.is_file():
        return candidate
    builtin = BUILTIN_CONFIG_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a built-in config; "
        f"built-in configs: {', '.join(builtin_config_names())}"
    )


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_raw(name_or_path: str, relative_to: Optional[Path] = None, seen: tuple = ()) -> dict:
    path = _resolve_source(name_or_path, relative_to).resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back on itself: {' -> '.join(map(str, seen + (path,)))}")
    raw = _read_yaml(path)
    own_name = raw.get("name", path.stem)
    base_name = raw.pop("base", None)
    if base_name is not None:
        base = _load_raw(str(base_name), relative_to=path, seen=seen + (path,))
        raw = _deep_merge(base, raw)
    raw["name"] = own_name
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.num_classes=3' -> (['model', 'num_classes'], 3)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. model.num_classes=3")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {} if k not in node or node[k] is None else node[k]
                if not isinstance(node[k], dict):
                    raise ConfigError(f"override '{text}': '{k}' is a value, not a section")
            node = node[k]
        node[keys[-1]] = value
    return raw


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a section (mapping), got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
        return value
    return value


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{where}'{hint} (valid keys here: {', '.join(names)})")
        kwargs[key] = _convert(value, hints[key], where)
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    """Cross-field checks that a single key's type cannot express."""
    m, d = cfg.model, cfg.data
    if m.num_classes < 1:
        raise ConfigError(f"model.num_classes must be >= 1, got {m.num_classes}")
    if cfg.class_names is not None and len(cfg.class_names) != m.num_classes:
        raise ConfigError(
            f"class_names has {len(cfg.class_names)} names but model.num_classes is {m.num_classes}; "
            "make them agree (or leave class_names out to take the names from the data)"
        )
    if len(d.input_hw) != 2 or any(v <= 0 or v % 32 for v in d.input_hw):
        raise ConfigError(f"data.input_hw must be [height, width], both positive multiples of 32; got {d.input_hw}")
    if m.backbone.name not in ("ShuffleNetV2", "MobileNetV2"):
        raise ConfigError(f"model.backbone.name must be ShuffleNetV2 or MobileNetV2, got '{m.backbone.name}'")
    if len(m.fpn.in_channels) != len(m.backbone.out_stages):
        raise ConfigError(
            f"model.fpn.in_channels has {len(m.fpn.in_channels)} entries but model.backbone.out_stages "
            f"has {len(m.backbone.out_stages)}; there is one FPN input per backbone output"
        )
    num_levels = len(m.fpn.in_channels) + m.fpn.num_extra_level
    if len(m.head.strides) != num_levels:
        raise ConfigError(
            f"model.head.strides has {len(m.head.strides)} entries but the FPN gives {num_levels} levels "
            f"({len(m.fpn.in_channels)} inputs + {m.fpn.num_extra_level} extra)"
        )
    if m.aux_head.feat_channels % m.aux_head.num_groups:
        raise ConfigError(
            f"model.aux_head.feat_channels ({m.aux_head.feat_channels}) must be divisible by "
            f"model.aux_head.num_groups ({m.aux_head.num_groups})"
        )
    if len(d.mean) != 3 or len(d.std) != 3 or any(s <= 0 for s in d.std):
        raise ConfigError("data.mean and data.std need 3 values each (B, G, R), std > 0")
    if cfg.train.batch_size < 1 or cfg.train.epochs < 1:
        raise ConfigError("train.batch_size and train.epochs must be >= 1")
    return cfg


def load_config(name_or_path: str = "nanodet-plus-m_416", overrides: Optional[list[str]] = None) -> Config:
    """Built-in name or YAML path, then ``key=value`` overrides; strict and validated."""
    raw = _load_raw(str(name_or_path))
    raw = apply_overrides(raw, list(overrides or []))
    return validate(_build(Config, raw))


def config_from_dict(raw: dict) -> Config:
    """Rebuild a config saved in a checkpoint (as ``Config.to_dict()``)."""
    return validate(_build(Config, raw))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    with atomic_open(path) as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
