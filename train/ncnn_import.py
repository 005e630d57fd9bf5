"""Map the convolutions of a published NCNN model onto our PyTorch modules and un-fold BatchNorm.

One job, hence one file over 500 lines: the graph matching below (trace, NCNN graph, backtracking
match, un-folding) only makes sense read together.

Why matching by graph, not by a table: a converter lists parallel branches in whatever order it
likes (pnnx writes a ShuffleNet block's second branch before the first; the head's levels come out
backwards), and layer names are the converter's own. What both graphs do share is the data flow
between weighted layers. So:

1. Our side: run the model once on a small input, recording every torch function call
   (``TorchFunctionMode``) and every Conv2d / Linear / BatchNorm call (forward hooks). From the
   recorded tensors we know, for each convolution, which convolutions (or the network input) its
   input was computed from, through any number of weightless ops (cat, chunk, channel shuffle,
   add, upsample, ...), and which BatchNorm and activation follow it.
2. NCNN side: the same "fed by" sets from the .param blobs, with Split / Slice / Concat / BinaryOp
   / Interp / ... as the weightless ops, and a BatchNorm, Scale or activation layer that is the only
   reader of a convolution's output folded into that convolution.
3. Walk our convolutions in execution order (a topological order); each one takes the unmatched
   NCNN convolution with the same shape (out/in channels, kernel, stride, dilation, groups,
   padding, and the spatial size of its input at the trace size) fed by the images of its own
   inputs. Remaining ties are resolved by backtracking, so the first choice never has to be right.

The converter folded each BatchNorm into its convolution (y = W'x + b'). Our modules keep
conv (no bias) + BN, so we un-fold exactly: conv.weight = W', BN weight = sqrt(1 + eps),
BN bias = b', running_mean = 0, running_var = 1, which gives W'x / sqrt(1 + eps) * sqrt(1 + eps) + b'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from nanoplus.errors import NanoplusError
from nanoplus.train.ncnn_model import NcnnLayer, NcnnModel, load_ncnn_model

INPUT = "<input>"
WEIGHTED_NCNN = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
ACTIVATION_LAYERS = {"ReLU", "Clip", "Sigmoid", "Swish", "Mish", "HardSwish", "TanH", "ELU", "GELU", "SELU"}


class NcnnImportError(NanoplusError, ValueError):
    """An NCNN graph that does not fit the config (or cannot be imported); the message says where and why."""


@dataclass
class WeightedLayer:
    """A convolution or fully connected layer in either graph, with what the matcher compares.

    ``preds``: names of the weighted layers (or INPUT) whose outputs reach this layer's input
    through weightless ops only.
    """

    name: str
    kind: str  # "conv" or "linear"
    out_channels: int
    in_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    padding: Optional[tuple[int, int, int, int]] = None  # top, left, bottom, right; None = "same"-like
    preds: frozenset = frozenset()
    activation: str = "none"
    in_hw: Optional[tuple[int, int]] = None  # spatial size of the input at the trace size; None = unknown
    # ours only
    bn: Optional[str] = None  # name of the BatchNorm module right after it
    # NCNN only: effective weight and bias after folding any BatchNorm/Scale layers
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    storage: str = ""

    def shape_key(self) -> tuple:
        return (self.kind, self.out_channels, self.in_channels, self.kernel, self.stride, self.dilation, self.groups)

    def fits(self, other: "WeightedLayer") -> bool:
        if self.shape_key() != other.shape_key():
            return False
        if self.in_hw is not None and other.in_hw is not None and self.in_hw != other.in_hw:
            return False  # e.g. two heads reading the same map, one of them upsampled
        return self.padding is None or other.padding is None or self.padding == other.padding

    def describe(self) -> str:
        if self.kind == "linear":
            return f"fully connected {self.in_channels}->{self.out_channels}"
        kh, kw = self.kernel
        what = "depthwise conv" if self.groups > 1 and self.groups == self.in_channels else "conv"
        text = f"{what} {self.in_channels}->{self.out_channels} {kh}x{kw}"
        if self.stride != (1, 1):
            text += f" stride {self.stride[0] if self.stride[0] == self.stride[1] else self.stride}"
        if self.dilation != (1, 1):
            text += f" dilation {self.dilation}"
        if self.groups > 1 and what == "conv":
            text += f" groups {self.groups}"
        return text


@dataclass
class NcnnImportReport:
    param_path: Path
    storage: str  # fp32 / fp16 / int8 ...
    matched: list[tuple[str, str]] = field(default_factory=list)  # (our module, ncnn layer)
    tensors_written: int = 0
    approximate: bool = False


# ----------------------------------------------------------------------------------------------
# Activations, named the same way on both sides


def _slope_text(value: float) -> str:
    return f"{float(value):.6g}"


def _torch_activation(func_name: str, args: tuple, kwargs: dict) -> Optional[str]:
    name = func_name.rstrip("_")
    if name == "relu":
        return "relu"
    if name == "leaky_relu":
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        return f"leaky_relu({_slope_text(slope)})"
    if name == "relu6":
        return "clip(0,6)"
    if name == "hardtanh":
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return f"clip({_slope_text(lo)},{_slope_text(hi)})"
    if name in ("sigmoid", "hardswish", "silu", "mish", "tanh", "elu", "gelu", "selu"):
        return name
    return None


def _ncnn_fused_activation(layer: NcnnLayer) -> str:
    kind = layer.get(9, 0)
    params = layer.get(10, [])
    params = params if isinstance(params, list) else [params]
    if kind == 0:
        return "none"
    if kind == 1:
        return "relu"
    if kind == 2:
        return f"leaky_relu({_slope_text(params[0] if params else 0.0)})" if params and params[0] else "relu"
    if kind == 3:
        lo, hi = (params + [-math.inf, math.inf])[:2]
        return f"clip({_slope_text(lo)},{_slope_text(hi)})"
    return {4: "sigmoid", 5: "mish", 6: "hardswish"}.get(kind, f"ncnn-activation-{kind}")


def _ncnn_layer_activation(layer: NcnnLayer) -> str:
    t = layer.type
    if t == "ReLU":
        slope = layer.get(0, 0.0)
        return f"leaky_relu({_slope_text(slope)})" if slope else "relu"
    if t == "Clip":
        return f"clip({_slope_text(layer.get(0, -math.inf))},{_slope_text(layer.get(1, math.inf))})"
    return {"Swish": "silu", "TanH": "tanh"}.get(t, t.lower())


# ----------------------------------------------------------------------------------------------
# Our side: trace the PyTorch model


def _tensors_in(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item)


def trace_weighted_layers(model, input_hw: tuple[int, int]) -> list[WeightedLayer]:
    """Run ``model`` once on an input of size ``input_hw`` and return its Conv2d / Linear layers in
    execution order, each with the layers feeding it, the BatchNorm after it and its activation.

    The run is on a copy of the model on the "meta" device (shapes only, no arithmetic), falling
    back to real zeros on the CPU for a model with an op that meta tensors do not support.
    """
    import copy

    import torch

    try:
        shadow = copy.deepcopy(model).to("meta")
        return _trace(shadow, torch.zeros(1, 3, *input_hw, device="meta"))
    except NcnnImportError:
        raise
    except Exception:
        return _trace(model, torch.zeros(1, 3, *input_hw))


def _trace(model, image) -> list[WeightedLayer]:
    import torch
    from torch import nn
    from torch.overrides import TorchFunctionMode

    module_names = {m: n for n, m in model.named_modules()}
    sources: dict[int, frozenset] = {}  # id(tensor) -> weighted layers it was computed from
    keep_alive: list = []  # tensor ids are only unique while the tensors live
    ops: list[tuple[str, list[int], list[int], tuple, dict]] = []
    layers: list[WeightedLayer] = []
    conv_output: dict[str, tuple[int, int]] = {}  # layer name -> (id of output, index into ops)
    bn_calls: list[tuple[str, int, int]] = []  # (bn name, id of input, id of output)

    class FlowRecorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            inputs = list(_tensors_in((args, kwargs)))
            flow = frozenset().union(*(sources.get(id(t), frozenset()) for t in inputs))
            outputs = list(_tensors_in(out))
            for t in outputs:
                sources[id(t)] = flow
            keep_alive.extend(outputs)
            ops.append((getattr(func, "__name__", str(func)), [id(t) for t in inputs], [id(t) for t in outputs], args, kwargs))
            return out

    def on_weighted(module, inputs, output):
        name = module_names[module]
        if isinstance(module, nn.Conv2d):
            pad = module.padding
            padding = None if isinstance(pad, str) else (pad[0], pad[1], pad[0], pad[1])
            layer = WeightedLayer(
                name, "conv", module.out_channels, module.in_channels, tuple(module.kernel_size),
                tuple(module.stride), tuple(module.dilation), module.groups, padding,
            )
        else:
            layer = WeightedLayer(name, "linear", module.out_features, module.in_features)
        layer.preds = sources.get(id(inputs[0]), frozenset())
        if isinstance(module, nn.Conv2d) and inputs[0].dim() == 4:
            layer.in_hw = tuple(inputs[0].shape[-2:])
        layers.append(layer)
        sources[id(output)] = frozenset([name])
        conv_output[name] = (id(output), len(ops))

    def on_bn(module, inputs, output):
        bn_calls.append((module_names[module], id(inputs[0]), id(output)))

    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(on_weighted))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            hooks.append(module.register_forward_hook(on_bn))
        elif isinstance(module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)):
            raise NcnnImportError(f"our model has a {type(module).__name__} ({module_names[module]}); NCNN import handles Conv2d and Linear only")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlowRecorder():
            sources[id(image)] = frozenset([INPUT])
            model(image)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    # Which BatchNorm reads each conv's output, and the activation that follows.
    bn_by_input = {}
    for bn_name, in_id, out_id in bn_calls:
        bn_by_input.setdefault(in_id, (bn_name, out_id))
    for layer in layers:
        out_id, op_index = conv_output[layer.name]
        if out_id in bn_by_input:
            layer.bn, out_id = bn_by_input[out_id]
        for name, in_ids, _out_ids, args, kwargs in ops[op_index:]:
            if out_id in in_ids and name not in ("batch_norm", "dim", "__get__", "size"):
                layer.activation = _torch_activation(name, args, kwargs) or "none"
                break
    return layers


# ----------------------------------------------------------------------------------------------
# NCNN side


SPATIAL_PASS_THROUGH = ACTIVATION_LAYERS | {
    "Split", "Concat", "Slice", "ShuffleChannel", "BatchNorm", "Scale", "Dropout", "Noop", "BinaryOp",
    "UnaryOp", "Eltwise", "PReLU", "Bias", "Softmax", "Quantize", "Dequantize", "Requantize",
}


def _conv_out(size: int, kernel: int, stride: int, dilation: int, pad_a: int, pad_b: int) -> int:
    if pad_a < 0 or pad_b < 0:  # -233 / -234: "same" padding
        return -(-size // stride)
    return (size + pad_a + pad_b - dilation * (kernel - 1) - 1) // stride + 1


def _spatial_size(layer: NcnnLayer, sizes: list) -> Optional[tuple[int, int]]:
    """(h, w) of a layer's first output from its inputs' sizes; None where we cannot tell.

    Only used to tell apart branches that have the same weights' shapes and the same inputs but
    run at different resolutions; it covers the ops such detectors use and gives up elsewhere.
    """
    t = layer.type
    known = [s for s in sizes if s is not None]
    if not sizes or len(known) != len(sizes):
        return None
    h, w = known[0]
    if t in ("Concat", "Slice"):
        axis = layer.get(0 if t == "Concat" else 1, 0)
        return (h, w) if axis in (0, -3) else None
    if t == "BinaryOp":
        return (max(s[0] for s in known), max(s[1] for s in known))
    if t == "Crop":
        axes = layer.get(11, [])
        return (h, w) if axes in ([0], [-3]) else None
    if t in SPATIAL_PASS_THROUGH:
        return (h, w)
    if t in ("Convolution", "ConvolutionDepthWise"):
        kw = int(layer.get(1, 0))
        kh = int(layer.get(11, kw))
        dw_, sw = int(layer.get(2, 1)), int(layer.get(3, 1))
        dh, sh = int(layer.get(12, dw_)), int(layer.get(13, sw))
        pl = int(layer.get(4, 0))
        pr, pt = int(layer.get(15, pl)), int(layer.get(14, pl))
        pb = int(layer.get(16, pt))
        return (_conv_out(h, kh, sh, dh, pt, pb), _conv_out(w, kw, sw, dw_, pl, pr))
    if t == "Pooling":
        if layer.get(4, 0):
            return (1, 1)
        if layer.get(7, 0):
            out_w = int(layer.get(8, 0))
            return (int(layer.get(18, out_w)), out_w)
        kw = int(layer.get(1, 0))
        kh = int(layer.get(11, kw))
        sw = int(layer.get(2, 1))
        sh = int(layer.get(12, sw))
        pl = int(layer.get(3, 0))
        pr, pt = int(layer.get(14, pl)), int(layer.get(13, pl))
        pb = int(layer.get(15, pt))
        mode = layer.get(5, 0)
        if mode == 1:  # valid: floor
            return (_conv_out(h, kh, sh, 1, pt, pb), _conv_out(w, kw, sw, 1, pl, pr))
        if mode in (2, 3):
            return (-(-h // sh), -(-w // sw))
        return (-(-(h + pt + pb - kh) // sh) + 1, -(-(w + pl + pr - kw) // sw) + 1)  # full: ceil
    if t == "Interp":
        out_h, out_w = int(layer.get(3, 0)), int(layer.get(4, 0))
        if out_h and out_w:
            return (out_h, out_w)
        if layer.get(5, 0) or len(sizes) > 1:
            return None
        return (int(h * float(layer.get(1, 1.0))), int(w * float(layer.get(2, 1.0))))
    return None


def ncnn_spatial_sizes(model: NcnnModel, input_hw: tuple[int, int]) -> dict[str, Optional[tuple[int, int]]]:
    """Spatial size of every blob for an input of ``input_hw`` (None where unknown)."""
    sizes: dict[str, Optional[tuple[int, int]]] = {}
    for layer in model.layers:
        if layer.type == "Input":
            out = tuple(input_hw)
        else:
            out = _spatial_size(layer, [sizes.get(b) for b in layer.bottoms])
        for top in layer.tops:
            sizes[top] = out
    return sizes


def _layer_where(model: NcnnModel, layer: NcnnLayer) -> str:
    return f"{model.param_path.name}: layer {layer.name} ({layer.type}, line {layer.line_no})"


def _dequantised_weight(model: NcnnModel, layer: NcnnLayer, out_channels: int) -> np.ndarray:
    """int8 weights / per-output-channel scale: the float weights ncnn's quantiser started from,
    up to rounding (so an approximation)."""
    q = layer.weights["weight"]
    scales = layer.weights.get("weight_int8_scales")
    if scales is None:
        raise NcnnImportError(f"{_layer_where(model, layer)}: int8 weights without weight_data_int8_scales (key 8 missing)")
    if scales.size == 1:
        scales = np.repeat(scales, out_channels)
    if np.any(scales == 0):
        raise NcnnImportError(f"{_layer_where(model, layer)}: an int8 weight scale is 0")
    return (q.reshape(out_channels, -1) / scales.reshape(out_channels, 1)).reshape(-1).astype(np.float32)


def ncnn_weighted_layers(
    model: NcnnModel, allow_int8: bool = False, input_hw: Optional[tuple[int, int]] = None
) -> list[WeightedLayer]:
    """The NCNN model's convolutions / InnerProducts in .param order, with effective weights and
    biases (a following BatchNorm or Scale layer folded in), "fed by" sets and, given
    ``input_hw``, the spatial size of their inputs."""
    spatial = ncnn_spatial_sizes(model, input_hw) if input_hw is not None else {}
    consumers = model.consumers()
    outputs = set(model.output_blobs)
    sources: dict[str, frozenset] = {}
    absorbed: set[str] = set()  # BatchNorm / Scale / activation layers folded into a convolution
    result: list[WeightedLayer] = []

    def sole_reader(blob: str) -> Optional[NcnnLayer]:
        readers = consumers.get(blob, [])
        return readers[0] if len(readers) == 1 and blob not in outputs else None

    for layer in model.layers:
        where = _layer_where(model, layer)
        if layer.type == "Input":
            for top in layer.tops:
                sources[top] = frozenset([INPUT])
            continue
        if layer.type in WEIGHTED_NCNN:
            if layer.get(19, 0):
                raise NcnnImportError(f"{where}: takes its weights from an input blob (dynamic weight); cannot import")
            out_channels = int(layer.get(0, 0))
            weight = layer.weights["weight"]
            if layer.weight_storage == "int8":
                if not allow_int8:
                    raise NcnnImportError(
                        f"{model.param_path}: the weights are int8-quantised (layer {layer.name} and others). "
                        "Quantisation threw information away, so they cannot be turned back into the float model "
                        "exactly; import the fp32/fp16 NCNN model or the upstream .ckpt instead, or pass "
                        "--approximate-int8 to import the de-quantised weights (int8 value / scale) as an approximation"
                    )
                weight = _dequantised_weight(model, layer, out_channels)
            if layer.type == "InnerProduct":
                in_channels = weight.size // max(out_channels, 1)
                spec = WeightedLayer(layer.name, "linear", out_channels, in_channels)
            else:
                kw = int(layer.get(1, 0))
                kh = int(layer.get(11, kw))
                dw_, sw = int(layer.get(2, 1)), int(layer.get(3, 1))
                dh, sh = int(layer.get(12, dw_)), int(layer.get(13, sw))
                groups = int(layer.get(7, 1)) if layer.type == "ConvolutionDepthWise" else 1
                pl = int(layer.get(4, 0))
                pr, pt = int(layer.get(15, pl)), int(layer.get(14, pl))
                pb = int(layer.get(16, pt))
                padding = (pt, pl, pb, pr) if min(pt, pl, pb, pr) >= 0 else None  # -233/-234: "same"
                if out_channels <= 0 or kh * kw <= 0 or weight.size % (out_channels * kh * kw):
                    raise NcnnImportError(f"{where}: weight_data_size {weight.size} does not fit {out_channels} outputs of {kh}x{kw}")
                in_channels = weight.size // (out_channels * kh * kw) * groups
                spec = WeightedLayer(layer.name, "conv", out_channels, in_channels, (kh, kw), (sh, sw), (dh, dw_), groups, padding)
            spec.storage = layer.weight_storage
            spec.weight = weight.reshape(out_channels, -1).astype(np.float64)
            spec.bias = layer.weights.get("bias", np.zeros(out_channels, np.float32)).astype(np.float64)
            spec.activation = _ncnn_fused_activation(layer)
            spec.preds = frozenset().union(*(sources.get(b, frozenset()) for b in layer.bottoms))
            spec.in_hw = spatial.get(layer.bottoms[0]) if spec.kind == "conv" else None

            # Fold BatchNorm / Scale layers that only this layer feeds, then note an activation layer.
            blob = layer.tops[0]
            reader = sole_reader(blob)
            while reader is not None and reader.type in ("BatchNorm", "Scale") and spec.activation == "none":
                if reader.type == "BatchNorm":
                    w = reader.weights
                    eps = float(reader.get(1, 0.0))
                    a = w["slope"].astype(np.float64) / np.sqrt(w["var"].astype(np.float64) + eps)
                    c = w["bias"].astype(np.float64) - w["mean"].astype(np.float64) * a
                else:
                    if "scale" not in reader.weights:
                        break
                    a = reader.weights["scale"].astype(np.float64)
                    c = reader.weights.get("bias", np.zeros_like(a)).astype(np.float64)
                if a.size != out_channels:
                    break
                spec.weight = spec.weight * a[:, None]
                spec.bias = spec.bias * a + c
                absorbed.add(reader.name)
                blob = reader.tops[0]
                reader = sole_reader(blob)
            if reader is not None and reader.type in ACTIVATION_LAYERS and spec.activation == "none":
                spec.activation = _ncnn_layer_activation(reader)
                absorbed.add(reader.name)
            result.append(spec)
            for top in layer.tops:
                sources[top] = frozenset([layer.name])
            continue
        if layer.weights and layer.name not in absorbed:
            raise NcnnImportError(
                f"{where}: carries weights ({', '.join(layer.weights)}) that have no place in a NanoDet-Plus "
                "model (only convolutions, with BatchNorm folded in, are imported)"
            )
        flow = frozenset().union(*(sources.get(b, frozenset()) for b in layer.bottoms))
        for top in layer.tops:
            sources[top] = flow
    return result


# ----------------------------------------------------------------------------------------------
# Matching


def match_layers(ours: list[WeightedLayer], theirs: list[WeightedLayer]) -> tuple[Optional[dict[str, str]], int]:
    """Our layer name -> NCNN layer name, or (None, index of the furthest of ours that found no partner).

    Our layers must be in execution order, so every input of a layer is matched before the layer.
    Each of ours takes an unmatched NCNN layer of the same shape whose inputs are the images of its
    own inputs; when several fit, the others are tried on backtracking.
    """
    mapping: dict[str, str] = {INPUT: INPUT}
    used: set[str] = set()
    by_preds: dict[frozenset, list[WeightedLayer]] = {}
    for t in theirs:
        by_preds.setdefault(t.preds, []).append(t)

    def candidates(layer: WeightedLayer) -> list[WeightedLayer]:
        want = frozenset(mapping[p] for p in layer.preds if p in mapping)
        if len(want) != len(layer.preds):
            return []
        return [t for t in by_preds.get(want, []) if t.name not in used and layer.fits(t)]

    # Iterative depth-first search (recursion would be as deep as the network).
    stack: list[tuple[list[WeightedLayer], int]] = []  # (candidates, index of the one taken) per layer
    i, deepest, steps = 0, 0, 0
    while i < len(ours):
        deepest, steps = max(deepest, i), steps + 1
        if steps > 100_000:
            return None, deepest
        options, pos = candidates(ours[i]), 0
        while pos >= len(options):  # nothing (left) here: step back and try the next candidate there
            if not stack:
                return None, deepest
            i -= 1
            options, pos = stack.pop()
            used.discard(mapping.pop(ours[i].name))
            pos += 1
        mapping[ours[i].name] = options[pos].name
        used.add(options[pos].name)
        stack.append((options, pos))
        i += 1
    del mapping[INPUT]
    return mapping, -1


def _name_of(layer_name: str) -> str:
    return "the network input" if layer_name == INPUT else layer_name


def explain_mismatch(ours: list[WeightedLayer], theirs: list[WeightedLayer], fail_index: int, param_path: Path, config_label: str) -> str:
    """A user-facing description of where the NCNN graph stops fitting our model."""
    counts = f"the NCNN graph has {len(theirs)} convolutions, config {config_label} has {len(ours)}"
    if fail_index < 0 or fail_index >= len(ours):
        return f"{param_path}: does not fit config {config_label} ({counts})"
    layer = ours[fail_index]
    # Re-run a greedy match up to the failing layer to name the NCNN layers at that place.
    mapping: dict[str, str] = {INPUT: INPUT}
    used: set[str] = set()
    for prev in ours[:fail_index]:
        want = frozenset(mapping.get(p, "?") for p in prev.preds)
        for t in theirs:
            if t.name not in used and t.preds == want and prev.fits(t):
                mapping[prev.name] = t.name
                used.add(t.name)
                break
    want = frozenset(mapping.get(p, "?") for p in layer.preds)
    same_place = [t for t in theirs if t.name not in used and t.preds == want]
    fed_by = ", ".join(sorted(_name_of(p) for p in layer.preds)) or "nothing"
    text = (
        f"{param_path}: the NCNN graph does not fit config {config_label}: our layer {layer.name} "
        f"expects a {layer.describe()} (fed by {fed_by})"
    )
    if same_place:
        found = "; ".join(f"{t.name}: {t.describe()}" for t in same_place[:3])
        text += f", but the NCNN graph has there: {found}"
    else:
        text += ", but the NCNN graph has no unmatched convolution fed by the same layers"
    return text + f" ({counts})"


def infer_num_classes(theirs: list[WeightedLayer], reg_max: int) -> Optional[int]:
    """Class count from the NCNN graph's output convolutions (C + 4*(reg_max+1) channels)."""
    fed = {p for t in theirs for p in t.preds}
    sinks = [t for t in theirs if t.name not in fed]
    channels = {t.out_channels for t in sinks}
    if len(channels) == 1:
        c = channels.pop() - 4 * (reg_max + 1)
        return c if c > 0 else None
    return None


_TRACE_CACHE: dict[tuple, list[WeightedLayer]] = {}


def _traced_config(model_cfg, trace_hw: tuple[int, int]) -> list[WeightedLayer]:
    """Weighted layers of a config's deploy model; cached, since configs that differ only in input
    size or training settings (m_320 / m_416) share one network."""
    from nanoplus.train.model import build_model

    key = (repr(model_cfg), tuple(trace_hw))
    if key not in _TRACE_CACHE:
        model = build_model(model_cfg, deploy=True, load_pretrained=False)
        _TRACE_CACHE[key] = trace_weighted_layers(model, trace_hw)
    return _TRACE_CACHE[key]


def suggest_configs(theirs: list[WeightedLayer], trace_hw: tuple[int, int], reg_max: int = 7) -> list[str]:
    """Built-in configs (with the class count the graph implies) whose deploy model fits ``theirs``
    (NCNN layers described at input size ``trace_hw``)."""
    from nanoplus.train.config import builtin_config_names, load_config

    num_classes = infer_num_classes(theirs, reg_max)
    overrides = [f"model.num_classes={num_classes}"] if num_classes else []
    fits = []
    for name in builtin_config_names():
        try:
            cfg = load_config(name, overrides)
            ours = _traced_config(cfg.model, trace_hw)
        except Exception:  # a config that cannot even build is simply not a suggestion
            continue
        if len(ours) == len(theirs) and match_layers(ours, theirs)[0] is not None:
            fits.append(name + (f" model.num_classes={num_classes}" if num_classes else ""))
    return fits


def trace_size(cfg) -> tuple[int, int]:
    """A small input that every level of the model still sees (2 cells at the coarsest stride)."""
    s = 2 * max(cfg.model.head.strides)
    return (s, s)


# ----------------------------------------------------------------------------------------------
# Writing our weights


def _unfold_into(state: dict, ours: WeightedLayer, theirs: WeightedLayer, params: dict, buffers: dict, modules: dict) -> int:
    """Write one NCNN layer's weights into our conv (+ BN); returns the number of tensors written."""
    import torch

    weight_key = f"{ours.name}.weight"
    target_shape = tuple(params[weight_key].shape)
    weight = theirs.weight.reshape(target_shape).astype(np.float32)
    bias = theirs.bias.astype(np.float32)
    state[weight_key] = torch.from_numpy(weight.copy())
    written = 1
    conv_bias_key = f"{ours.name}.bias"
    if ours.bn is None:
        if conv_bias_key in params:
            state[conv_bias_key] = torch.from_numpy(bias.copy())
            return written + 1
        if np.any(bias != 0):
            raise NcnnImportError(
                f"NCNN layer {theirs.name} has a bias but our {ours.name} has neither a bias nor a BatchNorm after it"
            )
        return written
    if conv_bias_key in params:
        state[conv_bias_key] = torch.zeros_like(params[conv_bias_key])
        written += 1
    bn = modules[ours.bn]
    eps = float(bn.eps)
    c = bias.size
    if bn.affine:
        # y = (x - 0) / sqrt(1 + eps) * sqrt(1 + eps) + b'
        state[f"{ours.bn}.weight"] = torch.full((c,), math.sqrt(1.0 + eps), dtype=torch.float32)
        state[f"{ours.bn}.bias"] = torch.from_numpy(bias.copy())
        state[f"{ours.bn}.running_mean"] = torch.zeros(c)
        state[f"{ours.bn}.running_var"] = torch.ones(c)
        written += 4
    else:
        # y = (x + b') / sqrt((1 - eps) + eps)
        state[f"{ours.bn}.running_mean"] = torch.from_numpy(-bias)
        state[f"{ours.bn}.running_var"] = torch.full((c,), 1.0 - eps)
        written += 2
    if f"{ours.bn}.num_batches_tracked" in buffers:
        state[f"{ours.bn}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        written += 1
    return written


def ncnn_to_state_dict(
    ncnn: NcnnModel | str | Path,
    model,
    trace_hw: tuple[int, int],
    config_label: str,
    allow_int8: bool = False,
    suggest: bool = True,
) -> tuple[dict, NcnnImportReport]:
    """Our ``model``'s state dict filled from the NCNN model's weights.

    ``model`` is our deploy model (backbone, fpn, head). Every parameter of it must be covered by
    an NCNN layer; buffers not written (e.g. the bin projection [0..reg_max]) keep the model's own.
    Raises NcnnImportError, naming the first layer that does not fit, when the graph does not
    fit the config.
    """
    if not isinstance(ncnn, NcnnModel):
        ncnn = load_ncnn_model(ncnn)
    theirs = ncnn_weighted_layers(ncnn, allow_int8=allow_int8, input_hw=trace_hw)
    ours = trace_weighted_layers(model, trace_hw)
    mapping, fail_index = match_layers(ours, theirs)
    if mapping is None or len(mapping) != len(theirs):
        message = explain_mismatch(ours, theirs, fail_index, ncnn.param_path, config_label)
        if mapping is not None:  # all of ours found a partner, but the NCNN graph has more
            extra = [t.name for t in theirs if t.name not in set(mapping.values())]
            message += f"; NCNN layers without a counterpart: {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}"
        if suggest:
            fits = suggest_configs(theirs, trace_hw)
            message += (
                f". Configs that fit this graph: {', '.join(fits)}" if fits
                else ". None of the built-in configs fits it either"
            )
        raise NcnnImportError(message)

    by_name = {t.name: t for t in theirs}
    for layer in ours:
        t = by_name[mapping[layer.name]]
        if layer.activation != t.activation:
            section = layer.name.split(".")[0]
            raise NcnnImportError(
                f"{ncnn.param_path}: NCNN layer {t.name} applies activation {t.activation} but our "
                f"{layer.name} applies {layer.activation}; set model.{section}.activation in the config to match"
            )

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    modules = dict(model.named_modules())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    report = NcnnImportReport(ncnn.param_path, "/".join(sorted(ncnn.weight_storages)) or "none")
    report.approximate = "int8" in ncnn.weight_storages
    written = 0
    covered: set[str] = set()
    for layer in ours:
        t = by_name[mapping[layer.name]]
        updates: dict = {}
        written += _unfold_into(updates, layer, t, params, buffers, modules)
        covered.update(updates)
        state.update(updates)
        report.matched.append((layer.name, t.name))
    missing = [k for k in params if k not in covered]
    if missing:
        raise NcnnImportError(
            f"{ncnn.param_path}: these parameters of config {config_label} have no counterpart in the NCNN "
            f"graph: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    report.tensors_written = written
    return state, report
