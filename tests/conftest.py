"""Shared test fixtures: where the reference material lives, and clear skips where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANOPLUS_SHARED", REPO_ROOT.parent / "shared"))
UPSTREAM_CASE = SHARED / "reference" / "upstream" / "m416_c80_e0"
ASSETS = SHARED / "assets"
NCNN_FP16_DIR = ASSETS / "models" / "nanodet-plus-m_416-ncnn-fp16"
NCNN_INT8_DIR = ASSETS / "models" / "nanodet-plus-m_416-ncnn-int8"
TINY_COCO = ASSETS / "datasets" / "tiny_coco"
COCO128 = ASSETS / "datasets" / "coco128"
IMAGES = ASSETS / "images"

# A small but complete model (ShuffleNetV2 0.5x, narrow neck and heads, aux branch) on 64x64 inputs,
# as config overrides, for tests that train or run many forward passes.
TINY_MODEL = [
    "model.num_classes=3",
    "model.backbone.model_size=0.5x",
    "model.fpn.in_channels=[48,96,192]",
    "model.fpn.out_channels=32",
    "model.head.feat_channels=32",
    "model.aux_head.feat_channels=64",
    "model.aux_head.stacked_convs=2",
    "model.aux_head.num_groups=8",
    "data.input_hw=[64,64]",
]


def require(path: Path) -> Path:
    """Skip the calling test with a clear reason when reference material is not present."""
    if not path.exists():
        pytest.skip(
            f"reference material {path} is absent (tests read ../shared beside the checkout; "
            "set NANOPLUS_SHARED to point elsewhere)"
        )
    return path


def require_module(name: str):
    """Import an optional engine or skip, naming the extra that provides it."""
    extras = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "torch": "train",
              "onnx": "export", "pnnx": "export"}
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install 'nanoplus[{extras.get(name, name)}]')")


@pytest.fixture(scope="session")
def upstream_case() -> Path:
    return require(UPSTREAM_CASE)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts with one torch thread (a test that opens a detector with more changes the
    process-wide count): on a busy 2-core machine, 2 threads can be ~100x slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
