"""Config values as users type them: overrides and YAML files coerced by the field's type, and
clear errors (field, type, example) for values that really are wrong."""
from __future__ import annotations

import pytest

from nanoplus.errors import NanoplusError
from nanoplus.train.config import load_config

# (override, dotted field, expected value). The expectations are written out by hand.
ACCEPTED = [
    ("train.lr=1e-4", "train.lr", 0.0001),
    ("train.lr=1E-4", "train.lr", 0.0001),
    ("train.lr=.5", "train.lr", 0.5),
    ("train.lr=5.", "train.lr", 5.0),
    ("train.lr=-1e-3", "train.lr", -0.001),
    ("train.lr=+2.5e+2", "train.lr", 250.0),
    ("train.lr=3", "train.lr", 3.0),
    ("train.lr= 1e-4 ", "train.lr", 0.0001),
    ("train.min_lr=0.00005", "train.min_lr", 0.00005),
    ("train.warmup_steps=1_000", "train.warmup_steps", 1000),
    ("train.warmup_steps=1e3", "train.warmup_steps", 1000),
    ("train.warmup_steps=300.0", "train.warmup_steps", 300),
    ("train.epochs=010", "train.epochs", 10),  # decimal, not YAML 1.1's octal 8
    ("data.input_hw=[320,416]", "data.input_hw", [320, 416]),
    ("data.input_hw=[320, 416]", "data.input_hw", [320, 416]),
    ("data.input_hw=[ 320 ,416 ]", "data.input_hw", [320, 416]),
    ("data.mean=[1e-1,2E1,.5]", "data.mean", [0.1, 20.0, 0.5]),
    ("data.augment.stretch=[[0.9,1.1],[1e0,2]]", "data.augment.stretch", [[0.9, 1.1], [1.0, 2.0]]),
    ("data.keep_ratio=true", "data.keep_ratio", True),
    ("data.keep_ratio=True", "data.keep_ratio", True),
    ("data.keep_ratio=yes", "data.keep_ratio", True),
    ("data.keep_ratio=on", "data.keep_ratio", True),
    ("data.keep_ratio=false", "data.keep_ratio", False),
    ("data.keep_ratio=No", "data.keep_ratio", False),
    ("data.keep_ratio=off", "data.keep_ratio", False),
    ("train.freeze=[backbone,fpn]", "train.freeze", ["backbone", "fpn"]),
    ("model.backbone.pretrained_weights=weights/imagenet.pth", "model.backbone.pretrained_weights",
     "weights/imagenet.pth"),
    ("model.backbone.pretrained_weights=null", "model.backbone.pretrained_weights", None),
]


def _get(cfg, dotted):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("override, field, expected", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_override_is_coerced_by_field_type(override, field, expected):
    value = _get(load_config("nanodet-plus-m_416", [override]), field)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, list) and expected and isinstance(expected[0], list):
        assert all(type(v) is float for row in value for v in row)


@pytest.mark.parametrize("override, field, expected", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_yaml_file_is_coerced_by_field_type(tmp_path, override, field, expected):
    """The same text written in a config file gives the same value as on the command line."""
    key, text = override.split("=", 1)
    *sections, leaf = key.split(".")
    lines = ["base: nanodet-plus-m_416"]
    for depth, section in enumerate(sections):
        lines.append("  " * depth + f"{section}:")
    lines.append("  " * len(sections) + f"{leaf}: {text.strip()}")
    path = tmp_path / "mine.yaml"
    path.write_text("\n".join(lines) + "\n")
    value = _get(load_config(str(path)), field)
    assert value == expected
    assert type(value) is type(expected)


# (override, words the message must contain: the field, the type expected, an example)
REFUSED = [
    ("train.lr=abc", ["'train.lr'", "a finite number", "e.g. train.lr=0.001"]),
    ("train.lr=1e-4x", ["'train.lr'", "a finite number", "e.g. train.lr="]),
    ("train.lr=nan", ["'train.lr'", "a finite number"]),
    ("train.lr=.inf", ["'train.lr'", "a finite number"]),
    ("train.lr=true", ["'train.lr'", "a finite number"]),
    ("train.lr=[1e-4]", ["'train.lr'", "a finite number"]),
    ("train.epochs=1.5", ["'train.epochs'", "an integer", "e.g. train.epochs=300"]),
    ("train.epochs=ten", ["'train.epochs'", "an integer", "e.g. train.epochs=300"]),
    ("train.epochs=1:30", ["'train.epochs'", "an integer"]),
    ("train.epochs=", ["'train.epochs'", "an integer"]),
    ("data.input_hw=320,416", ["'data.input_hw'", "a list in brackets",
                               "e.g. data.input_hw=[416, 416]"]),
    ("data.input_hw=[320,abc]", ["'data.input_hw[1]'", "an integer", "e.g. data.input_hw=[416, 416]"]),
    ("data.input_hw=[320,416", ["'data.input_hw'", "a list in brackets"]),
    ("data.keep_ratio=1", ["'data.keep_ratio'", "true or false", "e.g. data.keep_ratio=false"]),
    ("data.keep_ratio=maybe", ["'data.keep_ratio'", "true or false"]),
    ("class_names=[yes,no]", ["'class_names[0]'", "a string", "put it in quotes", "e.g. class_names=[name, name]"]),
    ("model.backbone.model_size=1.5", ["'model.backbone.model_size'", "a string", "put it in quotes",
                                       "e.g. model.backbone.model_size=1.0x"]),
]


@pytest.mark.parametrize("override, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_wrong_value_names_field_type_and_example(override, words):
    overrides = [override]
    if override.startswith("class_names"):
        overrides.insert(0, "model.num_classes=2")
    with pytest.raises(NanoplusError) as err:
        load_config("nanodet-plus-m_416", overrides)
    for word in words:
        assert word in str(err.value)


def test_wrong_value_in_yaml_file_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: nanodet-plus-m_416\ntrain:\n  lr: 1e-4\n  epochs: lots\n")
    with pytest.raises(NanoplusError, match=r"'train.epochs' must be an integer.*e\.g\. train.epochs=300"):
        load_config(str(path))


def test_quoted_class_names_stay_text():
    cfg = load_config("nanodet-plus-m_416", ["model.num_classes=2", "class_names=['yes','007']"])
    assert cfg.class_names == ["yes", "007"]


def test_builtin_configs_are_unchanged_by_coercion():
    """The shipped file spells its rates as decimals; they come out as the same floats."""
    cfg = load_config("nanodet-plus-m_416")
    assert (cfg.train.lr, cfg.train.min_lr, cfg.train.warmup_ratio) == (0.001, 0.00005, 0.0001)
    assert cfg.train.warmup_steps == 500 and type(cfg.train.warmup_steps) is int


def test_cli_prints_the_field_error_and_exits_2(tmp_path, capsys):
    """The command line refuses a wrong override before touching the data, without a traceback."""
    from nanoplus.cli import main

    code = main(["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "runs"),
                 "train.lr=1e-4", "train.epochs=ten"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'train.epochs' must be an integer" in err and "e.g. train.epochs=300" in err
    assert "Traceback" not in err and "train.lr" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, message", [
    ("data.augment.min_box_size=-1", "data.augment.min_box_size must be >= 0"),
    ("train.schedule=step", "train.schedule must be one of cosine, upstream"),
    ("train.warmup=cosine", "train.warmup must be one of linear, exp, constant"),
])
def test_out_of_range_choices_are_refused(override, message):
    with pytest.raises(NanoplusError, match=message):
        load_config("nanodet-plus-m_416", [override])
