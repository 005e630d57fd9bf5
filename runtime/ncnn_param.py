"""The ncnn ``.param`` text graph, parsed once for everyone: the ncnn backend (its input and output
blobs), the NCNN exporter and the NCNN weight importer (``train/ncnn_model.py`` adds the ``.bin``).

A magic line ``7767517``, a ``layer_count blob_count`` line, then one line per layer::

    Convolution  conv_0  1 1  in0 1  0=24 1=3 3=2 4=1 5=1 6=648 9=2 -23310=1,1.000000e-01
    [type]       [name]  [n_bottom n_top] [bottom blobs] [top blobs] [key=value ...]

Keys 0..N are scalars (an int, or a float when written with a '.' or an exponent); a key
``-23300 - k`` is the array form of key ``k``, written ``count,v1,v2,...``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from nanoplus.errors import NanoplusError

PARAM_MAGIC = 7767517
ARRAY_KEY_BASE = -23300

ParamValue = Union[int, float, str, list]


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
    bin_span: tuple[int, int] = (0, 0)  # [start, end) byte offsets of this layer's data in the .bin

    def get(self, key: int, default: ParamValue = 0) -> ParamValue:
        return self.params.get(key, default)


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


def input_blobs(layers: list[NcnnLayer]) -> list[str]:
    """The top blobs of the Input layers, in file order."""
    return [top for layer in layers if layer.type == "Input" for top in layer.tops]


def output_blobs(layers: list[NcnnLayer]) -> list[str]:
    """Blobs that no layer consumes, in production order."""
    consumed = {b for layer in layers for b in layer.bottoms}
    return [top for layer in layers for top in layer.tops if top not in consumed]
