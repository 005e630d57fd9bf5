"""`nanoplus infer` end to end on the published fp16 ncnn model: images, folders, video, errors."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import IMAGES, NCNN_FP16_DIR, require, require_module
from nanoplus.cli import main


@pytest.fixture(scope="module")
def model():
    require_module("ncnn")
    return str(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param"))


def test_one_image(model, tmp_path, capsys):
    out = tmp_path / "out"
    coco = tmp_path / "results.json"
    rc = main(["infer", model, str(require(IMAGES / "dog.jpg")), "--save-dir", str(out), "--threads", "1",
               "--coco-json", str(coco)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "dog.jpg 768x576:" in printed and "dog 0." in printed and "bicycle" in printed
    drawn = cv2.imread(str(out / "dog.jpg"))
    original = cv2.imread(str(IMAGES / "dog.jpg"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).sum() > 0
    doc = json.loads((out / "detections.json").read_text())
    assert doc["backend"] == "ncnn" and doc["score_thr"] == 0.35 and len(doc["class_names"]) == 80
    dets = doc["images"][0]["detections"]
    assert {"dog", "bicycle", "car"} <= {d["class_name"] for d in dets}
    assert all(d["score"] > 0.35 and len(d["box"]) == 4 for d in dets)
    results = json.loads(coco.read_text())
    assert len(results) == len(dets)
    dog = next(r for r in results if r["category_id"] == 18)  # COCO id of "dog"
    x, y, w, h = dog["bbox"]
    assert 100 < x < 160 and 200 < y < 260 and w > 150 and h > 250


def test_folder_skips_unreadable_image(model, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_dog.jpg").symlink_to(require(IMAGES / "dog.jpg"))
    (folder / "b_broken.jpg").write_text("this is not a jpeg")
    (folder / "c_eagle.jpg").symlink_to(require(IMAGES / "eagle.jpg"))
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    rc = main(["infer", model, str(folder), "--save-dir", str(out), "--threads", "1", "--score-thr", "0.5"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "b_broken.jpg" in captured.err and "skipped" in captured.err
    assert "[1/3] a_dog.jpg" in captured.out and "[3/3] c_eagle.jpg" in captured.out and "bird" in captured.out
    doc = json.loads((out / "detections.json").read_text())
    assert [img["file"].split("/")[-1] for img in doc["images"]] == ["a_dog.jpg", "c_eagle.jpg"]
    assert doc["skipped"] == [str(folder / "b_broken.jpg")]
    assert all(d["score"] > 0.5 for img in doc["images"] for d in img["detections"])
    assert (out / "a_dog.jpg").is_file() and (out / "c_eagle.jpg").is_file()


def test_video(model, tmp_path, capsys):
    video = _clip(tmp_path)
    out = tmp_path / "out"
    rc = main(["infer", model, str(video), "--save-dir", str(out), "--threads", "1"])
    assert rc == 0
    assert "clip: 3 frames" in capsys.readouterr().out
    doc = json.loads((out / "detections.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == [0, 1, 2]
    assert all("dog" in {d["class_name"] for d in f["detections"]} for f in doc["frames"])
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def _clip(tmp_path, frames=3):
    img = cv2.imread(str(require(IMAGES / "dog.jpg")))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (img.shape[1], img.shape[0]))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write mp4 video")
    for shift in range(frames):
        writer.write(np.roll(img, 8 * shift, axis=1))
    writer.release()
    return video


class _DroppingWriter:
    """cv2.VideoWriter as it behaves on a full disk: opens, then silently keeps only the first frame."""

    def __init__(self, *args):
        self._writer = _REAL_VIDEO_WRITER(*args)
        self._frames = 0

    def isOpened(self):
        return self._writer.isOpened()

    def write(self, frame):
        self._frames += 1
        if self._frames == 1:
            self._writer.write(frame)

    def release(self):
        self._writer.release()


_REAL_VIDEO_WRITER = cv2.VideoWriter


@pytest.mark.parametrize("free_space, message", [(1 << 20, "no space left on"), (10 << 30, "not readable back (1 of 3 frames)")])
def test_a_video_that_lost_frames_is_not_saved(model, tmp_path, capsys, monkeypatch, free_space, message):
    """VideoWriter.write reports nothing: the check reads the file back before it replaces the output."""
    from nanoplus import atomic

    video, out = _clip(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"an earlier result")
    monkeypatch.setattr(cv2, "VideoWriter", _DroppingWriter)
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: free_space)
    assert main(["infer", model, str(video), "--save-dir", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (out / "clip.mp4").read_bytes() == b"an earlier result"  # the earlier file is untouched
    assert not [p.name for p in out.iterdir() if p.name != "clip.mp4"]  # no temporary video left


def _fail_on_the_second_frame(monkeypatch, error):
    from nanoplus.runtime import detector as detector_module

    real_call, calls = detector_module.Detector.__call__, []

    def call(self, image):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real_call(self, image)

    monkeypatch.setattr(detector_module.Detector, "__call__", call)


def test_ctrl_c_stops_a_video_and_keeps_the_frames_done(model, tmp_path, capsys, monkeypatch):
    """Ctrl-C is how a camera is stopped: the frames before it are saved, video and JSON alike."""
    video, out = _clip(tmp_path), tmp_path / "out"
    _fail_on_the_second_frame(monkeypatch, KeyboardInterrupt)
    assert main(["infer", model, str(video), "--save-dir", str(out), "--threads", "1"]) == 0
    assert "clip: 1 frames" in capsys.readouterr().out
    assert [f["frame"] for f in json.loads((out / "detections.json").read_text())["frames"]] == [0]
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 1
    assert not list(out.glob(".nanoplus-*"))


def test_a_video_that_failed_halfway_is_not_saved(model, tmp_path, monkeypatch):
    video, out = _clip(tmp_path), tmp_path / "out"
    _fail_on_the_second_frame(monkeypatch, MemoryError)
    with pytest.raises(MemoryError):
        main(["infer", model, str(video), "--save-dir", str(out), "--threads", "1"])
    assert not list(out.glob("*.mp4")) and not list(out.glob(".nanoplus-*"))


def test_show_without_display_is_a_notice(model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc = main(["infer", model, str(require(IMAGES / "eagle.jpg")), "--no-save", "--show", "--threads", "1"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "no display" in captured.err and "bird" in captured.out


def test_errors_are_messages(model, tmp_path, capsys):
    assert main(["infer", str(tmp_path / "missing.onnx"), str(IMAGES / "dog.jpg")]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    assert main(["infer", model, str(tmp_path / "nothing_here"), "--no-save"]) == 2
    assert "no such image" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_text("no")
    assert main(["infer", model, str(broken), "--no-save"]) == 2  # a single unreadable image is an error
    assert "broken.jpg" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["infer", model, str(empty), "--no-save"]) == 2
    assert "no images" in capsys.readouterr().err


def test_help_lists_foreign_model_flags(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = capsys.readouterr().out
    for flag in ("--input-size", "--layout", "--scores", "--names", "--coco-json", "--show", "--backend"):
        assert flag in text
