"""`nanoplus bench`: statistics, interleaving, sustained windows, the results schema, --merge, errors.

The measurement loop is checked with fake detectors driven by a fake clock, so every sample is known
exactly; one real run on the published ncnn model checks the whole command and validates its JSON
against runtime/bench_schema.json. No timing is asserted.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import IMAGES, NCNN_FP16_DIR, REPO_ROOT, require

from nanoplus.cli import main
from nanoplus.runtime import bench, bench_machine, bench_results
from nanoplus.runtime.bench_report import build_rows, render_text
from nanoplus.runtime.bench_results import load_document, validation_problem
from nanoplus.runtime.metadata import ModelMeta

SCHEMA = Path(bench.__file__).with_name("bench_schema.json")
NCNN_PARAM = NCNN_FP16_DIR / "nanodet-plus-m_416.param"


# ---------------------------------------------------------------------------------------------
# fakes: a clock that only moves when a fake stage "runs", and detectors with known stage costs
# ---------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.ns = 0

    def __call__(self) -> int:
        return self.ns

    def advance_ms(self, ms: float) -> None:
        self.ns += int(round(ms * 1e6))


class FakeBackend:
    """The engine: ``infer_ms`` is consumed in call order (model-only and end-to-end calls alike)."""

    def __init__(self, owner, infer_ms, precision, name):
        self.owner, self.infer_ms = owner, list(infer_ms)
        self.name, self.precision, self.version = name, precision, "0.0"

    def run(self, blob, keep=True):
        self.owner.log.append((self.owner.name, "infer"))
        self.owner.clock.advance_ms(self.infer_ms.pop(0) if len(self.infer_ms) > 1 else self.infer_ms[0])
        return np.zeros((10, 33), np.float32)


class FakeDetector:
    """The Detector stage API with known costs in ms, on a fake clock."""

    def __init__(self, name, clock, log, infer_ms, pre_ms=1.0, post_ms=0.5, precision="fp32", backend="fake"):
        self.name, self.clock, self.log = name, clock, log
        self.pre_ms, self.post_ms = pre_ms, post_ms
        self.meta = ModelMeta(class_names=["thing"], input_hw=[64, 96], model_name=name)
        self.backend = FakeBackend(self, infer_ms, precision, backend)

    def preprocess(self, image):
        self.log.append((self.name, "pre"))
        self.clock.advance_ms(self.pre_ms)
        return np.zeros((1, 3, 64, 96), np.float32), np.eye(3)

    def postprocess(self, raw, matrix, src_hw, scores_are_sigmoid=True):
        self.log.append((self.name, "post"))
        self.clock.advance_ms(self.post_ms)
        return SimpleNamespace(boxes=np.zeros((3, 4), np.float32))


def fake_case(name, clock, log, infer_ms, **kwargs):
    return bench.Case(model_path=f"/nowhere/{name}.onnx", backend="fake", threads=1, input_size=None,
                      detector=FakeDetector(name, clock, log, infer_ms, **kwargs))


IMAGE = np.zeros((48, 64, 3), np.uint8)


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def test_summarize_matches_hand_computed_values():
    s = bench_results.summarize([4.0, 1.0, 3.0, 2.0])
    assert s["n"] == 4 and s["min_ms"] == 1.0 and s["max_ms"] == 4.0
    assert s["p50_ms"] == pytest.approx(2.5)
    assert s["p90_ms"] == pytest.approx(3.7)   # sorted index 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
    assert s["p99_ms"] == pytest.approx(3.97)  # index 2.97
    assert s["mean_ms"] == pytest.approx(2.5)
    assert s["std_ms"] == pytest.approx(math.sqrt(5 / 3))  # sum of squared deviations 5, n - 1 = 3
    assert s["throughput_fps"] == pytest.approx(400.0)
    one = bench_results.summarize([7.5])
    assert one["p99_ms"] == 7.5 and one["std_ms"] == 0.0
    with pytest.raises(ValueError):
        bench_results.summarize([])


def test_summarize_matches_the_statistics_module_on_skewed_samples():
    rng = np.random.default_rng(0)
    samples = list(5.0 + rng.lognormal(0.0, 0.8, size=537))  # a long right tail, like real latencies
    s = bench_results.summarize(samples)
    q = statistics.quantiles(samples, n=100, method="inclusive")  # q[k-1] = k-th percentile, linear
    assert s["p50_ms"] == pytest.approx(statistics.median(samples))
    assert s["p90_ms"] == pytest.approx(q[89])
    assert s["p99_ms"] == pytest.approx(q[98])
    assert s["mean_ms"] == pytest.approx(statistics.fmean(samples))
    assert s["std_ms"] == pytest.approx(statistics.stdev(samples))
    assert s["min_ms"] == min(samples) and s["max_ms"] == max(samples)


def test_overhead_ratio_and_drift():
    stages = {"model": {"p50_ms": 20.0}, "preprocess": {"p50_ms": 0.6}, "postprocess": {"p50_ms": 0.4}}
    assert bench_results.overhead_ratio(stages) == pytest.approx(0.05)
    assert bench_results.overhead_ratio({"model": {"p50_ms": 20.0}}) is None  # a model-only result
    windows = [{"model_p50_ms": 10.0}, {"model_p50_ms": 11.0}, {"model_p50_ms": 12.5}]
    assert bench_results.drift(windows, "model_p50_ms") == pytest.approx(0.25)
    assert bench_results.drift(windows[:1], "model_p50_ms") is None


# ---------------------------------------------------------------------------------------------
# the measurement loop
# ---------------------------------------------------------------------------------------------
def test_cases_are_interleaved_round_robin_and_samples_land_in_their_case():
    clock, log = FakeClock(), []
    a_costs = [50.0, 9.0, 11.0, 10.0, 12.0, 13.0, 8.0]  # warm-up (1), then (model, e2e) x 3 rounds
    b_costs = [70.0, 21.0, 19.0, 22.0, 20.0, 18.0, 23.0]
    a = fake_case("A", clock, log, a_costs, pre_ms=1.0, post_ms=0.5)
    b = fake_case("B", clock, log, b_costs, pre_ms=2.0, post_ms=0.25)
    record = bench.measure([a, b], IMAGE, warmup=1, runs=3, clock=clock, read_temperature=lambda: None,
                           progress=False)

    warm = [(n, s) for n in "AB" for s in ("pre", "infer", "post")]
    one_round = [(n, s) for n in "AB" for s in ("infer", "pre", "infer", "post")]
    assert log == warm + one_round * 3  # A B A B ..., never A A B B
    assert record.rounds == 3

    assert a.warmup_ms == [pytest.approx(51.5)] and a.first_inference_ms == pytest.approx(50.0)
    assert b.warmup_ms == [pytest.approx(72.25)]
    assert a.samples_ms["model"] == pytest.approx([9.0, 10.0, 13.0])
    assert a.samples_ms["inference"] == pytest.approx([11.0, 12.0, 8.0])
    assert b.samples_ms["model"] == pytest.approx([21.0, 22.0, 18.0])
    assert b.samples_ms["preprocess"] == pytest.approx([2.0] * 3)
    assert b.samples_ms["end_to_end"] == pytest.approx([2.0 + 19.0 + 0.25, 2.0 + 20.0 + 0.25, 2.0 + 23.0 + 0.25])

    result = bench_results.case_result(a, record)
    assert result["stages"]["model"]["p50_ms"] == pytest.approx(10.0)
    assert result["stages"]["end_to_end"]["mean_ms"] == pytest.approx(1.5 + (11 + 12 + 8) / 3)
    assert result["overhead_ratio"] == pytest.approx(1.5 / 10.0)
    assert result["warmup"] == {"iterations": 1, "first_ms": pytest.approx(51.5),
                                "first_inference_ms": pytest.approx(50.0), "mean_ms": None}
    assert result["detections"] == 3 and result["input_hw"] == [64, 96]
    assert result["samples_ms"]["model"] == pytest.approx([9.0, 10.0, 13.0])


def test_settle_pauses_before_each_case_outside_the_timed_regions():
    clock, log = FakeClock(), []
    a = fake_case("A", clock, log, [10.0], pre_ms=1.0, post_ms=1.0)
    b = fake_case("B", clock, log, [20.0], pre_ms=1.0, post_ms=1.0)

    def sleep(seconds):  # a pause moves the clock, as a real one would
        log.append(("-", "settle"))
        clock.advance_ms(seconds * 1000)

    record = bench.measure([a, b], IMAGE, warmup=1, runs=2, clock=clock, read_temperature=lambda: None,
                           progress=False, settle_s=0.005, sleep=sleep)
    measured = log[6:]
    assert measured == [("-", "settle"), ("A", "infer"), ("A", "pre"), ("A", "infer"), ("A", "post"),
                        ("-", "settle"), ("B", "infer"), ("B", "pre"), ("B", "infer"), ("B", "post")] * 2
    assert a.samples_ms["model"] == pytest.approx([10.0, 10.0])  # the pause is not in any sample
    assert b.samples_ms["end_to_end"] == pytest.approx([22.0, 22.0])
    assert record.duration_s == pytest.approx(2 * (0.005 + 0.022 + 0.005 + 0.042))  # A: 10 + 12, B: 20 + 22 ms


def test_warmup_mean_excludes_the_first_call():
    clock, log = FakeClock(), []
    case = fake_case("A", clock, log, [100.0, 10.0, 12.0, 5.0], pre_ms=0.0, post_ms=0.0)
    record = bench.measure([case], IMAGE, warmup=3, runs=1, clock=clock, read_temperature=lambda: None,
                           progress=False)
    warm = bench_results.case_result(case, record)["warmup"]
    assert warm["first_ms"] == pytest.approx(100.0) and warm["mean_ms"] == pytest.approx(11.0)


def test_seconds_mode_finishes_whole_rounds():
    clock, log = FakeClock(), []
    a = fake_case("A", clock, log, [30.0], pre_ms=0.0, post_ms=0.0)   # a round of A costs 60 ms
    b = fake_case("B", clock, log, [20.0], pre_ms=0.0, post_ms=0.0)   # B 40 ms: 100 ms per round
    record = bench.measure([a, b], IMAGE, warmup=1, seconds=0.25, clock=clock, read_temperature=lambda: None,
                           progress=False)
    assert record.rounds == 3  # 0.1, 0.2 s elapsed < 0.25; the third round ends at 0.3 s
    assert len(a.samples_ms["model"]) == len(b.samples_ms["model"]) == 3


def test_sustained_windows_report_medians_temperature_and_drift():
    clock, log = FakeClock(), []
    # per round one model-only and one end-to-end inference; the machine slows down round by round
    round_ms = [100.0, 100.0, 120.0, 120.0, 150.0]
    case = fake_case("A", clock, log, [1.0] + [ms for ms in round_ms for _ in range(2)], pre_ms=0.0, post_ms=0.0)
    temperatures = iter([40.0, 50.0, 60.0, 70.0])
    record = bench.measure([case], IMAGE, warmup=1, seconds=1.0, window_s=0.4, clock=clock,
                           read_temperature=lambda: next(temperatures), progress=False)
    sustained = bench_results.case_result(case, record)["sustained"]
    # rounds start at 0, 0.2, 0.4, 0.64, 0.88 s and the run ends at 1.18 s: windows [0, .4) [.4, .8) [.8, 1.18]
    assert record.round_start_s == pytest.approx([0.0, 0.2, 0.4, 0.64, 0.88])
    assert record.duration_s == pytest.approx(1.18)
    assert [w["n"] for w in sustained["windows"]] == [2, 2, 1]
    assert [w["model_p50_ms"] for w in sustained["windows"]] == pytest.approx([100.0, 120.0, 150.0])
    # temperature read at the start, at each window edge (first round at or after it) and at the end
    assert [w["cpu_temp_c"] for w in sustained["windows"]] == [50.0, 60.0, 70.0]
    assert sustained["drift"]["model"] == pytest.approx(0.5)
    assert sustained["drift"]["end_to_end"] == pytest.approx(0.5)
    assert record.conditions["cpu_temp_start_c"] == 40.0 and record.conditions["cpu_temp_end_c"] == 70.0


def test_ctrl_c_keeps_the_finished_rounds():
    clock, log = FakeClock(), []
    a = fake_case("A", clock, log, [5.0])
    b = fake_case("B", clock, log, [5.0])
    calls = {"n": 0}
    run = b.detector.backend.run

    def interrupted_on_the_fourth_measured_call(blob, keep=True):
        calls["n"] += 1
        if calls["n"] == 1 + 4:  # 1 warm-up call, then 2 per round: the 2nd call of round 2
            raise KeyboardInterrupt
        return run(blob, keep)

    b.detector.backend.run = interrupted_on_the_fourth_measured_call
    record = bench.measure([a, b], IMAGE, warmup=1, seconds=100.0, clock=clock, read_temperature=lambda: None,
                           progress=False)
    assert record.interrupted and record.rounds == 1
    assert all(len(v) == 1 for case in (a, b) for v in case.samples_ms.values())


def test_measure_refuses_bad_settings():
    clock, log = FakeClock(), []
    case = fake_case("A", clock, log, [1.0])
    with pytest.raises(bench.BenchError, match="warmup"):
        bench.measure([case], IMAGE, warmup=0, runs=1, clock=clock, progress=False)
    with pytest.raises(bench.BenchError, match="exactly one"):
        bench.measure([case], IMAGE, warmup=1, runs=2, seconds=1.0, clock=clock, progress=False)


# ---------------------------------------------------------------------------------------------
# the machine record
# ---------------------------------------------------------------------------------------------
def test_cpu_temperature_prefers_the_cpu_zone(tmp_path):
    assert bench_machine.cpu_temperature(str(tmp_path)) == (None, None)
    for i, (kind, milli) in enumerate([("acpitz", "30000"), ("cpu-thermal", "61234"), ("gpu-thermal", "70000")]):
        zone = tmp_path / "sys/class/thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    celsius, source = bench_machine.cpu_temperature(str(tmp_path))
    assert celsius == pytest.approx(61.234) and "cpu-thermal" in source


def test_cpu_model_and_board_from_a_raspberry_pi_layout(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
        "CPU part\t: 0xd08\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    (tmp_path / "proc/device-tree/model").write_text("Raspberry Pi 4 Model B Rev 1.4\x00")
    assert bench_machine.cpu_model(str(tmp_path)) == "BCM2835"
    assert bench_machine.device_model(str(tmp_path)) == "Raspberry Pi 4 Model B Rev 1.4"
    assert bench_machine._cpu_flags(str(tmp_path)) == ["asimd"]


def test_machine_info_records_versions_threads_env_and_cores(monkeypatch):
    import cv2

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    info = bench_machine.machine_info("lab box")
    assert info["label"] == "lab box"
    assert info["env"]["OMP_NUM_THREADS"] == "3"
    assert info["software"]["numpy"] == np.__version__ and info["software"]["opencv"] == cv2.__version__
    assert info["cpu"]["logical_cores"] >= 1 and info["cpu"]["architecture"]
    assert info["python"].endswith(".".join(map(str, sys.version_info[:3])))


@pytest.mark.parametrize("process, kernel_arch, cpuinfo, emulated", [
    ("aarch64", "x86_64", None, True),  # an arm64 root under qemu-user on an x86-64 machine
    ("aarch64", None, "vendor_id\t: AuthenticAMD\nflags\t: fpu sse avx2\n", True),  # no kernel/arch: cpuinfo
    ("armv7l", "aarch64", None, False),  # 32-bit Raspberry Pi OS on its 64-bit kernel: native
    ("aarch64", "aarch64", None, False),
    ("x86_64", "x86_64", None, False),
    ("aarch64", None, "CPU implementer\t: 0x41\nCPU part\t: 0xd08\n", False),
])
def test_emulation_is_told_from_the_kernels_architecture(tmp_path, monkeypatch, process, kernel_arch, cpuinfo, emulated):
    monkeypatch.delenv("NANOPLUS_EMULATION", raising=False)
    monkeypatch.setattr(bench_machine.platform, "machine", lambda: process)
    if kernel_arch:
        (tmp_path / "proc/sys/kernel").mkdir(parents=True)
        (tmp_path / "proc/sys/kernel/arch").write_text(kernel_arch + "\n")
    if cpuinfo:
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    found = bench_machine.emulation(str(tmp_path))
    if emulated:
        assert found is not None and "aarch64 emulated on a x86_64 kernel" in found
    else:
        assert found is None


def test_an_emulated_run_says_so_in_the_record_the_printout_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOPLUS_EMULATION", "qemu-aarch64-static 7.2 -cpu cortex-a72 on x86_64 (test)")
    doc = fake_document(label=None)
    machine = doc["machine"]
    assert machine["emulation"].startswith("qemu-aarch64-static 7.2")
    assert machine["device_model"] is None  # the host's /proc is not the emulated board's
    assert machine["label"].startswith(f"{bench_machine.platform.machine()} emulated on ")
    assert list(_validator().iter_errors(doc)) == []
    text = render_text([doc])
    assert text.splitlines()[0].startswith("EMULATED (qemu-aarch64-static 7.2")
    assert text.splitlines()[0].count(machine["cpu"]["model"]) == 1  # the label is the CPU name: said once
    path = tmp_path / "emulated.json"
    path.write_text(json.dumps(doc))
    report = tmp_path / "report.md"
    assert main(["bench", "--merge", str(path), "--markdown", str(report)]) == 0
    assert "**EMULATED**: qemu-aarch64-static 7.2" in report.read_text()

    monkeypatch.setenv("NANOPLUS_EMULATION", "")
    native = fake_document(label="lab box")
    if native["machine"]["emulation"] is None:  # this very machine is not emulated
        assert not render_text([native]).startswith("EMULATED")


# ---------------------------------------------------------------------------------------------
# the schema and the tables
# ---------------------------------------------------------------------------------------------
def _validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install jsonschema)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def fake_document(clock=None, label="fake machine", precisions=("fp32", "fp32"), sustained=False) -> dict:
    clock, log = clock or FakeClock(), []
    torch_case = fake_case("m", clock, log, [30.0], precision=precisions[0], backend="torch")
    fast_case = fake_case("m", clock, log, [10.0], precision=precisions[1], backend="onnxruntime")
    record = bench.measure([torch_case, fast_case], IMAGE, warmup=2, runs=3, clock=clock, progress=False,
                           read_temperature=lambda: 45.0, window_s=0.05 if sustained else None)
    # The samples come from the fake clock, but the load check reads this machine's real /proc/stat:
    # pin it to a quiet run so a busy test machine does not add its "preliminary" note to the fake rows.
    record.conditions.update({"other_cpu_cores": 0.0, "steal_fraction": 0.0})
    machine = bench_machine.machine_info(label)
    return bench_results.build_document([torch_case, fast_case], record, machine,
                                {"warmup": 2, "runs": 3, "image": {"source": "synthetic", "height": 48, "width": 64}},
                                command="nanoplus bench m.ckpt m.onnx")


def test_fake_document_satisfies_the_schema_and_a_broken_one_does_not():
    validator = _validator()
    doc = fake_document(sustained=True)
    assert sorted(e.message for e in validator.iter_errors(doc)) == []
    assert validation_problem(doc) is None
    broken = copy.deepcopy(doc)
    del broken["results"][0]["stages"]["model"]
    assert not validator.is_valid(broken)
    assert "model" in validation_problem(broken)
    broken = copy.deepcopy(doc)
    broken["results"][1]["stages"]["model"]["p50_ms"] = "fast"
    assert "p50_ms" in validation_problem(broken)


def test_a_minimal_document_from_another_program_is_valid():
    """What a native benchmark on a phone has to write at least: model-only statistics."""
    validator = _validator()
    doc = {
        "schema": "nanoplus-bench", "schema_version": 1, "created_utc": "2025-01-02T03:04:05Z",
        "generator": {"name": "nanoplus-ncnn-bench (C++)", "version": "0.1"},
        "machine": {"label": "Pixel 7", "cpu": {"model": "Google Tensor G2", "architecture": "aarch64"},
                    "os": {"system": "Android", "release": "14"}},
        "results": [{
            "model": {"name": "nanodet-plus-m_416"}, "backend": "ncnn", "precision": "fp16", "threads": 4,
            "input_hw": [416, 416],
            "stages": {"model": {"n": 200, "min_ms": 11.0, "p50_ms": 12.0, "p90_ms": 13.0, "p99_ms": 15.0,
                                 "mean_ms": 12.2}},
        }],
    }
    assert list(validator.iter_errors(doc)) == []
    assert validation_problem(doc) is None
    text = render_text([doc])
    assert "Pixel 7" in text and "12.00" in text


def test_speedup_is_against_the_baseline_and_flags_a_precision_change():
    doc = fake_document()
    rows, notes = build_rows([doc], "torch")
    by_backend = {r["backend"]: r for r in rows}
    assert by_backend["torch"]["speed-up"] == "baseline"
    model_ratio = (doc["results"][0]["stages"]["model"]["p50_ms"] / doc["results"][1]["stages"]["model"]["p50_ms"])
    assert model_ratio == pytest.approx(3.0)
    assert by_backend["onnxruntime"]["speed-up"].startswith("3.00x/")
    assert not any(n.startswith("!") for n in notes)

    mixed = fake_document(precisions=("fp32", "bf16"))
    rows, notes = build_rows([mixed], "torch")
    by_backend = {r["backend"]: r for r in rows}
    assert by_backend["onnxruntime"]["speed-up"].endswith("!")
    assert by_backend["onnxruntime"]["precision"] == "bf16 !"
    assert any("bf16 vs fp32" in n for n in notes)


def test_merge_renders_several_machines_in_one_table(tmp_path, capsys):
    first, second = fake_document(label="x86 box"), fake_document(label="Raspberry Pi 5")
    paths = []
    for i, doc in enumerate((first, second)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(doc))
    report = tmp_path / "merged.md"
    assert main(["bench", "--merge", str(paths[0]), str(paths[1]), "--markdown", str(report)]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if " 64x96 " in line]  # the result rows
    assert sum("x86 box" in line for line in table) == 2 and sum("Raspberry Pi 5" in line for line in table) == 2
    text = report.read_text()
    assert "| machine | file | file precision |" in text and "Raspberry Pi 5" in text and "x86 box" in text
    assert load_document(paths[1])["machine"]["label"] == "Raspberry Pi 5"


def test_plot_of_merged_results_is_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    paths = []
    for label in ("x86 box", "Raspberry Pi 5"):
        paths.append(tmp_path / f"{label}.json")
        paths[-1].write_text(json.dumps(fake_document(label=label)))
    plot = tmp_path / "plots" / "latency.png"
    assert main(["bench", "--merge", *map(str, paths), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(plot.parent.glob("*.tmp*"))  # written atomically, no temporary file left


def test_merge_of_a_file_that_is_not_results_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "nanoplus-bench", "schema_version": 1, "results": []}))
    assert main(["bench", "--merge", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "Traceback" not in err
    assert main(["bench", "--merge", str(tmp_path / "absent.json")]) == 2
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the command on a real model, and its clear errors
# ---------------------------------------------------------------------------------------------
def test_bench_on_the_published_ncnn_model_writes_valid_results(tmp_path, capsys):
    pytest.importorskip("ncnn", reason="ncnn is not installed (pip install 'nanoplus[ncnn]')")
    param = require(NCNN_PARAM)
    image = require(IMAGES / "dog.jpg")
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    rc = main(["bench", str(param), "--runs", "3", "--warmup", "1", "--image", str(image), "--quiet",
               "--json", str(out_json), "--markdown", str(out_md)])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert list(_validator().iter_errors(doc)) == []

    (result,) = doc["results"]
    assert result["backend"] == "ncnn" and result["threads"] == 1 and result["precision"] == "fp32"
    assert result["input_hw"] == [416, 416]
    files = {Path(f["path"]).name: f["sha256"] for f in result["model"]["files"]}
    for name in ("nanodet-plus-m_416.param", "nanodet-plus-m_416.bin"):
        assert files[name] == hashlib.sha256((NCNN_FP16_DIR / name).read_bytes()).hexdigest()
    assert doc["run"]["image"]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    samples = result["samples_ms"]
    assert all(len(samples[s]) == 3 for s in bench.STAGES)
    total = np.add(np.add(samples["preprocess"], samples["inference"]), samples["postprocess"])
    assert np.allclose(total, samples["end_to_end"], atol=1e-3)  # stages add up to the end-to-end time
    assert result["stages"]["model"]["p50_ms"] == pytest.approx(np.median(samples["model"]), abs=1e-3)
    assert result["detections"] >= 1  # the dog photo has a dog, a bicycle and a truck
    assert doc["machine"]["software"]["ncnn"] and result["engine_version"]

    printed = capsys.readouterr().out
    assert "nanodet-plus-m_416" in printed and "ncnn" in printed and "fp32" in printed
    assert "| file | file precision | MB | size | backend |" in out_md.read_text()


def test_timed_stages_give_what_the_detector_gives():
    """The timed path (pre, engine, decode) must be the path ``detector(image)`` takes: same boxes."""
    pytest.importorskip("ncnn", reason="ncnn is not installed (pip install 'nanoplus[ncnn]')")
    import cv2

    param = require(NCNN_PARAM)
    image = cv2.imread(str(require(IMAGES / "dog.jpg")))
    case = bench.open_case(bench.Case(model_path=str(param), backend="auto", threads=1, input_size=None))
    bench.end_to_end_once(case, image, bench.time.perf_counter_ns)
    timed, direct = case.last_detections, case.detector(image)
    assert len(direct) >= 3 and timed.class_names == direct.class_names
    np.testing.assert_allclose(timed.boxes, direct.boxes, atol=1e-4)
    np.testing.assert_allclose(timed.scores, direct.scores, atol=1e-6)
    assert case.load_ms > 0 and case.detector.backend.precision == "fp32"


def test_missing_model_file_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "absent.onnx"), "--runs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "absent.onnx" in err and "no such model file" in err and "Traceback" not in err


def test_a_file_the_runtime_cannot_load_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    assert main(["bench", str(broken), "--runs", "1", "--warmup", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "broken.onnx" in err and "Traceback" not in err


def test_a_backend_that_is_not_installed_is_a_clear_error(monkeypatch, capsys):
    param = require(NCNN_PARAM)
    monkeypatch.setitem(sys.modules, "ncnn", None)  # "import ncnn" now raises ImportError
    assert main(["bench", str(param), "--runs", "1", "--warmup", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ncnn" in err and "pip install" in err and "Traceback" not in err


def test_a_checkpoint_without_torch_is_a_clear_error(monkeypatch, capsys, tmp_path):
    """On a device with only the runtime installed, a checkpoint names the extra it needs."""
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"not read: the engine is missing first")
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError
    assert main(["bench", str(ckpt), "--runs", "1", "--warmup", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install torch==2.13.0" in err and "nanoplus[" not in err and "Traceback" not in err


def test_torch_cases_get_their_own_thread_count_before_each_iteration():
    """Thread counts live on the cases, not in the module: interleaved torch cases with a count and
    with torch's default each get theirs."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    before = torch.get_num_threads()
    backend = SimpleNamespace(name="torch")
    one = bench.Case(model_path="m.ckpt", backend="torch", threads=1, input_size=None,
                     detector=SimpleNamespace(backend=backend))
    default = bench.Case(model_path="m.ckpt", backend="torch", threads=None, input_size=None,
                         detector=SimpleNamespace(backend=backend), default_threads=2)
    try:
        bench.apply_threads(one)
        assert torch.get_num_threads() == 1
        bench.apply_threads(default)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_opening_a_torch_case_leaves_torch_threads_as_they_were(tmp_path):
    """A case opened with 1 thread must not become the 'default' of a torch case opened after it."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from nanoplus.train.checkpoint import save_checkpoint
    from nanoplus.train.config import load_config
    from nanoplus.train.model import build_model

    cfg = load_config("nanodet-plus-m_416", ["model.num_classes=2", "data.input_hw=[64,64]"])
    cfg.class_names = ["a", "b"]
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, config=cfg.to_dict(), class_names=cfg.class_names,
                    model=build_model(cfg.model, deploy=True, load_pretrained=False).state_dict())
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        one = bench.open_case(bench.Case(model_path=str(ckpt), backend="torch", threads=wanted, input_size=None))
        assert torch.get_num_threads() == before
        default = bench.open_case(bench.Case(model_path=str(ckpt), backend="torch", threads=None, input_size=None))
        assert one.default_threads == default.default_threads == before
    finally:
        torch.set_num_threads(before)


def test_models_pair_with_the_listed_backends_that_read_them(tmp_path):
    from nanoplus.runtime.bench_command import plan_cases

    onnx, param, ckpt = tmp_path / "m.onnx", tmp_path / "m.param", tmp_path / "m.ckpt"
    for path in (onnx, param, ckpt):
        path.write_text("not opened here")
    cases = plan_cases([str(param), str(onnx), str(onnx)], ["onnxruntime", "openvino", "ncnn"], [1, 2], [None])
    assert [(Path(c.model_path).suffix, c.backend, c.threads) for c in cases] == [
        (".param", "ncnn", 1), (".param", "ncnn", 2),
        (".onnx", "onnxruntime", 1), (".onnx", "onnxruntime", 2),
        (".onnx", "openvino", 1), (".onnx", "openvino", 2),
    ]
    auto = plan_cases([str(ckpt), str(onnx)], ["auto"], [None], [(320, 320)])
    assert [(c.backend, c.threads, c.input_size) for c in auto] == [("auto", None, (320, 320))] * 2
    with pytest.raises(bench.BenchError, match="ncnn"):
        plan_cases([str(onnx)], ["onnxruntime", "ncnn"], [1], [None])  # ncnn reads none of the models


def test_input_sizes_are_spelled_as_in_the_other_commands():
    from nanoplus.runtime.bench_command import parse_sizes

    assert parse_sizes("416,320x416") == [(416, 416), (320, 416)]
    assert parse_sizes(None) == [None]
    with pytest.raises(bench.BenchError, match="--input-size"):
        parse_sizes("big")


def test_backend_option_errors_are_clear(tmp_path, capsys):
    param = require(NCNN_PARAM)
    assert main(["bench", str(param), "--backend", "tensorrt", "--quiet"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert main(["bench", str(param), "--backend", "onnxruntime", "--quiet"]) == 2
    assert "reads" in capsys.readouterr().err
    assert main(["bench", str(param), "--threads", "two", "--quiet"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_bf16_on_an_engine_without_bf16_is_a_clear_error(capsys):
    param = require(NCNN_PARAM)
    assert main(["bench", str(param), "--precision", "bf16", "--runs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bf16 runs on OpenVINO and torch only" in err and "--precision f32" in err and "Traceback" not in err


def test_targets_report_computes_overhead_and_speedups(tmp_path):
    """bench/targets.py on a hand-made document: the numbers it prints are the JSON's, combined right."""
    def result(backend, precision, threads, model, pre, post, e2e):
        stages = {name: {"p50_ms": v} for name, v in
                  (("model", model), ("preprocess", pre), ("postprocess", post), ("end_to_end", e2e))}
        return {"model": {"name": "nanodet-plus-m_416"}, "backend": backend, "precision": precision,
                "threads": threads, "stages": stages}
    doc = {"run": {"preprocess_implementation": "native (avx2+fma)"}, "results": [
        result("torch", "fp32", 1, 50.0, 0.6, 0.5, 51.0),
        result("openvino", "fp32", 1, 20.0, 0.5, 0.4, 21.0),   # fastest: 0.9 / 20 = 4.5%
        result("onnxruntime", "fp32", 1, 22.0, 0.5, 0.4, 23.0),
        result("torch", "fp32", 2, 40.0, 0.6, 0.5, 41.0),
        result("ncnn", "fp32", 2, 15.0, 0.5, 0.4, 16.0),        # 40 / 15 = 2.67x
    ]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc))
    (tmp_path / "accuracy_m_bf16.json").write_text(json.dumps(
        {"model": "runs/m_openvino.xml", "backend": "openvino", "precision": "bf16", "mAP": 0.36291, "AP50": 0.50476}))
    out = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "targets.py"), str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert "(openvino, fp32)" in out and "0.90 ms on a 20.00 ms model: **4.5%** (target 5%: met" in out
    assert "stretch 3%: **missed**" in out and "`native (avx2+fma)`" in out
    assert "| fp32 | 1 | openvino 20.00 ms | 50.00 ms | 2.50x | 2.43x | met |" in out
    assert "| fp32 | 2 | ncnn 15.00 ms | 40.00 ms | 2.67x | 2.56x | met |" in out
    assert "| m_openvino.xml | openvino | bf16 | 0.3629 | 0.5048 |" in out  # eval files beside the report
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "results"}')
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "targets.py"), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.json: not a results document" in proc.stderr and "Traceback" not in proc.stderr

    # the training step: the rows bench/train_throughput.py --json writes, beside the bench document
    def step(layout, threads, median, vs=None):
        row = {"config": "nanodet-plus-m_416", "layout": layout, "batch": 16, "imgsz": 416, "threads": threads,
               "steps": 6, "median_step_s": median, "images_per_s": round(16 / median, 2),
               "first_step": {"loss": 4.600683, "grad_norm": 16.43}}
        return row if vs is None else {**row, "vs_upstream": vs}
    train = tmp_path / "train_step.json"
    train.write_text(json.dumps([
        step("channels_last", 1, 7.5, 1.2), step("winograd", 1, 6.5, 1.386), step("upstream", 1, 9.0, 1.0),
        step("channels_last", 2, 4.2, 1.19), step("winograd", 2, 4.0, 1.25), step("upstream", 2, 5.0, 1.0),
        {"data_pipeline": {"data": "coco128", "images": 128, "seconds": 0.6, "images_per_s_per_worker": 210.0}}]))
    out = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "targets.py"), str(path), str(train)],
                         capture_output=True, text=True, check=True).stdout
    assert "| 1 | 9.00 s (1.78 images/s) | 7.50 s | 6.50 s | **1.39x** | met |" in out
    assert "| 2 | 5.00 s (3.20 images/s) | 4.20 s | 4.00 s | **1.25x** | **missed** |" in out
    assert "winograd 4.600683" in out and "delivers 210.0 images/s on coco128" in out


@pytest.mark.slow
def test_every_backend_with_the_torch_baseline_and_openvino_in_f32(tmp_path, capsys):
    """Import the published weights, export ONNX + OpenVINO, bench checkpoint / ONNX / IR / ncnn together."""
    for module in ("torch", "onnxruntime", "openvino", "ncnn", "onnx"):
        pytest.importorskip(module, reason=f"{module} is not installed")
    param = require(NCNN_PARAM)
    ckpt = tmp_path / "nanodet-plus-m_416.ckpt"
    assert main(["import", str(param), "--config", "nanodet-plus-m_416", "--out", str(ckpt)]) == 0
    assert main(["export", str(ckpt), "--format", "onnx,openvino", "--out-dir", str(tmp_path), "--no-parity"]) == 0
    models = [ckpt, tmp_path / "nanodet-plus-m_416.onnx", tmp_path / "nanodet-plus-m_416_openvino.xml", param]
    out_json = tmp_path / "all.json"
    capsys.readouterr()
    assert main(["bench", *map(str, models), "--runs", "3", "--warmup", "1", "--quiet", "--image",
                 str(require(IMAGES / "dog.jpg")), "--json", str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    assert list(_validator().iter_errors(doc)) == []
    by_backend = {r["backend"]: r for r in doc["results"]}
    assert set(by_backend) == {"torch", "onnxruntime", "openvino", "ncnn"}
    assert {r["precision"] for r in doc["results"]} == {"fp32"}  # OpenVINO would pick bf16 on a bf16 CPU
    # the exported files and the checkpoint are one model (same name): the speed-up column compares them
    assert len({r["model"]["name"] for r in by_backend.values() if r["backend"] != "ncnn"}) == 1
    rows, _ = build_rows([doc], "torch")
    speedups = {r["backend"]: r["speed-up"] for r in rows}
    assert speedups["torch"] == "baseline" and speedups["onnxruntime"].endswith("x")
    assert all(r["detections"] >= 1 for r in doc["results"])
