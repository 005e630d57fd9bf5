"""Typed, strict configuration.

A config is a YAML file (or a built-in name such as ``nanodet-plus-m_416``) that may start from
another one with ``base: NAME_OR_PATH``; the command line overrides any key as
``section.key=value`` (the value is parsed as YAML, so ``data.input_hw=[320,416]`` works).
Every key is checked against the dataclasses below: an unknown or misspelt key is an error that
names it and suggests the closest valid key.

Values are coerced by the dataclass field's type, in files and overrides alike: YAML 1.1 reads
``1e-4`` (no dot) as a string, so a float field takes any text Python's ``float`` reads (``1e-4``,
``1E-4``, ``.5``, ``5.``, ``-1e-3``), an int field any text ``int`` reads (``1_000``), a bool field
only a YAML boolean. Leading-zero and ``1:30`` integers are not read as octal / base 60 (YAML 1.1
would make ``010`` eight). A value that does not fit names the field, the type and an example.

Sizes are always (height, width): ``data.input_hw``. Upstream NanoDet wrote [w, h] and some of
its tools transposed non-square sizes; here there is only one order.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from nanoplus.atomic import atomic_open
from nanoplus.errors import NanoplusError
from nanoplus.train.schedule import SCHEDULES, WARMUPS

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
    # Ground-truth boxes narrower or lower than this many input pixels after the warp are dropped;
    # 0 keeps every box, as upstream does (README "Training": the measurement that chose 1).
    min_box_size: float = 1.0


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
    workers: int = -1  # data loader processes; -1: none when training on the CPU, one per core on a GPU
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 500
    warmup_ratio: float = 1e-4  # lr starts at lr * warmup_ratio
    warmup: str = "linear"  # linear | exp | constant (upstream's warm-up names)
    min_lr: float = 5e-5  # cosine annealing floor
    schedule: str = "cosine"  # cosine (closed form) | upstream (exactly upstream's recursive one); train/schedule.py
    grad_clip: float = 35.0  # max gradient norm; 0 disables
    ema_decay: float = 0.9998  # 0 disables EMA
    val_interval: int = 10  # epochs between evaluations
    amp: bool = True  # mixed precision, used on CUDA only
    channels_last: bool = True  # NHWC convolutions (backbone, FPNs, heads): faster CPU steps, same arithmetic (NanoDetPlus.use_channels_last)
    winograd: bool = True  # aux head's 3x3 convolutions by Winograd F(2x2,3x3) on CPU, with channels_last (NanoDetPlus.use_winograd)
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


class _ConfigLoader(yaml.SafeLoader):
    """YAML 1.1 safe loading, except that ``010`` and ``1:30`` stay text for the typed coercion
    (as YAML 1.2 reads them) instead of becoming octal 8 and base-60 90."""


_OCTAL_OR_BASE60 = re.compile(r"[-+]?0[0-7_]+|.*:.*")


def _construct_int_or_text(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    if _OCTAL_OR_BASE60.fullmatch(node.value):
        return node.value
    return loader.construct_yaml_int(node)


def _construct_float_or_text(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    if ":" in node.value:
        return node.value
    return loader.construct_yaml_float(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int_or_text)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _construct_float_or_text)


def _parse_yaml(text_or_stream):
    return yaml.load(text_or_stream, Loader=_ConfigLoader)


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = _parse_yaml(f)
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
        parsed = _parse_yaml(value) if value.strip() else ""
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


def _example(tp: Any, default: Any) -> str:
    """A value of type ``tp`` as a user would type it: the field's default when it has one."""
    if default is not None and default != []:
        return yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return _example([a for a in args if a is not type(None)][0], None)
    if origin is list:
        return f"[{_example(args[0], None)}, {_example(args[0], None)}]" if args else "[a, b]"
    return {bool: "true", int: "3", float: "1e-4", str: "name"}.get(tp, "...")


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list in brackets"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(tp, str(tp))


def _wrong(where: str, tp: Any, value: Any, example: str, hint: str = "") -> ConfigError:
    return ConfigError(
        f"'{where}' must be {_kind(tp)}, got {value!r} ({type(value).__name__}){hint}; "
        f"e.g. {example}"
    )


def _to_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def _to_float(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _convert(value: Any, tp: Any, where: str, example: str) -> Any:
    """``value`` as read from YAML, coerced to the field type ``tp`` (a ConfigError if it cannot be)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], where, example)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a section (mapping), got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _wrong(where, tp, value, example)
        return [_convert(v, args[0], f"{where}[{i}]", example) for i, v in enumerate(value)] if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(where, tp, value, example)
    if tp is int:
        number = _to_int(value)
        if number is None:
            raise _wrong(where, tp, value, example)
        return number
    if tp is float:
        number = _to_float(value)
        if number is None:
            raise _wrong(where, tp, value, example)
        return number
    if tp is str:
        if not isinstance(value, str):
            # YAML turned the text into a number or a boolean (``no`` is false); its spelling is lost.
            raise _wrong(where, tp, value, example, "; put it in quotes")
        return value
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{where}'{hint} (valid keys here: {', '.join(names)})")
        example = ""
        if not dataclasses.is_dataclass(hints[key]):
            example = f"{where}={_example(hints[key], _field_default(fields[key]))}"
        kwargs[key] = _convert(value, hints[key], where, example)
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
    if d.augment.min_box_size < 0:
        raise ConfigError(f"data.augment.min_box_size must be >= 0 (0 keeps every box), got {d.augment.min_box_size}")
    for key, allowed in (("schedule", SCHEDULES), ("warmup", WARMUPS)):
        value = getattr(cfg.train, key)
        if value not in allowed:
            raise ConfigError(f"train.{key} must be one of {', '.join(allowed)}, got '{value}'; "
                              f"e.g. train.{key}={allowed[0]}")
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
