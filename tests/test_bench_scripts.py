"""bench/profile_openvino.py counts a model's arithmetic right (its GFLOP/s claim rests on it)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, require_module


def _tiny_onnx(path):
    """(1, 64, 128, 128) -> 1x1 conv to 128 -> depthwise 3x3 -> 3x3 conv to 32: MACs known by hand
    (sizes large enough that the report's 3 decimals of G tell the kinds apart)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((128, 64, 1, 1)).astype(np.float32),
        "w2": rng.standard_normal((128, 1, 3, 3)).astype(np.float32),
        "w3": rng.standard_normal((32, 128, 3, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=128),
        helper.make_node("Conv", ["b", "w3"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 128, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 128, 128])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))


def test_profile_counts_multiply_accumulates_per_convolution_kind(tmp_path):
    require_module("openvino")
    pytest.importorskip("onnx")
    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    out = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "profile_openvino.py"), str(model), "--runs", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    pixels = 128 * 128
    pointwise = 128 * pixels * 64          # out channels x pixels x in channels: 0.134 G
    depthwise = 128 * pixels * 9           # one 3x3 filter per channel: 0.019 G
    full = 32 * pixels * 128 * 9           # 0.604 G
    total = pointwise + depthwise + full
    text = out.stdout
    assert f"{total / 1e9:.3f} G multiply-accumulates" in text
    assert f"1x1 convolutions {pointwise / 1e9:.3f} G" in text and f"depthwise convolutions {depthwise / 1e9:.3f} G" in text
    assert f"kxk convolutions {full / 1e9:.3f} G" in text
    assert "| Convolution (1x1) |" in text and "GFLOP/s" in text
