"""The one image reader (runtime/images.py) and `nanoplus infer` on hostile file names and folders.

Names with a byte that is not UTF-8 (0xE9, Latin-1 'é') crashed OpenCV inside ``cv2.imread`` /
``cv2.VideoCapture`` (exit 139, no message): the commands run in a subprocess here so that such a
crash fails the test instead of killing pytest.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import require_module
from nanoplus.runtime.images import ImageReadError, decode_image, display_path, opencv_path, read_image

LATIN1 = os.fsdecode(b"\xe9")  # the byte 0xE9 as Python spells it in a file name (a surrogate)


def _photo(tmp_path: Path, name="photo.jpg", size=(48, 64)) -> Path:
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".jpg", img)
    path = tmp_path / name
    path.write_bytes(data.tobytes())
    return path


def test_reads_like_imread_including_exif_rotation(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    plain = _photo(tmp_path)
    np.testing.assert_array_equal(read_image(plain), cv2.imread(str(plain)))
    rotated = tmp_path / "rotated.jpg"
    img = PIL.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3))
    exif = img.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: imread applies it, so must we
    img.save(rotated, exif=exif)
    assert read_image(rotated).shape == (30, 20, 3)
    np.testing.assert_array_equal(read_image(rotated), cv2.imread(str(rotated)))


def test_non_utf8_names(tmp_path):
    folder = tmp_path / f"ph{LATIN1}otos"
    folder.mkdir()
    path = _photo(folder, f"d{LATIN1}og.jpg")
    want = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image(path), want)
    np.testing.assert_array_equal(read_image(os.fsencode(path)), want)  # bytes paths too
    assert display_path(path).endswith("ph\\xe9otos/d\\xe9og.jpg")
    with opencv_path(path) as usable:
        usable.encode("utf-8")  # what OpenCV's path-taking calls need
        assert os.path.samefile(usable, path)
    assert not Path(usable).exists()  # the link is gone after the block
    with opencv_path(tmp_path) as usable:
        assert usable == str(tmp_path)  # a UTF-8 path is passed as it is


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file"),
    ("folder", "it is a folder"),
    ("empty", "the file is empty"),
    ("text", "not an image OpenCV can decode"),
    ("truncated_jpeg", "a JPEG cut short"),
    ("truncated_png", "a PNG cut short"),
])
def test_unreadable_images_name_the_file(tmp_path, case, match):
    good = _photo(tmp_path, "good.jpg", size=(240, 320))
    ok, png = cv2.imencode(".png", read_image(good))
    path = tmp_path / f"bad_{case}"
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("not an image")
    elif case == "truncated_jpeg":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        # OpenCV 4 decodes such a file without an error (grey rows where the data is missing),
        # OpenCV 5.1 refuses it: the reader refuses it whichever OpenCV is installed
    elif case == "truncated_png":
        path.write_bytes(png.tobytes()[: len(png) // 2])
    with pytest.raises(ImageReadError, match=f"bad_{case}.*{match}"):
        read_image(path)


def test_jpeg_with_bytes_after_its_end_is_read(tmp_path):
    path = _photo(tmp_path)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(path.read_bytes() + b"\0" * 100)  # some cameras pad the file
    np.testing.assert_array_equal(read_image(padded), read_image(path))
    with pytest.raises(ImageReadError, match="<bytes>"):
        decode_image(b"")


# -- nanoplus infer on odd names and folders (subprocess: a crash is a test failure, not a dead run) -------
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    require_module("onnxruntime")
    from test_detector import _synthetic_onnx

    path, _ = _synthetic_onnx(tmp_path_factory.mktemp("model") / "synthetic.onnx")
    return path


def _infer(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # strict UTF-8 output, as on most desktops
    return subprocess.run([sys.executable, "-m", "nanoplus", "infer", *map(os.fspath, args), "--threads", "1"],
                          capture_output=True, text=True, errors="replace", timeout=300, env=env)


def test_infer_on_a_folder_with_a_non_utf8_name(onnx_model, tmp_path):
    folder = tmp_path / f"ph{LATIN1}otos"
    folder.mkdir()
    _photo(folder, f"d{LATIN1}og.jpg")
    _photo(folder, "plain.jpg")
    out = tmp_path / f"out{LATIN1}"
    result = _infer(onnx_model, folder, "--save-dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "d\\xe9og.jpg 64x48" in result.stdout and "plain.jpg 64x48" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(["detections.json", f"d{LATIN1}og.jpg", "plain.jpg"])
    doc = json.loads((out / "detections.json").read_text())
    assert [Path(image["file"]).name for image in doc["images"]] == ["d\\xe9og.jpg", "plain.jpg"]


def test_infer_on_a_video_with_a_non_utf8_name(onnx_model, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write mp4 video")
    for value in (0, 100, 200):
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    odd = video.rename(tmp_path / f"cl{LATIN1}p.mp4")
    out = tmp_path / f"out{LATIN1}"
    result = _infer(onnx_model, odd, "--save-dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cl\\xe9p: 3 frames" in result.stdout
    assert (out / f"cl{LATIN1}p.mp4").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp.mp4")]


def test_infer_never_overwrites_its_inputs(onnx_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = [_photo(folder, "a.jpg"), _photo(folder, "b.jpg", size=(32, 32))]
    before = [p.read_bytes() for p in photos]
    for source in (folder, photos[0]):
        result = _infer(onnx_model, source, "--save-dir", folder)
        assert result.returncode == 2 and "would overwrite the input itself" in result.stderr, result.stderr[-2000:]
        assert "choose another --save-dir" in result.stderr
    assert [p.read_bytes() for p in photos] == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "b.jpg"]
    # a different folder is fine
    assert _infer(onnx_model, folder, "--save-dir", tmp_path / "out").returncode == 0


def test_training_data_in_a_non_utf8_folder(tmp_path):
    """The generated dataset written into, loaded from and read for training in a folder whose name
    is not UTF-8 (cv2.imwrite / cv2.imread crashed there)."""
    pytest.importorskip("torch")
    from nanoplus.runtime.datasets import load_dataset
    from conftest import TINY_MODEL
    from nanoplus.train.config import load_config
    from nanoplus.runtime.metadata import meta_from_config
    from nanoplus.train.dataset import DetectionDataset

    folder = tmp_path / f"tr{LATIN1}in"
    made = subprocess.run([sys.executable, "-m", "nanoplus.train.synthetic", os.fspath(folder), "--num-train", "4",
                           "--num-val", "2", "--height", "64", "--width", "64"], capture_output=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    train = load_dataset(folder, "train", log=False)
    assert len(train) == 4 and not train.issues.get("unreadable_image")
    cfg = load_config("nanodet-plus-m_416", TINY_MODEL)
    samples = DetectionDataset(train.records, meta_from_config(cfg, train.class_names), cfg.data.augment)
    assert all(tuple(samples[i]["image"].shape) == (3, 64, 64) for i in range(len(samples)))
