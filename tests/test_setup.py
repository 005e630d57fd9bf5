"""A new user's first hour: the lock, the set-up scripts' environment, install hints that work
without a package index, and the CLI's first messages (no command, --help, --weights, start-up)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import REPO_ROOT

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

LOCK = REPO_ROOT / "requirements" / "lock.txt"


def _pins() -> dict:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{LOCK}: '{line}' is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    return pins


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _requirement_names(requirements) -> list[str]:
    return [re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower().replace("_", "-") for r in requirements
            if not r.startswith("nanoplus")]


def test_lock_pins_every_dependency_inside_the_pyproject_ranges():
    """Adding a dependency (or narrowing a range) without `bash scripts/lock.sh` fails here."""
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    pins = _pins()
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith("nanoplus")]
    for text in requirements:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements/lock.txt: run bash scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"lock has {name}=={pins[name]}, outside pyproject's {req.specifier}: run bash scripts/lock.sh"
    assert pins["torch"] == "2.13.0"  # the CPU wheel, without a local build tag
    header = LOCK.read_text()
    assert re.search(r"^# python: 3\.\d+$", header, re.M) and re.search(r"^# made: \d{4}-\d\d-\d\d$", header, re.M)


def test_every_setup_command_installs_with_the_lock():
    env_sh = (REPO_ROOT / "scripts" / "env.sh").read_text()
    assert 'NANOPLUS_LOCK="$NANOPLUS_ROOT/requirements/lock.txt"' in env_sh and '-c "$NANOPLUS_LOCK"' in env_sh
    for script in ("test.sh", "demo.sh"):
        text = (REPO_ROOT / "scripts" / script).read_text()
        assert ". scripts/env.sh" in text and "install_nanoplus" in text, script
        assert "python3 -m pip" not in text, f"{script} installs into whatever python3 is"
    assert "scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()


def test_env_sh_makes_a_project_environment_once(tmp_path):
    """Outside a virtual environment the scripts make one (never pip into a PEP 668 system Python)
    and reuse it on the second run."""
    venv = tmp_path / "venv"
    script = f'. "{REPO_ROOT}/scripts/env.sh"; echo "PY=$PY"'
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["NANOPLUS_VENV"] = str(venv)
    first = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"making the project environment {venv}" in first.stdout
    assert f"PY={venv}/bin/python" in first.stdout
    second = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "making" not in second.stdout
    assert f"using the project environment {venv}" in second.stdout
    inside = subprocess.run(["bash", "-c", script], env={**env, "VIRTUAL_ENV": sys.prefix},
                            capture_output=True, text=True, timeout=60)
    assert "using the active environment" in inside.stdout


def test_install_hints_name_installable_packages():
    """nanoplus is on no package index: hints list the extra's own requirements from pyproject."""
    from nanoplus.install import install_hint

    extras = _pyproject()["project"]["optional-dependencies"]
    for extra in ("train", "export", "onnxruntime", "openvino", "ncnn"):
        hint = install_hint(extra)
        assert hint.startswith("pip install ") and "nanoplus[" not in hint, hint
        for name in _requirement_names(extras[extra]):
            assert re.search(rf"\b{re.escape(name)}\b", hint, re.I), (extra, name, hint)
    assert "torch==2.13.0" in install_hint("train") and "torch>=" not in install_hint("train")


def test_no_command_is_a_usage_error(capsys):
    from nanoplus.cli import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: nanoplus" in err and "train" in err and "infer" in err


def test_train_help_lists_the_builtin_configs():
    out = subprocess.run([sys.executable, "-m", "nanoplus", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for yaml_file in sorted((REPO_ROOT / "train" / "configs").glob("*.yaml")):
        assert yaml_file.stem in text


def test_weights_named_like_a_config_point_at_import(tmp_path, capsys):
    pytest.importorskip("torch")
    from nanoplus.cli import main

    code = main(["train", "--data", str(tmp_path), "--weights", "nanodet-plus-m_416"])
    err = capsys.readouterr().err
    assert code == 2 and "no such file" in err and "nanoplus import" in err and "config name" in err


def test_start_up_lines_and_a_warmup_longer_than_the_run(capsys):
    from nanoplus.train.config import load_config
    from nanoplus.train.train_command import _print_start

    cfg = load_config("nanodet-plus-m_320", ["train.epochs=3", "train.batch_size=8", "train.warmup_steps=500"])
    data = types.SimpleNamespace(records=[None] * 20, summary=lambda: "dataset d [train, coco]: 20 images")
    _print_start(Path("runs/x"), None, cfg, data, None)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "run folder: runs/x"
    assert "train: dataset d [train, coco]: 20 images" in out and "none (--no-val" in out
    assert "3 epochs x 2 steps (batch 8) = 6 steps" in out  # 20 images, batch 8, ragged batch dropped
    assert "warmup_steps=500 is not shorter than the whole run (6 steps)" in err
    cfg = load_config("nanodet-plus-m_320", ["train.epochs=3", "train.batch_size=8", "train.warmup_steps=5"])
    _print_start(Path("runs/x"), None, cfg, data, data)
    assert "warning" not in capsys.readouterr().err


def test_loader_workers_default_to_the_device():
    pytest.importorskip("torch")
    from nanoplus.train.config import load_config
    from nanoplus.train.trainer import loader_workers

    assert load_config("nanodet-plus-m_416").train.workers == -1
    assert loader_workers(-1, "cuda") == len(os.sched_getaffinity(0))
    assert loader_workers(-1, "cpu") == 0  # on the CPU loader processes only compete with the step
    assert loader_workers(0, "cuda") == 0 and loader_workers(3, "cpu") == 3


def test_infer_on_a_folder_of_folders_says_they_are_not_searched(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from test_detector import _synthetic_onnx

    from nanoplus.cli import main

    model, _ = _synthetic_onnx(tmp_path / "m.onnx")
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    (tmp_path / "photos" / "2025").mkdir()
    assert main(["infer", str(model), str(tmp_path / "photos"), "--save-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sub-folders are not searched" in err and "2024" in err and str(tmp_path / "photos" / "2024") in err


@pytest.mark.slow
def test_device_install_from_the_sdist(tmp_path):
    """The README's device recipe: build the sdist, install it with one engine into a brand-new
    environment at the locked versions (no torch), and detect the dog in dog.jpg with the published
    NCNN weights — the same detections as this checkout's runtime gives."""
    from conftest import IMAGES, NCNN_FP16_DIR, require

    param = require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")
    image = require(IMAGES / "dog.jpg")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(REPO_ROOT)],
                   check=True, capture_output=True, timeout=600)
    sdist = next(dist.glob("nanoplus-*.tar.gz"))
    venv = tmp_path / "device"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(LOCK),
                          f"{sdist}[ncnn]"], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    assert "torch" not in installed
    pins = _pins()
    for name in ("numpy", "opencv-python-headless", "ncnn"):
        assert f"{name}=={pins[name]}" in installed, (name, installed)
    out = tmp_path / "out"
    run = subprocess.run([str(venv / "bin" / "nanoplus"), "infer", str(param), str(image), "--save-dir", str(out),
                          "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    here = subprocess.run([sys.executable, "-m", "nanoplus", "infer", str(param), str(image), "--save-dir",
                           str(tmp_path / "here"), "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert here.returncode == 0, here.stderr[-3000:]
    import json

    device = json.loads((out / "detections.json").read_text())["images"][0]["detections"]
    ours = json.loads((tmp_path / "here" / "detections.json").read_text())["images"][0]["detections"]
    assert device == ours and any(d["class_name"] == "dog" for d in device), (device, ours)
