"""The native C++ program (android_demo/): same detections as the Python runtime, bench JSON in the schema.

The program is not built in the default run (ncnn builds from source in several minutes):
`android_demo/scripts/build.sh host` builds it, or `pytest -m slow tests/test_native.py` (the slow
test builds it first). Without it every test here skips, saying so. NANOPLUS_NCNN_BIN points at
another build (e.g. a Raspberry Pi's).

What is compared: `nanoplus_ncnn detect` against `nanoplus.runtime.detector.Detector` (ncnn
backend) on the same .param and the same decoded pixels (the photos re-encoded losslessly as PNG,
because stb's JPEG decoder is not OpenCV's): the network input must be bit-identical to the
project's reference pre-processing (runtime/preprocess_reference.py), the
detections the same classes with boxes within 1 px and scores within 1e-3 (measured: see
android_demo/README.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGES, NCNN_FP16_DIR, NCNN_INT8_DIR, REPO_ROOT, TINY_COCO, require, require_module

DEMO = REPO_ROOT / "android_demo"
BUILD = DEMO / "build"
HOST_BIN = Path(os.environ.get("NANOPLUS_NCNN_BIN", BUILD / "host" / "nanoplus" / "nanoplus_ncnn"))
AARCH64_BIN = BUILD / "aarch64" / "nanoplus" / "nanoplus_ncnn"
JNI_LIB = BUILD / "host" / "nanoplus" / "libnanoplus_jni.so"
FP16_PARAM = NCNN_FP16_DIR / "nanodet-plus-m_416.param"
INT8_PARAM = NCNN_INT8_DIR / "nanodet-plus-m_416-int8.param"
PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")

BOX_TOL_PX = 1.0
SCORE_TOL = 1e-3


def native_bin() -> Path:
    if not HOST_BIN.is_file():
        pytest.skip(f"native program not built ({HOST_BIN} is missing): run android_demo/scripts/build.sh host "
                    "(builds ncnn from source, several minutes) or pytest -m slow tests/test_native.py")
    return HOST_BIN


def run_native(*args, binary: Path | None = None, prefix=(), check=True, timeout=300) -> subprocess.CompletedProcess:
    args = [str(a) for a in args]
    if args and args[0] in ("detect", "bench", "info") and "--threads" not in args:
        args += ["--threads", "1"]  # ncnn's default uses every core: slow on a shared machine
    cmd = [*prefix, str(binary or native_bin()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def png_photos(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """The shared photos as OpenCV decodes them, re-encoded losslessly: (png path, BGR pixels)."""
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in PHOTOS:
        img = cv2.imread(str(require(IMAGES / f"{name}.jpg")), cv2.IMREAD_COLOR)
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), img)
        out[name] = (path, img)
    return out


def python_detections(param: Path, images: list[np.ndarray], precision: str, **kwargs) -> list:
    require_module("ncnn")
    from nanoplus.runtime.detector import Detector

    det = Detector(param, backend="ncnn", threads=1, precision=precision, **kwargs)
    return [det(img) for img in images]


def native_detections(param: Path, paths: list[Path], tmp_path: Path, *flags, binary=None, prefix=()) -> list[list[dict]]:
    out = tmp_path / "dets.json"
    run_native("detect", param, *paths, "--json", out, *flags, binary=binary, prefix=prefix)
    doc = json.loads(out.read_text())
    assert [Path(entry["file"]).name for entry in doc["images"]] == [Path(p).name for p in paths]
    return [entry["detections"] for entry in doc["images"]]


def compare(python_dets, native: list[dict], score_thr: float) -> dict:
    """Match detections one to one (same class, closest box); returns the largest differences.

    Detections within SCORE_TOL of the threshold may be on either side of it in one program and
    not the other; every other detection must be matched.
    """
    py = [(int(c), float(s), np.asarray(b, dtype=np.float64)) for b, s, c in zip(python_dets.boxes, python_dets.scores, python_dets.class_ids)]
    nat = [(int(d["class_id"]), float(d["score"]), np.asarray(d["box"], dtype=np.float64)) for d in native]
    used, box_diff, score_diff, unmatched = set(), 0.0, 0.0, []
    for cls, score, box in py:
        candidates = [(np.abs(box - b).max(), j) for j, (c, s, b) in enumerate(nat) if c == cls and j not in used]
        best = min(candidates, default=None)
        if best is None or best[0] > BOX_TOL_PX or abs(nat[best[1]][1] - score) > SCORE_TOL:
            unmatched.append(("python", cls, score, box.round(2).tolist()))
            continue
        used.add(best[1])
        box_diff = max(box_diff, best[0])
        score_diff = max(score_diff, abs(nat[best[1]][1] - score))
    unmatched += [("native", c, s, b.round(2).tolist()) for j, (c, s, b) in enumerate(nat) if j not in used]
    real = [u for u in unmatched if u[2] > score_thr + SCORE_TOL]
    assert not real, f"detections without a counterpart (program, class, score, box): {real}"
    return {"n": len(py), "box": box_diff, "score": score_diff, "near_threshold": len(unmatched)}


def test_cpp_coco_names_are_the_runtimes():
    """The C++ library keeps its own copy of the 80 COCO names (no Python there): it must not drift."""
    import re

    from nanoplus.runtime.coco import COCO_CLASS_NAMES

    source = (DEMO / "cpp" / "metadata.cpp").read_text()
    body = source[source.index("coco_class_names()"):]
    body = body[body.index("{", body.index("names")):body.index("};")]
    assert tuple(re.findall(r'"([^"]*)"', body)) == COCO_CLASS_NAMES


# ------------------------------------------------------------------------------------------------
# building (slow; everything below skips until the program exists)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_build_native_program():
    """android_demo/scripts/build.sh host builds ncnn and the program, which then runs."""
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not Path("/usr/include/stb/stb_image.h").is_file():
        pytest.skip("stb headers missing: apt-get install libstb-dev")
    proc = subprocess.run(["bash", str(DEMO / "scripts" / "build.sh"), "host"], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert HOST_BIN.is_file()
    version = run_native("--version").stdout
    assert version.startswith("nanoplus_ncnn ") and "ncnn 1.0." in version


# ------------------------------------------------------------------------------------------------
# same pipeline as the Python runtime
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dog", "giraffe", "scream"])  # down-scaled, square, up-scaled
def test_network_input_is_bit_identical(name, png_photos, tmp_path):
    """The C++ warp + normalisation gives exactly the blob of the project's reference
    (runtime/preprocess_reference.py), which defines the pre-processing; the Python runtime's
    compiled path equals it too (tests/test_native_preprocess.py)."""
    path, img = png_photos[name]
    dump = tmp_path / "input.f32"
    run_native("detect", require(FP16_PARAM), path, "--dump-input", dump)
    native = np.fromfile(dump, dtype=np.float32).reshape(1, 3, 416, 416)
    blob = _reference_blob(img)
    assert np.array_equal(native, blob), f"max difference {np.abs(native - blob).max()}"


def _reference_blob(img):
    """The reference pre-processing of a foreign 416x416 model (stretch, BGR, upstream's mean/std)."""
    from nanoplus.runtime.metadata import ModelMeta
    from nanoplus.runtime.preprocess import get_warp_matrix
    from nanoplus.runtime.preprocess_reference import reference_blob

    meta = ModelMeta.for_foreign_model(80, (416, 416))
    matrix = get_warp_matrix(img.shape[:2], meta.input_hw, keep_ratio=meta.resize_mode == "letterbox")
    return reference_blob(img, matrix, meta.input_hw, meta.mean, meta.std, to_rgb=meta.color_order == "RGB")


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_fp16_model_matches_python_runtime(precision, png_photos, tmp_path):
    """Published fp16 model (channels-first logits), all photos: same classes, boxes, scores."""
    param = require(FP16_PARAM)
    names = list(png_photos)
    expected = python_detections(param, [png_photos[n][1] for n in names], precision)
    native = native_detections(param, [png_photos[n][0] for n in names], tmp_path, "--precision", precision)
    worst = {"n": 0, "box": 0.0, "score": 0.0, "near_threshold": 0}
    for name, py, nat in zip(names, expected, native):
        diff = compare(py, nat, 0.35)
        worst = {k: worst[k] + diff[k] if k in ("n", "near_threshold") else max(worst[k], diff[k]) for k in worst}
    assert worst["n"] >= 20  # the photos hold dogs, horses, people, a giraffe, kites ...
    print(f"fp16 model, precision {precision}: {worst}")


def test_int8_model_and_upstream_thresholds_match_python_runtime(png_photos, tmp_path):
    """Published int8 model ((N, 112) sigmoid scores) at upstream's evaluation settings (0.05 / 0.6 / 100)."""
    param = require(INT8_PARAM)
    names = ["dog", "kite", "person"]
    expected = python_detections(param, [png_photos[n][1] for n in names], "auto", score_thr=0.05)
    native = native_detections(param, [png_photos[n][0] for n in names], tmp_path, "--score-thr", 0.05)
    for name, py, nat in zip(names, expected, native):
        diff = compare(py, nat, 0.05)
        assert diff["n"] > 10, name
        print(f"int8 {name}: {diff}")


@pytest.fixture(scope="module")
def our_int8(tmp_path_factory) -> Path:
    """The published fp16 file through nanoplus's own INT8 writer (export/ncnn_int8.py): every
    convolution int8, minmax scales from 4 tiny_coco train images (seconds; the slow export test
    makes the calibrated file)."""
    require_module("ncnn")
    from nanoplus.export.ncnn_int8 import quantize_ncnn
    from nanoplus.runtime.datasets import load_dataset
    from nanoplus.runtime.metadata import ModelMeta

    meta = ModelMeta.for_foreign_model(80, (416, 416), layout="CN", score_activation="none", input_name="in0",
                                       output_name="out0", model_name="nanodet-plus-m_416", precision="fp16")
    out = tmp_path_factory.mktemp("our_int8") / "m416_ncnn_int8.param"
    calib = load_dataset(str(require(TINY_COCO)), split="train")
    quantize_ncnn(require(FP16_PARAM), meta, calib, out, max_images=4, method="minmax", budget=None, threads=1,
                  progress=lambda s: None)
    return out


def test_our_int8_model_matches_python_runtime(our_int8, png_photos, tmp_path):
    """nanoplus's INT8 file (requantising int8 chains): the program's detections are the Python runtime's."""
    names = ["dog", "kite", "person"]
    expected = python_detections(our_int8, [png_photos[n][1] for n in names], "fp32", score_thr=0.05)
    native = native_detections(our_int8, [png_photos[n][0] for n in names], tmp_path, "--precision", "fp32",
                               "--score-thr", 0.05)
    for name, py, nat in zip(names, expected, native):
        diff = compare(py, nat, 0.05)
        assert diff["n"] > 10, name
        print(f"our int8 {name}: {diff}")


def test_single_label_and_max_det(png_photos, tmp_path):
    param = require(FP16_PARAM)
    path, img = png_photos["kite"]
    expected = python_detections(param, [img], "fp32", score_thr=0.05, max_det=7, multi_label=False)[0]
    native = native_detections(param, [path], tmp_path, "--precision", "fp32", "--score-thr", 0.05, "--max-det", 7, "--single-label")[0]
    assert len(native) == 7
    compare(expected, native, 0.05)


def test_sidecar_metadata_letterbox(png_photos, tmp_path):
    """A nanoplus sidecar (<model>.json) is read: names, letterbox resize, blob names, layout, logits."""
    from nanoplus.runtime.metadata import ModelMeta, write_sidecar

    src = require(FP16_PARAM)
    param = tmp_path / "model.param"
    param.symlink_to(src)
    (tmp_path / "model.bin").symlink_to(src.with_suffix(".bin"))
    meta = ModelMeta.for_foreign_model(80, (416, 416), class_names=[f"thing{i}" for i in range(80)], resize_mode="letterbox",
                                       layout="CN", score_activation="none", input_name="in0", output_name="out0",
                                       model_name="letterboxed", precision="fp16")
    write_sidecar(meta, param)
    info = run_native("info", param).stdout
    assert "letterboxed" in info and "letterbox" in info and "in0 -> out0" in info
    path, img = png_photos["horses"]
    expected = python_detections(param, [img], "fp32")[0]
    native = native_detections(param, [path], tmp_path, "--precision", "fp32")[0]
    assert native and all(d["class_name"].startswith("thing") for d in native)
    compare(expected, native, 0.35)


def test_jpeg_input_through_stb(tmp_path):
    """The program's own JPEG decoding (stb, not libjpeg): same objects, boxes within a few pixels."""
    import cv2

    param = require(FP16_PARAM)
    names = ["dog", "horses", "person"]
    expected = python_detections(param, [cv2.imread(str(require(IMAGES / f"{n}.jpg"))) for n in names], "fp32")
    native = native_detections(param, [IMAGES / f"{n}.jpg" for n in names], tmp_path, "--precision", "fp32")
    for name, py, nat in zip(names, expected, native):
        strong = [(int(c), b) for b, s, c in zip(py.boxes, py.scores, py.class_ids) if s > 0.5]
        for cls, box in strong:
            closest = min((np.abs(np.asarray(d["box"]) - box).max() for d in nat if d["class_id"] == cls), default=np.inf)
            assert closest < 4.0, f"{name}: class {cls} at {box} found {closest:.2f} px away"


def test_annotated_image_written(png_photos, tmp_path):
    import cv2

    out = tmp_path / "dog_annotated.jpg"
    proc = run_native("detect", require(FP16_PARAM), png_photos["dog"][0], "--out", out)
    assert "dog" in proc.stdout and "bicycle" in proc.stdout
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == png_photos["dog"][1].shape
    assert np.abs(drawn.astype(int) - png_photos["dog"][1]).max() > 100  # boxes and labels were drawn


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_clear_errors(tmp_path, png_photos):
    missing = run_native("detect", tmp_path / "nope.param", png_photos["dog"][0], check=False)
    assert missing.returncode == 2 and "nope.param: no such model file" in missing.stderr
    bad_image = tmp_path / "broken.jpg"
    bad_image.write_bytes(b"not a jpeg")
    unreadable = run_native("detect", require(FP16_PARAM), bad_image, check=False)
    assert unreadable.returncode == 2 and "broken.jpg: cannot read this image" in unreadable.stderr
    wrong_blob = run_native("detect", FP16_PARAM, png_photos["dog"][0], "--output-name", "nope", check=False)
    assert wrong_blob.returncode == 2 and "'nope'" in wrong_blob.stderr and "--output-name" in wrong_blob.stderr
    wrong_size = run_native("detect", FP16_PARAM, png_photos["dog"][0], "--input-size", 320, "--layout", "NC", check=False)
    assert wrong_size.returncode == 2 and "does not look like NanoDet-Plus" in wrong_size.stderr
    corrupt = tmp_path / "model.json"
    (tmp_path / "model.param").symlink_to(FP16_PARAM)
    (tmp_path / "model.bin").symlink_to(FP16_PARAM.with_suffix(".bin"))
    corrupt.write_text('{"class_names": ["a"], "input_hw": [416, 416], "layout": "XY"}')
    bad_meta = run_native("info", tmp_path / "model.param", check=False)
    assert bad_meta.returncode == 2 and "model.json: field 'layout' must be one of NC, CN" in bad_meta.stderr
    usage = run_native("frobnicate", check=False)
    assert usage.returncode == 2 and "unknown command" in usage.stderr


# ------------------------------------------------------------------------------------------------
# bench JSON
# ------------------------------------------------------------------------------------------------
def test_bench_json_follows_schema_and_merges(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "native.json"
    proc = run_native("bench", require(FP16_PARAM), require(INT8_PARAM), "--threads", "1", "--runs", 3, "--warmup", 2,
                      "--image", require(IMAGES / "dog.jpg"), "--label", "test box", "--json", out)
    assert "nanodet-plus-m_416-int8" in proc.stdout
    doc = json.loads(out.read_text())
    schema = json.loads((REPO_ROOT / "runtime" / "bench_schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["generator"]["name"] == "nanoplus_ncnn bench" and doc["machine"]["label"] == "test box"
    assert [(r["model"]["name"], r["threads"]) for r in doc["results"]] == [("nanodet-plus-m_416", 1), ("nanodet-plus-m_416-int8", 1)]
    for result in doc["results"]:
        stages = result["stages"]
        assert set(stages) == {"model", "preprocess", "inference", "postprocess", "end_to_end"}
        assert all(stages[s]["n"] == 3 for s in stages)
        assert stages["model"]["min_ms"] <= stages["model"]["p50_ms"] <= stages["model"]["p99_ms"] <= stages["model"]["max_ms"]
        assert len(result["samples_ms"]["model"]) == 3
        assert result["detections"] >= 3 and result["precision"] == "fp32"
        assert result["model"]["files"][0]["sha256"] == __import__("hashlib").sha256(Path(result["model"]["path"]).read_bytes()).hexdigest()
    # the p50 is the median of the samples, as runtime/bench.py defines it
    samples = doc["results"][0]["samples_ms"]["end_to_end"]
    assert doc["results"][0]["stages"]["end_to_end"]["p50_ms"] == pytest.approx(float(np.percentile(samples, 50)), abs=1e-3)
    # and `nanoplus bench --merge` reads it
    md = tmp_path / "merged.md"
    merged = subprocess.run([sys.executable, "-m", "nanoplus", "bench", "--merge", str(out), "--markdown", str(md)],
                            capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "nanodet-plus-m_416-int8" in md.read_text()


# ------------------------------------------------------------------------------------------------
# the JNI bridge on a desktop JVM, and the aarch64 build under emulation
# ------------------------------------------------------------------------------------------------
def test_jni_bridge_on_desktop_jvm(png_photos, tmp_path):
    if not JNI_LIB.is_file():
        pytest.skip(f"JNI bridge not built ({JNI_LIB}); build.sh host builds it where a JDK is installed")
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK (javac / java) installed")
    import cv2

    classes = tmp_path / "classes"
    java = DEMO / "jni" / "java"
    subprocess.run(["javac", "-d", str(classes), str(java / "com" / "nanoplus" / "NanoPlus.java"), str(java / "NanoPlusCheck.java")],
                   check=True, timeout=300)
    path, img = png_photos["dog"]
    rgba = tmp_path / "dog.rgba"
    rgba.write_bytes(cv2.cvtColor(img, cv2.COLOR_BGR2RGBA).tobytes())
    proc = subprocess.run(["java", f"-Djava.library.path={JNI_LIB.parent}", "-cp", str(classes), "NanoPlusCheck",
                           str(require(FP16_PARAM)), str(rgba), str(img.shape[1]), str(img.shape[0])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "80 classes" in proc.stderr and "missing model: /nonexistent/model.param: no such model file" in proc.stderr
    from_jni = []
    for line in proc.stdout.splitlines():
        cls, score, *box = line.split()
        from_jni.append({"class_id": int(cls), "score": float(score), "box": [float(v) for v in box]})
    expected = python_detections(FP16_PARAM, [img], "fp32")[0]
    assert len(from_jni) == len(expected) >= 3
    compare(expected, from_jni, 0.35)


@pytest.mark.slow
def test_aarch64_build_under_qemu(png_photos, tmp_path):
    """The cross-built aarch64 program (build.sh aarch64) gives the Python runtime's detections under qemu."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not AARCH64_BIN.is_file() or qemu is None:
        pytest.skip(f"needs {AARCH64_BIN} (android_demo/scripts/build.sh aarch64) and qemu-user-static")
    path, img = png_photos["dog"]
    # the portable warp (fma instructions, no x86 vector path) gives the reference's bits on aarch64 too
    dump = tmp_path / "input.f32"
    proc = subprocess.run([qemu, str(AARCH64_BIN), "detect", str(require(FP16_PARAM)), str(path), "--dump-input", str(dump)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    native_input = np.fromfile(dump, dtype=np.float32).reshape(1, 3, 416, 416)
    blob = _reference_blob(img)
    assert np.array_equal(native_input, blob), f"max difference {np.abs(native_input - blob).max()}"
    native = native_detections(require(FP16_PARAM), [path], tmp_path, "--precision", "fp32", binary=AARCH64_BIN, prefix=(qemu,))[0]
    expected = python_detections(FP16_PARAM, [img], "fp32")[0]
    diff = compare(expected, native, 0.35)
    print(f"aarch64 under qemu, dog: {diff}")


def _iou(a, b) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_our_int8_model_aarch64_under_qemu(our_int8, png_photos, tmp_path):
    """nanoplus's INT8 file on the cross-built aarch64 program under qemu: ncnn's ARM int8 kernels
    round differently from its x86 ones (the published int8 file, made by ncnn's own tools, moves
    as much: dog 0.754 -> 0.740), so the confident detections (score > 0.3) must match the Python
    runtime's (x86) by class with IoU > 0.6 (a small kite moves a few pixels) and scores within 0.05."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not AARCH64_BIN.is_file() or qemu is None:
        pytest.skip(f"needs {AARCH64_BIN} (android_demo/scripts/build.sh aarch64) and qemu-user-static")
    names = ["dog", "kite"]
    expected = python_detections(our_int8, [png_photos[n][1] for n in names], "fp32", score_thr=0.3)
    native = native_detections(our_int8, [png_photos[n][0] for n in names], tmp_path, "--precision", "fp32",
                               "--score-thr", 0.3, binary=AARCH64_BIN, prefix=(qemu,))
    for name, py, nat in zip(names, expected, native):
        worst_iou, worst_score = 1.0, 0.0
        for box, score, cls in zip(py.boxes, py.scores, py.class_ids):
            if score < 0.35:  # near the 0.3 threshold either program may drop it
                continue
            same = [d for d in nat if d["class_id"] == int(cls)]
            assert same, f"{name}: class {int(cls)} ({score:.3f}) missing on aarch64"
            best = max(same, key=lambda d: _iou(box, d["box"]))
            worst_iou = min(worst_iou, _iou(box, best["box"]))
            worst_score = max(worst_score, abs(best["score"] - float(score)))
        assert worst_iou > 0.6 and worst_score < 0.05, (name, worst_iou, worst_score)  # measured: 0.65 / 0.042 (kite)
        print(f"our int8 {name}, aarch64 under qemu vs x86: min IoU {worst_iou:.3f}, max score diff {worst_score:.3f}")
