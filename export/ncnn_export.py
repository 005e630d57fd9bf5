"""NCNN export (``.param`` + ``.bin``) through pnnx, fp32 or fp16 weight storage.

pnnx converts a TorchScript trace of the folded deploy graph (sigmoid scores on). It names the
blobs ``in0`` / ``out0`` (recorded in the sidecar JSON, which is where ncnn files keep their
metadata) and stores fp16 weights unless told ``fp16=0``. The output blob is (N, C+32): layout NC,
the same as the ONNX file, without the batch axis. With ``dynamic`` a second input shape
(``inputshape2``, larger by two cells of the coarsest stride) makes pnnx keep every level's size
free instead of baking it into the reshapes.

INT8: ncnn's quantisation tools (``ncnn2table`` / ``ncnn2int8``) are not in the PyPI ``ncnn`` or
``pnnx`` packages, nor in Debian's, so NCNN INT8 files are not made here.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from nanoplus.export.onnx_export import ExportError, prepare_for_export
from nanoplus.runtime.backends import read_ncnn_blob_names
from nanoplus.runtime.metadata import ModelMeta, write_sidecar


def pnnx_executable() -> str:
    try:
        import pnnx
    except ImportError:
        raise ExportError("NCNN export needs pnnx: pip install pnnx (or pip install 'nanoplus[export]')") from None
    return pnnx.EXEC_PATH


def export_ncnn(
    model,
    meta: ModelMeta,
    param_path: str | os.PathLike,
    fp16: bool = False,
    dynamic: bool = False,
    prepared: bool = False,
) -> Path:
    """Write ``param_path``, the ``.bin`` beside it and the sidecar JSON; returns ``param_path``.

    model: deploy model in eval mode (or the output of ``prepare_for_export`` with ``prepared``).
    meta.input_hw is the traced size.
    """
    import torch

    param_path = Path(param_path)
    height, width = (int(v) for v in meta.input_hw)
    graph = model if prepared else prepare_for_export(model)
    dummy = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))

    staging = Path(tempfile.mkdtemp(prefix=".ncnn-", dir=param_path.parent)).resolve()  # pnnx runs in it
    try:
        traced_path = staging / "model.pt"
        with torch.no_grad():
            traced = torch.jit.trace(graph, dummy, check_trace=False)
        traced.save(str(traced_path))
        staged_param, staged_bin = staging / "model.ncnn.param", staging / "model.ncnn.bin"
        command = [
            pnnx_executable(), str(traced_path),
            f"inputshape=[1,3,{height},{width}]f32",
            f"fp16={1 if fp16 else 0}",
            f"ncnnparam={staged_param}", f"ncnnbin={staged_bin}",
            # pnnx also writes its own graph, a Python model and an ONNX copy: keep them in staging
            f"pnnxparam={staging / 'model.pnnx.param'}", f"pnnxbin={staging / 'model.pnnx.bin'}",
            f"pnnxpy={staging / 'model_pnnx.py'}", f"pnnxonnx={staging / 'model.pnnx.onnx'}",
            f"ncnnpy={staging / 'model_ncnn.py'}",
        ]
        if dynamic:
            # pnnx marks a dimension dynamic where the two traces differ: grow the input by two
            # cells of the coarsest stride so that every level's height and width change
            grow = 2 * max(int(s) for s in meta.strides)
            command.append(f"inputshape2=[1,3,{height + grow},{width + grow}]f32")
        result = subprocess.run(command, capture_output=True, text=True, cwd=staging)
        if result.returncode != 0 or not staged_param.is_file() or not staged_bin.is_file():
            log = (result.stdout + result.stderr)[-3000:]
            raise ExportError(f"pnnx could not convert the model for {param_path} (exit {result.returncode}):\n{log}")
        input_name, output_name = read_ncnn_blob_names(staged_param)
        os.replace(staged_bin, param_path.with_suffix(".bin"))
        os.replace(staged_param, param_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    meta = copy.deepcopy(meta)
    meta.input_name, meta.output_name = input_name, output_name
    meta.input_dtype, meta.score_activation, meta.layout = "float32", "sigmoid", "NC"
    meta.precision = "fp16" if fp16 else "fp32"
    write_sidecar(meta, param_path)
    return param_path
