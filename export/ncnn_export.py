"""NCNN export (``.param`` + ``.bin``) through pnnx, fp32 or fp16 weight storage.

pnnx converts a TorchScript trace of the folded deploy graph (sigmoid scores on) and stores fp16
weights unless told ``fp16=0``. The output blob is (N, C+32): layout NC, the same as the ONNX
file, without the batch axis.

What other programs find in the file (recorded in the sidecar JSON, where ncnn files keep their
metadata):
- blob names as upstream's ``demo_ncnn`` reads them: input ``data``, output ``output`` (pnnx's
  ``in0`` / ``out0`` are renamed);
- per level, the head's raw output (C+32, h, w) with class logits, named ``stride8``, ``stride16``,
  ... and listed in ``level_outputs``: what ncnn's ``nanodetplus_pnnx`` example decodes;
- any input size whose height and width are multiples of 32: two traces at different sizes
  (``inputshape2``, larger by two cells of the coarsest stride) make pnnx keep every level's size
  free instead of baking the traced size into the reshapes (a file fixed at 416 x 416 gave a wrong
  number of rows, without an error, at any other size).

INT8 files are made from this module's fp32 file by our own writer, ``export/ncnn_int8.py`` (ncnn's
``ncnn2table`` / ``ncnn2int8`` are not in the PyPI or Debian packages).
"""
from __future__ import annotations

import copy
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from nanoplus.export.onnx_export import ExportError, prepare_for_export
from nanoplus.atomic import write_bytes_atomic, write_text_atomic
from nanoplus.runtime.metadata import ModelMeta, write_sidecar
from nanoplus.train.shufflenetv2 import use_native_shuffle


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
        # ncnn's ShuffleChannel instead of shape-expression Reshapes, which ncnn runs slowly
        use_native_shuffle(graph, True)
        try:
            with torch.no_grad():
                traced = torch.jit.trace(graph, dummy, check_trace=False)
        finally:
            use_native_shuffle(graph, False)  # the model may go on to other exporters
        # saved through Python: TorchScript's own file writer aborts the process on a full disk
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        write_bytes_atomic(traced_path, buffer.getvalue())
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
        # pnnx marks a dimension dynamic where the two traces differ: grow the input by two
        # cells of the coarsest stride so that every level's height and width change
        grow = 2 * max(int(s) for s in meta.strides)
        command.append(f"inputshape2=[1,3,{height + grow},{width + grow}]f32")
        result = subprocess.run(command, capture_output=True, text=True, cwd=staging)
        if result.returncode != 0 or not staged_param.is_file() or not staged_bin.is_file():
            log = (result.stdout + result.stderr)[-3000:]
            raise ExportError(f"pnnx could not convert the model for {param_path} (exit {result.returncode}):\n{log}")
        level_blobs = rename_blobs(staged_param, [int(s) for s in meta.strides])
        os.replace(staged_bin, param_path.with_suffix(".bin"))
        os.replace(staged_param, param_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    meta = copy.deepcopy(meta)
    meta.input_name, meta.output_name = INPUT_BLOB, OUTPUT_BLOB
    meta.input_dtype, meta.score_activation, meta.layout = "float32", "sigmoid", "NC"
    meta.precision = "fp16" if fp16 else "fp32"
    meta.level_outputs = [{"stride": stride, "blob": blob, "shape": "CHW", "scores": "logits"}
                          for stride, blob in zip(meta.strides, level_blobs)]
    meta.notes = [NCNN_SIZE_NOTE]
    write_sidecar(meta, param_path)
    return param_path


INPUT_BLOB, OUTPUT_BLOB = "data", "output"  # upstream's demo_ncnn names
NCNN_SIZE_NOTE = ("any input size whose height and width are multiples of 32 works (the output then has one "
                  "row per prior point at that size); input_hw is the size it was exported and checked at")


def rename_blobs(param_path: Path, strides: list[int]) -> list[str]:
    """Rename pnnx's blobs in a .param in place: input ``data``, output ``output``, and each
    level's raw head output ``stride{s}``. Returns the level blob names in ``strides`` order.

    The head's graph per level (prepare_for_export: sigmoid on the class channels):
    Convolution -> raw (C+32, h, w) -> Slice -> Sigmoid + bins -> Concat -> Reshape, and the four
    Reshapes -> Concat -> Permute -> output. The raw blob is found by walking that chain back.
    """
    from nanoplus.runtime.ncnn_param import input_blobs, output_blobs, parse_param

    layers = parse_param(param_path)
    producer = {top: layer for layer in layers for top in layer.tops}
    input_blob, output_blob = input_blobs(layers)[0], output_blobs(layers)[-1]

    def back(blob: str, kind: str) -> list[str]:
        """The bottoms of the layer that makes ``blob``, which must be a ``kind`` layer."""
        layer = producer.get(blob)
        if layer is None or layer.type != kind:
            raise ExportError(f"{param_path}: unexpected ncnn graph at blob '{blob}' (expected a {kind} layer, "
                              f"found {layer.type if layer else 'none'}); cannot name the level outputs")
        return layer.bottoms

    level_reshaped = back(back(output_blob, "Permute")[0], "Concat")
    if len(level_reshaped) != len(strides):
        raise ExportError(f"{param_path}: the output joins {len(level_reshaped)} levels, not {len(strides)}")
    names = {input_blob: INPUT_BLOB, output_blob: OUTPUT_BLOB}
    for stride, reshaped in zip(strides, level_reshaped):
        scores, _bins = back(back(reshaped, "Reshape")[0], "Concat")  # sigmoid(class logits), bins
        names[back(back(scores, "Sigmoid")[0], "Slice")[0]] = f"stride{stride}"  # the convolution's output
    clash = ({b for layer in layers for b in layer.bottoms + layer.tops} - set(names)) & set(names.values())
    if clash:
        raise ExportError(f"{param_path}: pnnx already uses the blob name(s) {sorted(clash)}")
    lines = param_path.read_text(encoding="utf-8").splitlines()
    for layer in layers:  # the same line with the blob names (and the Input layer's name) replaced
        parts = lines[layer.line_no - 1].split()
        count = len(layer.bottoms) + len(layer.tops)
        parts[4:4 + count] = [names.get(b, b) for b in parts[4:4 + count]]
        if layer.type == "Input":
            parts[1] = names.get(parts[1], parts[1])
        lines[layer.line_no - 1] = " ".join(parts)
    write_text_atomic(param_path, "\n".join(lines) + "\n")
    return [f"stride{s}" for s in strides]
