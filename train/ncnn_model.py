"""Read an NCNN model (``.param`` text graph + ``.bin`` weights) into plain numpy arrays.

No ncnn library is needed: the two formats are simple and documented in ncnn's
"param and model file structure" and "operation param weight table" pages.

``.param``: parsed by ``runtime/ncnn_param.py`` (one parser for the runtime, export and import).

``.bin``: the layers' weight blobs concatenated in ``.param`` order, each padded to 4 bytes. A weight
blob loaded with "type 0" starts with a 4-byte storage tag (0 = float32, 0x01306B47 = float16,
0x01348B83 = bfloat16, 0x000D4B38 = int8, 0x0002C056 = float32 with a scale, any other non-zero
value = a 256-entry float table followed by uint8 indices); "type 1" blobs (biases, BatchNorm
statistics, int8 scales) are raw float32 with no tag.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoplus.runtime.ncnn_param import NcnnFormatError, NcnnLayer, input_blobs, output_blobs, parse_param

__all__ = ["NcnnFormatError", "NcnnLayer", "NcnnModel", "load_ncnn_model", "parse_param"]

TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_BF16 = 0x01348B83
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056

# Layers that carry no weights in the .bin (so reading can step over them).
WEIGHTLESS_LAYERS = {
    "AbsVal", "ArgMax", "BinaryOp", "BNLL", "Cast", "CELU", "Clip", "Concat", "Crop", "CumulativeSum",
    "DeformableConv2D", "Dropout", "ELU", "Eltwise", "Erf", "Exp", "ExpandDims", "Flatten", "Flip",
    "Fold", "GELU", "GLU", "GridSample", "HardSigmoid", "HardSwish", "Input", "Interp", "Log",
    "LRN", "Mish", "MVN", "Noop", "Packing", "Permute", "PixelShuffle", "Pooling", "Pooling1D",
    "Pooling3D", "Power", "Reduction", "ReLU", "Reorg", "Reshape", "SELU", "ShuffleChannel",
    "Sigmoid", "Slice", "Softmax", "Softplus", "Split", "Squeeze", "Swish", "TanH", "Threshold",
    "Tile", "UnaryOp", "Unfold", "CopyTo", "Shrink", "Diag", "Spectrogram",
}


@dataclass
class NcnnModel:
    param_path: Path
    bin_path: Path
    layers: list[NcnnLayer]

    @property
    def weight_storages(self) -> set[str]:
        return {layer.weight_storage for layer in self.layers if layer.weight_storage}

    @property
    def input_blobs(self) -> list[str]:
        return input_blobs(self.layers)

    @property
    def output_blobs(self) -> list[str]:
        """Blobs that no layer consumes, in production order."""
        return output_blobs(self.layers)

    def producer(self) -> dict[str, NcnnLayer]:
        return {top: layer for layer in self.layers for top in layer.tops}

    def consumers(self) -> dict[str, list[NcnnLayer]]:
        out: dict[str, list[NcnnLayer]] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                out.setdefault(b, []).append(layer)
        return out


# ----------------------------------------------------------------------------------------------
# .bin


def _align4(n: int) -> int:
    return (n + 3) & ~3


class _BinReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise NcnnFormatError(f"{path}: cannot read the NCNN .bin file: {e.strerror}") from None
        self.offset = 0

    def _take(self, nbytes: int, layer: NcnnLayer, what: str) -> bytes:
        if self.offset + nbytes > len(self.data):
            raise NcnnFormatError(
                f"{self.path}: ends at byte {len(self.data)} while reading {what} of layer {layer.name} "
                f"({layer.type}, .param line {layer.line_no}); the .bin does not belong to this .param or is truncated"
            )
        chunk = self.data[self.offset:self.offset + nbytes]
        self.offset += nbytes
        return chunk

    def raw_f32(self, count: int, layer: NcnnLayer, what: str) -> np.ndarray:
        """A "type 1" blob: ``count`` float32 values, no tag."""
        return np.frombuffer(self._take(4 * count, layer, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, layer: NcnnLayer, what: str) -> tuple[np.ndarray, str]:
        """A "type 0" blob: 4-byte storage tag, then the values. Returns (values, storage).

        int8 values come back as float32 holding the raw integers (scales are separate blobs).
        """
        tag_bytes = self._take(4, layer, f"the storage tag of {what}")
        tag = int.from_bytes(tag_bytes, "little")
        if tag == TAG_FP16:
            half = np.frombuffer(self._take(_align4(2 * count), layer, what)[:2 * count], dtype="<f2")
            return half.astype(np.float32), "fp16"
        if tag == TAG_BF16:
            bf = np.frombuffer(self._take(_align4(2 * count), layer, what)[:2 * count], dtype="<u2")
            return (bf.astype(np.uint32) << 16).view(np.float32), "bf16"
        if tag == TAG_INT8:
            q = np.frombuffer(self._take(_align4(count), layer, what)[:count], dtype=np.int8)
            return q.astype(np.float32), "int8"
        if tag == TAG_FP32_SCALED:
            return self.raw_f32(count, layer, what), "fp32"
        if sum(tag_bytes) != 0:  # ncnn tests the byte sum: a 256-entry value table + uint8 indices
            table = np.frombuffer(self._take(256 * 4, layer, what), dtype="<f4")
            index = np.frombuffer(self._take(_align4(count), layer, what)[:count], dtype=np.uint8)
            return table[index].astype(np.float32), "table"
        return self.raw_f32(count, layer, what), "fp32"


def _int_param(layer: NcnnLayer, key: int, default: int, meaning: str) -> int:
    value = layer.get(key, default)
    if not isinstance(value, int):
        raise NcnnFormatError(f"layer {layer.name} ({layer.type}, .param line {layer.line_no}): {meaning} (key {key}) must be an integer, got {value!r}")
    return value


def _read_layer_weights(reader: _BinReader, layer: NcnnLayer) -> None:
    t = layer.type
    w = layer.weights
    if t in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise",
             "Convolution1D", "ConvolutionDepthWise1D", "Convolution3D", "ConvolutionDepthWise3D"):
        if _int_param(layer, 19, 0, "dynamic_weight"):
            return  # weights come from a second input blob, nothing in the .bin
        num_output = _int_param(layer, 0, 0, "num_output")
        size = _int_param(layer, 6, 0, "weight_data_size")
        w["weight"], layer.weight_storage = reader.tagged(size, layer, "weight_data")
        if _int_param(layer, 5, 0, "bias_term"):
            w["bias"] = reader.raw_f32(num_output, layer, "bias_data")
        int8_term = _int_param(layer, 8, 0, "int8_scale_term")
        if int8_term and t.startswith("Convolution"):
            if "DepthWise" in t:
                group = _int_param(layer, 7, 1, "group")
                n_scales = group if int8_term in (1, 101) else 1
            else:
                n_scales = num_output
            w["weight_int8_scales"] = reader.raw_f32(n_scales, layer, "weight_data_int8_scales")
            w["bottom_int8_scales"] = reader.raw_f32(1, layer, "bottom_blob_int8_scales")
            if int8_term > 100:
                w["top_int8_scales"] = reader.raw_f32(1, layer, "top_blob_int8_scales")
        return
    if t == "InnerProduct":
        num_output = _int_param(layer, 0, 0, "num_output")
        size = _int_param(layer, 2, 0, "weight_data_size")
        w["weight"], layer.weight_storage = reader.tagged(size, layer, "weight_data")
        if _int_param(layer, 1, 0, "bias_term"):
            w["bias"] = reader.raw_f32(num_output, layer, "bias_data")
        if _int_param(layer, 8, 0, "int8_scale_term"):
            w["weight_int8_scales"] = reader.raw_f32(num_output, layer, "weight_data_int8_scales")
            w["bottom_int8_scales"] = reader.raw_f32(1, layer, "bottom_blob_int8_scales")
        return
    if t == "BatchNorm":
        channels = _int_param(layer, 0, 0, "channels")
        for name in ("slope", "mean", "var", "bias"):
            w[name] = reader.raw_f32(channels, layer, f"{name}_data")
        return
    if t == "Scale":
        size = _int_param(layer, 0, 0, "scale_data_size")
        if size == -233:
            return  # scale comes from a second input blob
        w["scale"] = reader.raw_f32(size, layer, "scale_data")
        if _int_param(layer, 1, 0, "bias_term"):
            w["bias"] = reader.raw_f32(size, layer, "bias_data")
        return
    if t == "PReLU":
        w["slope"] = reader.raw_f32(_int_param(layer, 0, 0, "num_slope"), layer, "slope_data")
        return
    if t == "Bias":
        w["bias"] = reader.raw_f32(_int_param(layer, 0, 0, "bias_data_size"), layer, "bias_data")
        return
    if t == "Padding":
        size = _int_param(layer, 6, 0, "per_channel_pad_data_size")
        if size:
            w["pad"] = reader.raw_f32(size, layer, "per_channel_pad_data")
        return
    if t in WEIGHTLESS_LAYERS:
        return
    raise NcnnFormatError(
        f"layer {layer.name} (.param line {layer.line_no}) has type '{t}', which nanoplus cannot read "
        f"from {reader.path.name} (it may carry weights of unknown size); only NanoDet-style graphs "
        "(convolutions, BatchNorm, activations, shape ops) can be imported"
    )


def load_ncnn_model(param_path: str | Path, bin_path: str | Path | None = None) -> NcnnModel:
    """Read ``model.param`` and its ``model.bin`` (default: same name, ``.bin`` suffix).

    Every layer's weight blobs are read in .param order; the .bin must be used up exactly, which
    catches a .bin that belongs to another .param.
    """
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin")
    if not bin_path.is_file():
        raise NcnnFormatError(
            f"{param_path}: the weights file {bin_path} is missing; an NCNN model is a .param plus a .bin "
            "with the same name next to it"
        )
    layers = parse_param(param_path)
    reader = _BinReader(bin_path)
    for layer in layers:
        start = reader.offset
        _read_layer_weights(reader, layer)
        layer.bin_span = (start, reader.offset)
    left = len(reader.data) - reader.offset
    if left:
        raise NcnnFormatError(
            f"{bin_path}: {left} bytes are left after reading every layer of {param_path.name}; "
            "the .bin does not belong to this .param"
        )
    return NcnnModel(param_path, bin_path, layers)
