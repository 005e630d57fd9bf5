"""The runtime runs where torch is not installed: importing it, running a Detector, `nanoplus infer`
and `nanoplus eval` never import torch (checked in a fresh interpreter that cannot import torch)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import IMAGES, NCNN_FP16_DIR, REPO_ROOT, TINY_COCO, require, require_module

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                # what a missing package raises: an edge install without torch
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
""")


def _run(code: str) -> dict:
    # not from the checkout's root: `python -c` puts the working folder first on sys.path, and the
    # checkout's nanoplus/ folder (no runtime/ inside) would shadow an installed, non-editable nanoplus
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], cwd=REPO_ROOT / "tests",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_command_modules_import_nothing_heavy():
    result = _run("""
        import json, sys
        import nanoplus.runtime, nanoplus.runtime.eval_command, nanoplus.runtime.infer_command
        heavy = {m: m in sys.modules for m in ("torch", "numpy", "cv2", "onnxruntime", "openvino", "ncnn")}
        from nanoplus.runtime import Detector  # the package-level name loads the runtime on first use
        from nanoplus.runtime.detector import Detector as defined
        print(json.dumps({**heavy, "same_detector": Detector is defined}))
    """)
    assert result.pop("same_detector") is True
    assert result == {m: False for m in result}


def test_detector_infer_and_eval_without_torch(tmp_path):
    require_module("ncnn")
    model = require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")
    image = require(IMAGES / "dog.jpg")
    data = require(TINY_COCO)
    result = _run(f"""
        import contextlib, io, json, sys
        import numpy as np
        from nanoplus.runtime.detector import Detector
        from nanoplus.runtime.postprocess import postprocess
        from nanoplus.cli import main

        dets = Detector({str(model)!r}, threads=1)({str(image)!r})
        postprocess(np.zeros((3598, 112), np.float32), (416, 416), (8, 16, 32, 64), 7, 0.05, 0.6, 100, False)
        with contextlib.redirect_stdout(io.StringIO()):
            rc_infer = main(["infer", {str(model)!r}, {str(image)!r}, "--save-dir", {str(tmp_path / "out")!r}, "--threads", "1"])
            rc_eval = main(["eval", {str(model)!r}, "--data", {str(data)!r}, "--threads", "1", "--quiet",
                            "--json", {str(tmp_path / "m.json")!r}])
        print(json.dumps({{"names": dets.class_names, "rc": [rc_infer, rc_eval],
                          "torch": [m for m in sys.modules if m == "torch" or m.startswith("torch.")]}}))
    """)
    assert "dog" in result["names"]
    assert result["rc"] == [0, 0]
    assert result["torch"] == []
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] > 0.3


def test_torch_commands_without_torch_name_the_install(tmp_path):
    """train / export / import on a runtime-only install end with the pip command, not a traceback."""
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"never read: torch is missing first")
    result = _run(f"""
        import contextlib, io, json
        from nanoplus.cli import main

        codes, messages = [], []
        for argv in (["export", {str(ckpt)!r}], ["train", "--config", "nanodet-plus-m_416", "--data", "d"],
                     ["import", "x.param", "--config", "nanodet-plus-m_416", "--out", {str(tmp_path / "o.ckpt")!r}]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                codes.append(main(argv))
            messages.append(err.getvalue())
        print(json.dumps({{"codes": codes, "messages": messages}}))
    """)
    assert result["codes"] == [2, 2, 2]
    export, train, imported = result["messages"]
    # nanoplus is not on a package index: the hint names the packages themselves (torch: the CPU pin)
    assert "'torch' package" in export and "pip install torch==2.13.0" in export and '"onnx>=' in export
    assert "pip install torch==2.13.0" in train and '"matplotlib>=' in train and "pip install torch==2.13.0" in imported
    assert not any("nanoplus[" in m for m in result["messages"])
    assert not any("Traceback" in m for m in result["messages"])


def test_bench_with_data_without_torch(tmp_path):
    """`nanoplus bench FILE --data DATA` (latency, mAP, front, pick, plots) on a runtime-only install."""
    require_module("ncnn")
    model = require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")
    data = require(TINY_COCO)
    out = tmp_path / "bench.json"
    result = _run(f"""
        import contextlib, io, json, sys
        from nanoplus.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["bench", {str(model)!r}, "--data", {str(data)!r}, "--eval-images", "2", "--runs", "2",
                       "--warmup", "1", "--quiet", "--json", {str(out)!r}, "--markdown", {str(tmp_path / "r.md")!r}])
        print(json.dumps({{"rc": rc, "torch": [m for m in sys.modules if m == "torch" or m.startswith("torch.")]}}))
    """)
    assert result == {"rc": 0, "torch": []}
    doc = json.loads(out.read_text())
    assert doc["results"][0]["accuracy"]["images"] == 2 and doc["pick"]["fastest"]["result"] == 0
