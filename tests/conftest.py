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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run with one torch thread: on a busy 2-core machine, 2 threads can be ~100x slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
