"""`nanoplus bench FILES --data DATA`: one row per file and precision, the files' mAP through
`nanoplus eval`'s path, the mAP-vs-latency Pareto front, the fastest file within an mAP loss, and
--merge of documents written before these fields existed.

The front and the choice are checked on hand-made points against an independent sweep; the mAP
columns against `nanoplus eval` on the same files and images (the published ncnn fp16 and int8
models, given nanoplus metadata as an fp16 and an int8 file of one model).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import shutil

import pytest

from conftest import NCNN_FP16_DIR, NCNN_INT8_DIR, TINY_COCO, require, require_module
from test_bench import FakeClock, _validator, fake_document

from nanoplus.cli import main
from nanoplus.runtime.bench_pick import fastest_within_loss, pareto_front, pick_record
from nanoplus.runtime.bench_report import build_rows, render_markdown, render_text
from nanoplus.runtime.bench_results import file_labels

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------------------------------------
# the front and the choice, on hand-made points
# ---------------------------------------------------------------------------------------------
def sweep_front(points):
    """Reference: sort by latency; a point is on the front when it has its latency group's best mAP
    and beats every strictly faster point's mAP."""
    on = [False] * len(points)
    best_faster = float("-inf")
    for t in sorted({t for t, _ in points}):
        group = [i for i, (ti, _) in enumerate(points) if ti == t]
        group_best = max(points[i][1] for i in group)
        for i in group:
            on[i] = points[i][1] == group_best and points[i][1] > best_faster
        best_faster = max(best_faster, group_best)
    return on


def test_pareto_front_of_hand_made_points():
    #          fast, poor    dominated     on          tie on it    slow, best   slower, worse
    points = [(5.0, 0.30), (9.0, 0.31), (8.0, 0.33), (8.0, 0.33), (12.0, 0.37), (14.0, 0.36)]
    assert pareto_front(points) == [True, False, True, True, True, False]


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_an_independent_sweep(seed):
    rng = random.Random(seed)
    # few distinct values, so that ties in latency and in mAP occur
    points = [(float(rng.randint(1, 6)), rng.randint(20, 26) / 100) for _ in range(rng.randint(1, 12))]
    assert pareto_front(points) == sweep_front(points)


def test_points_without_an_map_are_left_out():
    assert pareto_front([(5.0, None), (9.0, 0.3), (float("nan"), 0.9)]) == [False, True, False]
    assert fastest_within_loss([(5.0, None), (9.0, 0.3)], 0.01) == 1
    assert fastest_within_loss([(5.0, None)], 0.01) is None


def test_fastest_within_loss_on_hand_made_rows():
    #          fp32 1T      int8 1T      fp16 1T      fp32 4T     int8 4T
    points = [(20.0, 0.372), (11.0, 0.331), (15.0, 0.370), (8.0, 0.372), (4.0, 0.331)]
    assert fastest_within_loss(points, 0.01) == 3       # same mAP at 4 threads beats fp16 at 1
    assert fastest_within_loss(points, 0.0) == 3
    assert fastest_within_loss(points, 0.05) == 4       # int8's 0.041 loss is allowed
    assert fastest_within_loss([(10.0, 0.30), (10.0, 0.305)], 0.01) == 1  # equal speed: the more accurate
    with pytest.raises(ValueError):
        fastest_within_loss(points, -0.1)


def test_file_labels_are_the_shortest_distinguishing_tails():
    labels = file_labels(["out/fp32/m.xml", "out/int8/m.xml", "out/m.onnx", "out/fp32/m.xml", "/a/b/m.param",
                          "/c/b/m.param"])
    assert labels == {"out/fp32/m.xml": "fp32/m.xml", "out/int8/m.xml": "int8/m.xml", "out/m.onnx": "m.onnx",
                      "/a/b/m.param": "a/b/m.param", "/c/b/m.param": "c/b/m.param"}


# ---------------------------------------------------------------------------------------------
# the document, the report and --merge
# ---------------------------------------------------------------------------------------------
def with_accuracy(doc, maps):
    for r, m in zip(doc["results"], maps):
        r["accuracy"] = {"data": "d", "split": "val", "images": 3, "mAP": m, "AP50": m + 0.2}
    doc["pick"] = pick_record(doc["results"], 0.01)
    return doc


def test_pick_in_the_document_the_table_and_the_report():
    doc = with_accuracy(fake_document(FakeClock()), [0.37, 0.365])  # torch 30 ms, onnxruntime 10 ms
    assert sorted(e.message for e in _validator().iter_errors(doc)) == []
    assert doc["pick"]["front"] == [0, 1]  # slower but more accurate: both on the front
    assert doc["pick"]["fastest"]["result"] == 1 and doc["pick"]["fastest"]["file"] == "m.onnx"
    text = render_text([doc], "torch")
    header = next(line for line in text.splitlines() if line.startswith("file "))
    assert "mAP" in header and "AP50" in header and "front" in header and "MB" in header
    assert "fastest within 0.01 mAP of the best (0.3700): m.onnx on onnxruntime, 1 thread(s), 64x96" in text
    markdown = render_markdown([doc], "torch")
    assert "| mAP | AP50 | front |" in markdown and "fastest within 0.01 mAP" in markdown


def test_merge_of_a_document_written_before_file_labels_and_accuracy(tmp_path, capsys):
    old = fake_document(FakeClock(), label="old box")
    for r in old["results"]:
        r["model"].pop("file")
        r["model"].pop("file_precision", None)
    new = with_accuracy(fake_document(FakeClock(), label="new box"), [0.30, 0.29])
    paths = []
    for name, doc in (("old", old), ("new", new)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(doc))
    plot = ["--plot", str(tmp_path / "p.png")] if HAVE_MATPLOTLIB else []  # a device may have no matplotlib
    assert main(["bench", "--merge", *map(str, paths), *plot]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " 64x96 " in line]
    assert len(rows) == 4 and all(" m.onnx " in line for line in rows)  # the old rows named by their path
    table, _ = build_rows([old, new], "torch")
    assert [(r["machine"], r["file"], r["file precision"], r["mAP"]) for r in table] == [
        ("old box", "m.onnx", "-", "-"), ("old box", "m.onnx", "-", "-"),
        ("new box", "m.onnx", "fp32", "0.3000"), ("new box", "m.onnx", "fp32", "0.2900")]
    assert "new box: fastest within 0.01 mAP" in out and "old box: fastest" not in out
    if HAVE_MATPLOTLIB:
        assert (tmp_path / "p.png").is_file() and (tmp_path / "p-pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_merged_machines_each_get_their_own_front_line(tmp_path):
    """Two machines, each with a fast-inaccurate and a slow-accurate file: each machine's front is
    its own line in the plot (never a line from one machine's point to another's)."""
    from nanoplus.runtime.bench_report import front_lines, pareto_points, plot_pareto

    fast_box = with_accuracy(fake_document(FakeClock(), label="fast box"), [0.30, 0.35])
    slow_box = with_accuracy(fake_document(FakeClock(), label="slow box"), [0.31, 0.36])
    for doc, scale in ((fast_box, 1.0), (slow_box, 3.0)):
        for i, r in enumerate(doc["results"]):
            r["stages"]["model"]["p50_ms"] = scale * (5.0 + 5.0 * i)  # the accurate file is slower
    points = pareto_points([fast_box, slow_box])
    assert [p[4] for p in points] == ["fast box", "fast box", "slow box", "slow box"]
    lines = front_lines(points)
    assert lines == {"fast box": [(5.0, 0.30), (10.0, 0.35)], "slow box": [(15.0, 0.31), (30.0, 0.36)]}
    # one machine alone: the slow box's 15 ms point would be dominated by the fast box's 10 ms
    assert pareto_front([(p[1], p[2]) for p in points]) == [True, True, False, True]
    if HAVE_MATPLOTLIB:  # the plot itself (a device may have no matplotlib)
        plot_pareto(points, str(tmp_path / "fronts.png"))
        assert (tmp_path / "fronts.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# the command on real files
# ---------------------------------------------------------------------------------------------
def two_precisions_of_one_model(tmp_path):
    """The published fp16 and int8 ncnn files, each as ``<precision>/model.param`` with a sidecar
    saying: nanodet-plus-m_416, this precision."""
    from nanoplus.runtime.detector import Detector
    from nanoplus.runtime.metadata import write_sidecar

    paths = []
    for precision, folder, stem in (("fp16", NCNN_FP16_DIR, "nanodet-plus-m_416"),
                                    ("int8", NCNN_INT8_DIR, "nanodet-plus-m_416-int8")):
        param = require(folder / f"{stem}.param")
        target = tmp_path / precision
        target.mkdir()
        shutil.copy(param, target / "model.param")
        shutil.copy(param.with_suffix(".bin"), target / "model.bin")
        meta = Detector(str(param), threads=1).meta
        write_sidecar(dataclasses.replace(meta, model_name="nanodet-plus-m_416", precision=precision),
                      target / "model.param")
        paths.append(str(target / "model.param"))
    return paths


def first_images_as_coco(tmp_path, count):
    """tiny_coco val's first ``count`` records (as the runtime loads them) as a COCO json of their own."""
    from nanoplus.runtime.datasets import load_dataset

    subset = load_dataset(require(TINY_COCO), "val", log=False)
    subset = subset.subset(subset.records[:count])
    folder = tmp_path / "first"
    folder.mkdir()
    for im in subset.coco_gt["images"]:
        (folder / im["file_name"]).symlink_to(TINY_COCO / "val2017" / im["file_name"])
    gt = {key: subset.coco_gt[key] for key in ("images", "annotations", "categories")}
    (folder / "gt.json").write_text(json.dumps(gt))
    return folder / "gt.json"


def test_two_precisions_are_two_rows_with_eval_s_map(tmp_path, capsys):
    require_module("ncnn")
    fp16, int8 = two_precisions_of_one_model(tmp_path)
    out = tmp_path / "bench.json"
    assert main(["bench", fp16, int8, "--data", str(require(TINY_COCO)), "--eval-images", "3", "--runs", "2",
                 "--warmup", "1", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert sorted(e.message for e in _validator().iter_errors(doc)) == []
    rows = {(r["model"]["file"], r["model"]["file_precision"]): r for r in doc["results"]}
    assert set(rows) == {("fp16/model.param", "fp16"), ("int8/model.param", "int8")}
    assert {r["model"]["name"] for r in doc["results"]} == {"nanodet-plus-m_416"}
    table = [line for line in printed.splitlines() if " 416x416 " in line]
    assert len(table) == 2 and table[0] != table[1]
    assert table[0].startswith("fp16/model.param  fp16") and table[1].startswith("int8/model.param  int8")

    data = first_images_as_coco(tmp_path, 3)  # the same 3 images as a dataset of their own
    for (label, _), result in rows.items():
        metrics = tmp_path / f"{label.split('/')[0]}.json"
        assert main(["eval", str(tmp_path / label), "--data", str(data), "--threads", "1", "--precision", "fp32",
                     "--json", str(metrics), "--quiet"]) == 0
        expected = json.loads(metrics.read_text())
        accuracy = result["accuracy"]
        assert accuracy["images"] == expected["num_images"] == 3
        assert (accuracy["mAP"], accuracy["AP50"]) == (expected["mAP"], expected["AP50"])
        assert (accuracy["score_thr"], accuracy["iou_thr"], accuracy["max_det"]) == (
            expected["score_thr"], expected["iou_thr"], expected["max_det"])
        assert f"{accuracy['mAP']:.4f}" in printed
    assert rows[("fp16/model.param", "fp16")]["accuracy"]["mAP"] > 0.1
    maps = [r["accuracy"]["mAP"] for r in doc["results"]]
    fastest = doc["pick"]["fastest"]
    assert doc["results"][fastest["result"]]["accuracy"]["mAP"] >= max(maps) - 0.01
    assert f"fastest within 0.01 mAP of the best ({max(maps):.4f}): {fastest['file']}" in printed


def test_bad_data_path_is_a_clear_error_before_measuring(tmp_path, capsys):
    model = str(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param"))
    missing = tmp_path / "no_such_data"
    assert main(["bench", model, "--data", str(missing), "--runs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--data {missing}" in err and "no such file or folder" in err and "Traceback" not in err
    assert main(["bench", model, "--eval-images", "2", "--runs", "1", "--quiet"]) == 2
    assert "--eval-images applies to --data only" in capsys.readouterr().err
    assert main(["bench", model, "--data", str(require(TINY_COCO)), "--eval-images", "0", "--quiet"]) == 2
    assert "--eval-images must be at least 1" in capsys.readouterr().err
