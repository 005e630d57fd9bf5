"""Read an NCNN model (``.param`` text graph + ``.bin`` weights) into plain numpy arrays.

No ncnn library is needed: the two formats are simple and documented in ncnn's
"param and model file structure" and "operation param weight table" pages.

``.param``: a magic line ``7767517``, a ``layer_count blob_count`` line, then one line per layer::

    Convolution  conv_0  1 1  in0 1  0=24 1=3 3=2 4=1 5=1 6=648 9=2 -23310=1,1.000000e-01
    [type]       [name]  [n_bottom n_top] [bottom blobs] [top blobs] [key=value ...]

Keys 0..N are scalars (an int, or a float when written with a '.' or an exponent); a key
``-23300 - k`` is the array form of key ``k``, written ``count,v1,v2,...``.

``.bin``: the layers' weight blobs concatenated in ``.param`` order, each padded to 4 bytes. A weight
blob loaded with "type 0" starts with a 4-byte storage tag (0 = float32, 0x01306B47 = float16,
0x01348B83 = bfloat16, 0x000D4B38 = int8, 0x0002C056 = float32 with a scale, any other non-zero
value = a 256-entry float table followed by uint8 indices); "type 1" blobs (biases, BatchNorm
statistics, int8 scales) are raw float32 with no tag.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from nanoplus.errors import NanoplusError

PARAM_MAGIC = 7767517
ARRAY_KEY_BASE = -23300

TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_BF16 = 0x01348B83
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056

ParamValue = Union[int, float, str, list]

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


class NcnnFormatError(NanoplusError, ValueError):
    """An NCNN .param/.bin pair that cannot be read; the message names the file, the layer and the fix."""


@dataclass
class NcnnLayer:
    """One layer line of the .param, plus the weight arrays read for it from the .bin.

    ``weights`` holds float32 arrays named after ncnn's own fields (``weight`` and ``bias`` for
    convolutions; ``slope``, ``mean``, ``var``, ``bias`` for BatchNorm; ``weight_int8_scales`` ... for
    int8 layers). ``weight`` keeps ncnn's flat storage order, which for (depthwise) convolutions is
    PyTorch's (out, in/groups, kh, kw) order and for InnerProduct (out, in).
    """

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, ParamValue]
    line_no: int
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    weight_storage: str = ""  # "fp32", "fp16", "bf16", "int8", "table" for the tagged weight blob

    def get(self, key: int, default: ParamValue = 0) -> ParamValue:
        return self.params.get(key, default)


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
        return [top for layer in self.layers if layer.type == "Input" for top in layer.tops]

    @property
    def output_blobs(self) -> list[str]:
        """Blobs that no layer consumes, in production order."""
        consumed = {b for layer in self.layers for b in layer.bottoms}
        return [top for layer in self.layers for top in layer.tops if top not in consumed]

    def producer(self) -> dict[str, NcnnLayer]:
        return {top: layer for layer in self.layers for top in layer.tops}

    def consumers(self) -> dict[str, list[NcnnLayer]]:
        out: dict[str, list[NcnnLayer]] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                out.setdefault(b, []).append(layer)
        return out


# ----------------------------------------------------------------------------------------------
# .param


def _parse_scalar(text: str) -> ParamValue:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text  # modern param files allow short strings


def _parse_value(key: int, text: str, where: str) -> tuple[int, ParamValue]:
    if key <= ARRAY_KEY_BASE:
        parts = text.split(",")
        try:
            count = int(parts[0])
        except ValueError:
            raise NcnnFormatError(f"{where}: array key {key} must start with its element count, got '{text}'") from None
        values = [_parse_scalar(p) for p in parts[1:]]
        if len(values) != count:
            raise NcnnFormatError(f"{where}: array key {key} says {count} elements but has {len(values)}")
        return ARRAY_KEY_BASE - key, values
    if "," in text:  # modern short array form "3=2.0,3.0"
        return key, [_parse_scalar(p) for p in text.split(",")]
    return key, _parse_scalar(text)


def parse_param(path: str | Path) -> list[NcnnLayer]:
    """Parse a text .param file into layers (weights empty)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NcnnFormatError(f"{path}: cannot read the NCNN .param file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NcnnFormatError(
            f"{path}: not a text .param file (a binary .param.bin from ncnn2mem cannot be read); "
            "use the text .param that the converter wrote"
        ) from None
    lines = text.splitlines()
    content = [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip()]
    if not content or content[0][1] != str(PARAM_MAGIC):
        raise NcnnFormatError(f"{path}: line 1 must be the NCNN magic number {PARAM_MAGIC}; this is not an NCNN .param file")
    if len(content) < 2:
        raise NcnnFormatError(f"{path}: missing the 'layer_count blob_count' line")
    try:
        layer_count, _blob_count = (int(v) for v in content[1][1].split())
    except ValueError:
        raise NcnnFormatError(f"{path}:{content[1][0]}: expected 'layer_count blob_count', got '{content[1][1]}'") from None

    layers: list[NcnnLayer] = []
    for line_no, line in content[2:]:
        where = f"{path}:{line_no}"
        tokens = line.split()
        if len(tokens) < 4:
            raise NcnnFormatError(f"{where}: a layer line needs 'type name n_bottom n_top ...', got '{line}'")
        layer_type, name = tokens[0], tokens[1]
        try:
            n_bottom, n_top = int(tokens[2]), int(tokens[3])
        except ValueError:
            raise NcnnFormatError(f"{where}: bottom/top counts must be integers, got '{tokens[2]} {tokens[3]}'") from None
        blobs_end = 4 + n_bottom + n_top
        if len(tokens) < blobs_end:
            raise NcnnFormatError(f"{where}: layer {name} declares {n_bottom} inputs and {n_top} outputs but lists fewer blobs")
        bottoms, tops = tokens[4:4 + n_bottom], tokens[4 + n_bottom:blobs_end]
        params: dict[int, ParamValue] = {}
        for token in tokens[blobs_end:]:
            key_text, sep, value_text = token.partition("=")
            try:
                key = int(key_text)
            except ValueError:
                key = None
            if not sep or key is None:
                raise NcnnFormatError(f"{where}: layer {name}: parameter '{token}' is not key=value with an integer key")
            k, v = _parse_value(key, value_text, f"{where} (layer {name})")
            params[k] = v
        layers.append(NcnnLayer(layer_type, name, bottoms, tops, params, line_no))
    if len(layers) != layer_count:
        raise NcnnFormatError(f"{path}: header says {layer_count} layers but the file has {len(layers)}; the file is truncated or edited")
    return layers


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
        _read_layer_weights(reader, layer)
    left = len(reader.data) - reader.offset
    if left:
        raise NcnnFormatError(
            f"{bin_path}: {left} bytes are left after reading every layer of {param_path.name}; "
            "the .bin does not belong to this .param"
        )
    return NcnnModel(param_path, bin_path, layers)
