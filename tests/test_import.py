"""nanoplus import: NCNN reader, graph matching + BatchNorm un-folding, upstream checkpoints, the CLI.

Real-weights checks: the published fp16 NCNN model imported into our PyTorch model gives the
same outputs as the NCNN model run by the ncnn package; the upstream fixture checkpoints give
upstream's outputs; graphs that do not fit the config are refused with a message naming the layer.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGES, NCNN_FP16_DIR, NCNN_INT8_DIR, TINY_COCO, UPSTREAM_CASE, require, require_module
from nanoplus.runtime.ncnn_param import NcnnFormatError, parse_param
from nanoplus.train.ncnn_model import load_ncnn_model

FP16_PARAM = NCNN_FP16_DIR / "nanodet-plus-m_416.param"
INT8_PARAM = NCNN_INT8_DIR / "nanodet-plus-m_416-int8.param"


# ----------------------------------------------------------------------------------------------
# helpers


def require_model():
    require_module("torch")


def _write_ncnn(tmp_path: Path, param_text: str, blobs: list[bytes], name: str = "m") -> Path:
    param = tmp_path / f"{name}.param"
    param.write_text(param_text)
    (tmp_path / f"{name}.bin").write_bytes(b"".join(blobs))
    return param


def _tagged_fp32(values) -> bytes:
    return struct.pack("<I", 0) + np.asarray(values, "<f4").tobytes()


def _tagged_fp16(values) -> bytes:
    raw = np.asarray(values, "<f2").tobytes()
    return struct.pack("<I", 0x01306B47) + raw + b"\0" * (-len(raw) % 4)


def _tagged_int8(values) -> bytes:
    raw = np.asarray(values, np.int8).tobytes()
    return struct.pack("<I", 0x000D4B38) + raw + b"\0" * (-len(raw) % 4)


def _raw(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


# ----------------------------------------------------------------------------------------------
# .param / .bin reader


def test_param_parser_reads_blobs_scalars_and_arrays(tmp_path):
    param = tmp_path / "p.param"
    param.write_text(
        "7767517\n3 4\n"
        "Input            in0   0 1 in0\n"
        "Convolution      c0    1 1 in0 a 0=2 1=3 11=1 4=-233 5=1 6=6 9=2 -23310=1,1.000000e-01\n"
        "Slice            s0    1 2 a b c -23300=2,-233,-233 1=0 3=1.5,2.5 7=hello\n"
    )
    layers = parse_param(param)
    assert [l.type for l in layers] == ["Input", "Convolution", "Slice"]
    conv = layers[1]
    assert conv.bottoms == ["in0"] and conv.tops == ["a"]
    assert conv.params[0] == 2 and conv.params[11] == 1 and conv.params[4] == -233
    assert conv.params[10] == [pytest.approx(0.1)]  # -23310 is the array form of key 10
    assert isinstance(conv.params[10][0], float)
    sl = layers[2]
    assert sl.tops == ["b", "c"]
    assert sl.params[0] == [-233, -233] and sl.params[1] == 0
    assert sl.params[3] == [1.5, 2.5] and sl.params[7] == "hello"


@pytest.mark.parametrize("bad, fragment", [
    ("123\n1 1\nInput in0 0 1 in0\n", "magic"),
    ("7767517\n2 2\nInput in0 0 1 in0\n", "header says 2 layers"),
    ("7767517\n1 1\nInput in0 0 1 in0 -23300=3,1,2\n", "says 3 elements"),
    ("7767517\n1 1\nInput in0 0 2 in0\n", "lists fewer blobs"),
])
def test_param_parser_rejects_broken_files(tmp_path, bad, fragment):
    param = tmp_path / "bad.param"
    param.write_text(bad)
    with pytest.raises(NcnnFormatError, match=fragment):
        parse_param(param)


def test_bin_reader_handles_storage_tags_alignment_and_raw_blobs(tmp_path):
    w0 = np.arange(6, dtype=np.float32) - 2.5  # fp16-exact values
    w1 = np.array([0.5, -1.25, 3.0], np.float32)  # 3 halves = 6 bytes -> 2 padding bytes
    q = np.array([1, -2, 3, 127, -128], np.int8)
    param = _write_ncnn(tmp_path, (
        "7767517\n5 5\n"
        "Input in0 0 1 in0\n"
        "Convolution c0 1 1 in0 a 0=2 1=1 5=1 6=6\n"
        "ConvolutionDepthWise c1 1 1 a b 0=3 1=1 5=0 6=3 7=3\n"
        "BatchNorm bn 1 1 b c 0=2 1=1e-5\n"
        "Convolution c2 1 1 c d 0=5 1=1 5=0 6=5 8=1\n"
    ), [
        _tagged_fp32(w0), _raw([7, 8]),
        _tagged_fp16(w1),
        _raw([1, 2]), _raw([3, 4]), _raw([5, 6]), _raw([7, 8]),
        _tagged_int8(q), _raw([10, 20, 30, 40, 50]), _raw([0.5]),
    ])
    model = load_ncnn_model(param)
    by_name = {l.name: l for l in model.layers}
    np.testing.assert_array_equal(by_name["c0"].weights["weight"], w0)
    np.testing.assert_array_equal(by_name["c0"].weights["bias"], [7, 8])
    assert by_name["c0"].weight_storage == "fp32"
    np.testing.assert_array_equal(by_name["c1"].weights["weight"], w1)
    assert by_name["c1"].weight_storage == "fp16" and "bias" not in by_name["c1"].weights
    np.testing.assert_array_equal(by_name["bn"].weights["var"], [5, 6])
    np.testing.assert_array_equal(by_name["c2"].weights["weight"], q.astype(np.float32))
    np.testing.assert_array_equal(by_name["c2"].weights["weight_int8_scales"], [10, 20, 30, 40, 50])
    assert by_name["c2"].weight_storage == "int8"
    assert model.weight_storages == {"fp32", "fp16", "int8"}
    assert model.input_blobs == ["in0"] and model.output_blobs == ["d"]


def test_bin_reader_refuses_a_bin_of_the_wrong_size(tmp_path):
    text = "7767517\n2 2\nInput in0 0 1 in0\nConvolution c0 1 1 in0 a 0=2 1=1 5=1 6=6\n"
    short = _write_ncnn(tmp_path, text, [_tagged_fp32(np.zeros(6)), _raw([1])], "short")
    with pytest.raises(NcnnFormatError, match="does not belong to this .param or is truncated"):
        load_ncnn_model(short)
    long = _write_ncnn(tmp_path, text, [_tagged_fp32(np.zeros(6)), _raw([1, 2, 3])], "long")
    with pytest.raises(NcnnFormatError, match="4 bytes are left"):
        load_ncnn_model(long)
    (tmp_path / "nobin.param").write_text(text)
    with pytest.raises(NcnnFormatError, match="missing"):
        load_ncnn_model(tmp_path / "nobin.param")


@pytest.mark.parametrize("param, storage", [(FP16_PARAM, "fp16"), (INT8_PARAM, "int8")])
def test_published_models_are_read_completely(param, storage):
    model = load_ncnn_model(require(param))  # raises unless the .bin is used up exactly
    weighted = [l for l in model.layers if l.weights]
    assert len(weighted) == 110
    assert model.weight_storages == {storage}
    assert len(model.input_blobs) == 1 and len(model.output_blobs) == 1
    for layer in weighted:
        kh = layer.params.get(11, layer.params[1])
        assert layer.weights["weight"].size == layer.params[6]
        assert layer.weights["weight"].size % (layer.params[0] * layer.params[1] * kh) == 0
        assert np.isfinite(layer.weights["weight"]).all() and np.isfinite(layer.weights["bias"]).all()


# ----------------------------------------------------------------------------------------------
# Graph matching and un-folding on small networks exported by pnnx (independent of our model)


def _small_net_class():
    import torch
    from torch import nn

    class ConvBNAct(nn.Sequential):
        def __init__(self, cin, cout, k=1, stride=1, groups=1, act=True):
            layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
            super().__init__(*layers, *([nn.LeakyReLU(0.1, inplace=True)] if act else []))

    class SmallNet(nn.Module):
        """Two parallel branches, a concat, an upsample and two heads of the same shape reading
        the same map at two resolutions: ties only the spatial sizes can break."""

        def __init__(self, heads_reversed=False, num_out=5):
            super().__init__()
            self.heads_reversed = heads_reversed
            self.stem = ConvBNAct(3, 8, 3, 2)
            self.a = nn.Sequential(ConvBNAct(8, 8, 3, 1, 8, act=False), ConvBNAct(8, 16))
            self.b = nn.Sequential(ConvBNAct(8, 16), ConvBNAct(16, 16, 3, 2, 16, act=False), ConvBNAct(16, 16))
            self.pool = nn.MaxPool2d(2)
            self.fuse = ConvBNAct(32, 16)
            self.heads = nn.ModuleList([nn.Conv2d(16, num_out, 1), nn.Conv2d(16, num_out, 1)])

        def forward(self, x):
            x = self.stem(x)
            y = self.fuse(torch.cat([self.pool(self.a(x)), self.b(x)], 1))
            z = nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear")
            if self.heads_reversed:  # same function, other execution order
                h1 = self.heads[1](z)
                h0 = self.heads[0](y)
            else:
                h0, h1 = self.heads[0](y), self.heads[1](z)
            return torch.cat([h0.flatten(2), h1.flatten(2)], 2)

    return SmallNet


def _randomise_bn(model, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def small_ncnn(tmp_path_factory):
    """(net, input, {"fp32": param, "fp16": param}) exported by pnnx."""
    torch = require_module("torch")
    pnnx = require_module("pnnx")
    torch.manual_seed(0)
    net = _randomise_bn(_small_net_class()().eval())
    x = torch.rand(1, 3, 32, 32)
    out = {}
    for storage, fp16 in (("fp32", False), ("fp16", True)):
        folder = tmp_path_factory.mktemp(f"pnnx_{storage}")
        pt = folder / "small.pt"
        pnnx.export(net, str(pt), (x,), fp16=fp16)
        out[storage] = folder / "small.ncnn.param"
        assert out[storage].is_file(), "pnnx wrote no NCNN model"
    return net, x, out


@pytest.mark.parametrize("storage, tol", [("fp32", 1e-5), ("fp16", 2e-2)])
@pytest.mark.parametrize("heads_reversed", [False, True])
def test_small_network_round_trips_through_ncnn(small_ncnn, storage, tol, heads_reversed):
    import torch
    from nanoplus.train.ncnn_import import ncnn_to_state_dict

    net, x, params = small_ncnn
    fresh = _small_net_class()(heads_reversed=heads_reversed).eval()
    state, report = ncnn_to_state_dict(params[storage], fresh, (32, 32), "small", suggest=False)
    fresh.load_state_dict(state)
    assert dict(report.matched)["heads.1"] == _conv_reading_the_upsampled_map(params[storage])
    with torch.no_grad():
        diff = (fresh(x) - net(x)).abs().max().item()
    assert diff < tol, f"{storage}: max abs diff {diff}"
    # the BN was un-folded: unit statistics, the folded scale in the conv
    assert torch.all(state["fuse.1.running_var"] == 1) and torch.all(state["fuse.1.running_mean"] == 0)
    assert report.storage == storage and report.tensors_written == 46


def _conv_reading_the_upsampled_map(param) -> str:
    """Found from the .param text alone: the Convolution whose input comes from the Interp layer
    (possibly through Split layers)."""
    layers = parse_param(param)
    producer = {top: layer for layer in layers for top in layer.tops}
    for layer in layers:
        if layer.type != "Convolution":
            continue
        source = producer.get(layer.bottoms[0])
        while source is not None and source.type == "Split":
            source = producer.get(source.bottoms[0])
        if source is not None and source.type == "Interp":
            return layer.name
    raise AssertionError("no convolution reads the upsampled map")


def test_small_network_with_other_shape_is_refused(small_ncnn):
    from nanoplus.train.ncnn_import import NcnnImportError, ncnn_to_state_dict

    _, _, params = small_ncnn
    other = _small_net_class()(num_out=7).eval()
    with pytest.raises(NcnnImportError) as err:
        ncnn_to_state_dict(params["fp32"], other, (32, 32), "small-7", suggest=False)
    message = str(err.value)
    assert "heads.0" in message and "conv 16->7 1x1" in message and "16->5" in message


# ----------------------------------------------------------------------------------------------
# The published fp16 NCNN model against the ncnn package


def _preprocess(path: Path, input_hw=(416, 416)):
    import cv2
    from nanoplus.runtime.preprocess import get_warp_matrix, normalize_to_blob, warp_image

    img = cv2.imread(str(path))
    matrix = get_warp_matrix(img.shape[:2], input_hw)
    return normalize_to_blob(warp_image(img, matrix, input_hw), (103.53, 116.28, 123.675), (57.375, 57.12, 58.395))


def _run_ncnn(param: Path, blob: np.ndarray, fp32_compute: bool) -> np.ndarray:
    ncnn = require_module("ncnn")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    if fp32_compute:  # weights are still the fp16 values, arithmetic in fp32
        net.opt.use_fp16_storage = False
        net.opt.use_fp16_packed = False
        net.opt.use_fp16_arithmetic = False
        net.opt.use_bf16_storage = False
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    model = load_ncnn_model(param)
    ex = net.create_extractor()
    ex.input(model.input_blobs[0], ncnn.Mat(np.ascontiguousarray(blob[0])))
    ret, out = ex.extract(model.output_blobs[0])
    assert ret == 0
    return np.array(out).T.copy()  # (112, N) -> (N, 112)


@pytest.fixture(scope="module")
def ncnn_ckpt(tmp_path_factory):
    """The published fp16 NCNN model imported with the CLI: (checkpoint path, printed summary)."""
    require_model()
    import contextlib
    import io

    out = tmp_path_factory.mktemp("ncnn_import") / "m416.ckpt"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = _cli(["import", str(require(FP16_PARAM)), "--config", "nanodet-plus-m_416", "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def imported_fp16(ncnn_ckpt):
    """Our deploy model (eval mode) loaded from the imported checkpoint."""
    model, cfg, names = _load_deploy(ncnn_ckpt[0])
    return model, cfg, names


def _compare_with_ncnn(model, image: Path):
    import torch

    blob = _preprocess(image)
    with torch.no_grad():
        ours = model(torch.from_numpy(blob))[0].numpy()
    exact = _run_ncnn(FP16_PARAM, blob, fp32_compute=True)
    default = _run_ncnn(FP16_PARAM, blob, fp32_compute=False)
    return ours, exact, default


def _diffs(ours, theirs, num_classes=80):
    d = np.abs(ours - theirs)
    return float(d[:, :num_classes].max()), float(d[:, num_classes:].max())


def test_cli_import_of_published_ncnn_model_writes_a_deploy_checkpoint(ncnn_ckpt):
    import torch

    out, printed = ncnn_ckpt
    assert "110 layers matched" in printed and "fp16 weights" in printed and str(out) in printed
    saved = torch.load(out, weights_only=True)
    assert saved["format"] == "nanoplus-checkpoint" and saved["ema"] is None
    assert not any(k.startswith("aux_") for k in saved["model"])
    assert saved["class_names"][:3] == ["person", "bicycle", "car"] and len(saved["class_names"]) == 80
    assert saved["config"]["model"]["num_classes"] == 80
    # every BatchNorm was un-folded: unit statistics, folded bias in the BN bias
    bn_vars = [v for k, v in saved["model"].items() if k.endswith("running_var")]
    assert len(bn_vars) == 106 and all(torch.all(v == 1) for v in bn_vars)


def test_imported_fp16_ncnn_matches_ncnn_runtime_on_one_photo(imported_fp16):
    model, _, _ = imported_fp16
    ours, exact, default = _compare_with_ncnn(model, require(IMAGES / "dog.jpg"))
    assert ours.shape == exact.shape == (3598, 112)
    logits, bins = _diffs(ours, exact)
    # Same fp16-rounded weights, fp32 arithmetic on both sides: only summation order differs.
    assert logits < 1e-3 and bins < 1e-3, (logits, bins)
    logits, bins = _diffs(ours, default)
    # ncnn's default path may keep activations in fp16 on CPUs that support it.
    assert logits < 0.1 and bins < 0.1, (logits, bins)
    # and the detections agree: the same top-scoring (point, class) pairs
    top_ours = set(np.argsort(ours[:, :80].ravel())[-20:])
    top_ncnn = set(np.argsort(exact[:, :80].ravel())[-20:])
    assert len(top_ours & top_ncnn) >= 18


@pytest.mark.slow
def test_imported_fp16_ncnn_matches_ncnn_runtime_on_all_photos(imported_fp16):
    model, _, _ = imported_fp16
    photos = sorted(require(IMAGES).glob("*.jpg"))
    assert len(photos) >= 5
    worst = np.zeros(4)
    for photo in photos:
        ours, exact, default = _compare_with_ncnn(model, photo)
        worst = np.maximum(worst, _diffs(ours, exact) + _diffs(ours, default))
    print(f"max abs diff vs ncnn fp32 compute: logits {worst[0]:.2e} bins {worst[1]:.2e}; "
          f"vs ncnn default: logits {worst[2]:.2e} bins {worst[3]:.2e}")
    assert worst[0] < 1e-3 and worst[1] < 1e-3
    assert worst[2] < 0.1 and worst[3] < 0.1


# ----------------------------------------------------------------------------------------------
# Graphs that do not fit the config are refused


def _refusal(config, overrides, suggest=True) -> str:
    from nanoplus.train.config import load_config
    from nanoplus.train.model import build_model
    from nanoplus.train.ncnn_import import NcnnImportError, ncnn_to_state_dict, trace_size

    cfg = load_config(config, overrides)
    model = build_model(cfg.model, deploy=True, load_pretrained=False)
    with pytest.raises(NcnnImportError) as err:
        ncnn_to_state_dict(require(FP16_PARAM), model, trace_size(cfg), " ".join([config, *overrides]), suggest=suggest)
    return str(err.value)


def test_ncnn_graph_of_another_width_is_refused_with_the_configs_that_fit():
    require_model()
    message = _refusal("nanodet-plus-m-1.5x_416", [])
    assert str(FP16_PARAM) in message and "does not fit config nanodet-plus-m-1.5x_416" in message
    # the first layer where 1.5x differs: ShuffleNetV2 stage 2 has 88 channels per branch, not 58
    assert "backbone.stage2.0.branch1.2 expects a conv 24->88 1x1" in message and "24->58" in message
    assert "Configs that fit this graph: nanodet-plus-m_320 model.num_classes=80, nanodet-plus-m_416 model.num_classes=80" in message


def test_ncnn_graph_of_another_backbone_is_refused():
    require_model()
    message = _refusal("nanodet-plus-mbv2_416", [], suggest=False)
    assert "expects a conv 3->32 3x3 stride 2 (fed by the network input)" in message and "3->24" in message
    assert "has 110" in message and "has 107" in message  # the layer counts differ too


def test_cli_refuses_ncnn_graph_with_another_class_count_and_int8_weights(tmp_path, capsys):
    require_model()
    bad = tmp_path / "bad.ckpt"
    assert _cli(["import", str(require(FP16_PARAM)), "--config", "nanodet-plus-m_416", "model.num_classes=20",
                 "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "our layer head.gfl_cls.0 expects a conv 96->52 1x1" in err and "96->112" in err
    assert "nanodet-plus-m_416 model.num_classes=80" in err  # what would fit
    assert not bad.exists()
    assert _cli(["import", str(require(INT8_PARAM)), "--config", "nanodet-plus-m_416", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "int8-quantised" in err and "cannot be turned back" in err and "--approximate-int8" in err
    assert not bad.exists()


def test_int8_model_imports_approximately_when_asked(imported_fp16):
    """The de-quantised int8 weights (int8 / per-channel scale) come from the same published model,
    so they must sit within int8 rounding of the fp16 model's weights, layer by layer (which also
    shows the matcher found the same layers in a graph written by another converter, onnx2ncnn)."""
    from nanoplus.train.config import load_config
    from nanoplus.train.model import build_model
    from nanoplus.train.ncnn_import import ncnn_to_state_dict, trace_size

    cfg = load_config("nanodet-plus-m_416")
    model = build_model(cfg.model, deploy=True, load_pretrained=False)
    state, report = ncnn_to_state_dict(require(INT8_PARAM), model, trace_size(cfg), cfg.name, allow_int8=True)
    assert report.approximate and report.storage == "int8" and len(report.matched) == 110
    reference = imported_fp16[0].state_dict()
    conv_weights = [k for k, v in reference.items() if v.dim() == 4]
    assert len(conv_weights) == 110
    for key in conv_weights:
        # int8 rounding moves a weight by at most half a step, 0.5/127 of the tensor's largest
        # weight (per-channel scales only make the steps finer); fp16 storage adds < 0.05%.
        err = ((state[key] - reference[key]).abs().max() / reference[key].abs().max()).item()
        assert err < 0.5 / 127 + 5e-4, f"{key}: de-quantised weights differ by {err:.3%} of the largest weight"
    for key in [k for k in reference if k.endswith("bn.bias") or k.endswith("norm.bias")][:20]:
        assert (state[key] - reference[key]).abs().max().item() < 1e-3  # biases are stored as fp32 there


# ----------------------------------------------------------------------------------------------
# Upstream checkpoints


def _case():
    return np.load(require(UPSTREAM_CASE) / "case.npz")


def _cli(args: list[str]) -> int:
    from nanoplus.cli import main

    return main(args)


def _load_deploy(ckpt: Path):
    from nanoplus.train.checkpoint import load_model_for_inference

    model, cfg, names = load_model_for_inference(ckpt)
    return model, cfg, names


def test_import_upstream_ckpt_takes_ema_weights(tmp_path, capsys):
    require_model()
    import torch

    case = _case()
    out = tmp_path / "up.ckpt"
    assert _cli(["import", str(UPSTREAM_CASE / "upstream_ckpt.ckpt"), "--config", "nanodet-plus-m_416",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tensors loaded" in printed and str(out) in printed
    model, cfg, names = _load_deploy(out)
    assert len(names) == 80 and names[0] == "person"  # COCO names for an 80-class model
    with torch.no_grad():
        got = model(torch.from_numpy(case["img"])).numpy()
    np.testing.assert_allclose(got, case["deploy_out_ckpt"], atol=1e-4, rtol=0)
    assert np.abs(got - case["deploy_out"]).max() > 1e-2  # not the non-EMA weights
    saved = torch.load(out, weights_only=True)
    assert any(k.startswith("aux_head.") for k in saved["model"])  # the full model came along


def test_import_plain_state_dict(tmp_path):
    require_model()
    import torch

    case = _case()
    out = tmp_path / "sd.ckpt"
    names = tmp_path / "names.txt"
    names.write_text("".join(f"thing{i}\n" for i in range(80)))
    assert _cli(["import", str(UPSTREAM_CASE / "state_dict.pt"), "--config", "nanodet-plus-m_416",
                 "--names", str(names), "--out", str(out)]) == 0
    model, _, class_names = _load_deploy(out)
    assert class_names[79] == "thing79"
    with torch.no_grad():
        got = model(torch.from_numpy(case["img"])).numpy()
    np.testing.assert_allclose(got, case["deploy_out"], atol=1e-4, rtol=0)


def test_upstream_weights_for_another_class_count_are_refused_unless_partial(tmp_path, capsys):
    require_model()
    out = tmp_path / "c20.ckpt"
    src = str(require(UPSTREAM_CASE / "state_dict.pt"))
    assert _cli(["import", src, "--config", "nanodet-plus-m_416", "model.num_classes=20", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "head.gfl_cls" in err and "--partial" in err and "num_classes" in err
    assert not out.exists()
    assert _cli(["import", src, "--config", "nanodet-plus-m_416", "model.num_classes=20", "--partial",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept fresh weights" in printed and "class0" in printed


def test_legacy_pickle_needs_explicit_opt_in(tmp_path, capsys):
    require_model()
    import argparse

    import torch

    weights = torch.load(require(UPSTREAM_CASE) / "state_dict.pt", weights_only=True)
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in weights.items()}, "hparams": argparse.Namespace(lr=0.001)}, legacy)
    out = tmp_path / "legacy_out.ckpt"
    assert _cli(["import", str(legacy), "--config", "nanodet-plus-m_416", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "argparse.Namespace" in err and not out.exists()
    with pytest.warns(UserWarning, match="unpickling"):
        assert _cli(["import", str(legacy), "--config", "nanodet-plus-m_416", "--allow-pickle", "--out", str(out)]) == 0
    assert out.exists()


@pytest.mark.parametrize("argv", [
    ["S.param", "--config", "cfg", "a.b=1", "--out", "o.ckpt"],
    ["--config", "cfg", "S.param", "a.b=1", "--out", "o.ckpt"],
    ["S.param", "a.b=1", "--config", "cfg", "--out", "o.ckpt"],
    ["--out", "o.ckpt", "--config", "cfg", "a.b=1", "S.param"],
])
def test_command_line_orders(argv):
    from nanoplus.cli import build_command_parser
    from nanoplus.train.import_command import _split_config_args

    args = build_command_parser("import").parse_intermixed_args(argv)
    assert _split_config_args(args) == ("cfg", ["a.b=1"], Path("S.param"))


def test_class_names_resolution(tmp_path):
    from nanoplus.train.config import load_config
    from nanoplus.train.import_command import ImportCommandError, resolve_class_names

    names, origin = resolve_class_names(load_config("nanodet-plus-m_416", ["model.num_classes=3"]), None)
    assert names == ["class0", "class1", "class2"] and origin.startswith("placeholders")
    cfg = load_config("nanodet-plus-m_416", ["model.num_classes=2", "class_names=[cat, dog]"])
    assert resolve_class_names(cfg, None) == (["cat", "dog"], "the config's class_names")
    names_file = tmp_path / "n.txt"
    names_file.write_text("a\n\nb\nc\n")
    with pytest.raises(ImportCommandError, match="has 3 names but model.num_classes is 2"):
        resolve_class_names(cfg, str(names_file))
    import json

    annotations = json.loads((require(TINY_COCO) / "annotations" / "instances_val2017.json").read_text())
    official = [c["name"] for c in sorted(annotations["categories"], key=lambda c: c["id"])]
    names, origin = resolve_class_names(load_config("nanodet-plus-m_416"), None)
    assert names == official and origin.startswith("COCO")


# ----------------------------------------------------------------------------------------------
# Accuracy of the imported model (needs the runtime's eval)


@pytest.mark.slow
def test_imported_ncnn_model_coco_map_on_tiny_coco(tmp_path, capsys):
    require_model()
    require(TINY_COCO)
    out = tmp_path / "ncnn.ckpt"
    assert _cli(["import", str(require(FP16_PARAM)), "--config", "nanodet-plus-m_416", "--out", str(out)]) == 0
    capsys.readouterr()
    json_out = tmp_path / "metrics.json"
    assert _cli(["eval", str(out), "--data", str(TINY_COCO), "--split", "val", "--json", str(json_out), "--quiet"]) == 0
    import json

    metrics = json.loads(json_out.read_text())
    print(f"tiny_coco val2017 mAP {metrics['mAP']:.4f} AP50 {metrics['AP50']:.4f}")
    assert abs(metrics["mAP"] - 0.372) <= 0.005
