"""Compare the emulated aarch64 run of scripts/arm64_check.sh with the x86-64 reference run.

    python scripts/arm64_compare.py --x86 DIR --aarch64 DIR [--tests-rc N] [--elapsed-s S] [--emulation TEXT]

Each DIR holds what arm64_check.sh's runs wrote: eval_fp16.json, eval_int8.json (``nanoplus eval
--json``), infer/detections.json (``nanoplus infer``), preprocess.npz
(scripts/arm64_preprocess_dump.py) and versions.txt (``pip freeze``); the aarch64 one also
tests.txt (pytest's output) and bench.json / bench.txt (``nanoplus bench``).

The verdicts:
- mAP of the fp16 model: the aarch64 value equals x86-64's at the 4 decimals quoted (the unrounded
  difference is printed too): the engines' ARM and x86 kernels sum in different orders, so scores
  may move in the last float bits, but the mAP must not.
- mAP of the int8 model: within --int8-tol (default 0.015) of x86-64's, mAP and AP50. ncnn's int8
  kernels requantise with their own rounding on each architecture, and even on one machine the
  kernel choice moves this file's 50-image mAP: on x86-64, 0.3309 with ncnn's default packed
  kernels, 0.3396 with use_packing_layout off; on aarch64 0.3416 / 0.3420 (README, "Raspberry Pi").
  Equality is not a property ncnn's int8 path has; a difference beyond that spread is a fault.
- detections: the same detections (count, classes, order) on every photo, boxes within
  --box-tol pixels and scores within --score-tol (measured differences printed).
- pre-processing: the compiled path ran on both sides (portable C++ on aarch64) and every network
  input is equal bit for bit; the decoded photos are compared first.
- tests: pytest exited 0. bench: the record and the printout say the timings are emulated.
Prints one line per check, then the closing line; exits 0 on PASS, 1 on FAIL.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULT_FILES = ("eval_fp16.json", "eval_int8.json", "infer/detections.json", "preprocess.npz", "versions.txt")
REPORTED_PACKAGES = ("nanoplus", "numpy", "opencv-python-headless", "ncnn", "onnxruntime", "pycocotools", "pyyaml", "tqdm")


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def report(self, name: str, ok: bool, detail: str) -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            self.failed.append(name)
        return ok


def read_versions(path: Path) -> dict[str, str]:
    """pip freeze -> {lower-case name: version}."""
    versions = {}
    for line in path.read_text().splitlines():
        if "==" in line:
            name, _, version = line.partition("==")
            versions[name.strip().lower().replace("_", "-")] = version.strip()
        elif " @ " in line:  # the checkout itself, installed from a folder
            versions[line.split(" @ ")[0].strip().lower()] = "(local checkout)"
    return versions


def compare_eval(checks: Checks, x86: Path, arm: Path, name: str, tolerance: float = 0.0) -> float:
    """aarch64 mAP of eval_NAME.json, checked against x86-64's: equal at 4 decimals, or within ``tolerance``."""
    ref = json.loads((x86 / f"eval_{name}.json").read_text())
    got = json.loads((arm / f"eval_{name}.json").read_text())
    stats = [k for k in ref if k.startswith("AP") or k.startswith("AR") or k == "mAP"]
    worst = max(abs(float(got[k]) - float(ref[k])) for k in stats)
    if tolerance:
        agree = all(abs(float(got[k]) - float(ref[k])) <= tolerance for k in ("mAP", "AP50"))
        rule = f"mAP and AP50 within {tolerance} of x86-64's"
    else:
        agree = round(got["mAP"], 4) == round(ref["mAP"], 4) and round(got["AP50"], 4) == round(ref["AP50"], 4)
        rule = "equal to x86-64's at 4 decimals"
    checks.report(f"eval {name}", agree and got["num_images"] == ref["num_images"],
                  f"{rule}: aarch64 mAP {got['mAP']:.4f} AP50 {got['AP50']:.4f}, x86-64 {ref['mAP']:.4f} / {ref['AP50']:.4f} "
                  f"({got['num_images']} images, {got['num_detections']} vs {ref['num_detections']} detections, "
                  f"largest unrounded difference over {len(stats)} COCO stats {worst:.1e}; "
                  f"{got['backend']} {got['backend_version']}, {got['precision']})")
    return float(got["mAP"])


def compare_detections(checks: Checks, x86: Path, arm: Path, box_tol: float, score_tol: float) -> None:
    ref = {Path(i["file"]).name: i["detections"] for i in json.loads((x86 / "infer/detections.json").read_text())["images"]}
    got = {Path(i["file"]).name: i["detections"] for i in json.loads((arm / "infer/detections.json").read_text())["images"]}
    problems, box_diff, score_diff, count = [], 0.0, 0.0, 0
    for photo in sorted(set(ref) | set(got)):
        a, b = ref.get(photo), got.get(photo)
        if a is None or b is None:
            problems.append(f"{photo} only on {'aarch64' if a is None else 'x86-64'}")
            continue
        if [d["class_id"] for d in a] != [d["class_id"] for d in b]:
            problems.append(f"{photo}: classes {[d['class_name'] for d in b]} vs x86-64 {[d['class_name'] for d in a]}")
            continue
        count += len(a)
        for da, db in zip(a, b):
            box_diff = max(box_diff, float(np.max(np.abs(np.subtract(da["box"], db["box"])))))
            score_diff = max(score_diff, abs(da["score"] - db["score"]))
    ok = not problems and box_diff <= box_tol and score_diff <= score_tol
    detail = (f"{len(ref)} photos, {count} detections, same classes in the same order; largest |box difference| "
              f"{box_diff:.2f} px (tolerance {box_tol}), |score difference| {score_diff:.1e} (tolerance {score_tol})")
    checks.report("infer detections", ok, "; ".join(problems) if problems else detail)


def compare_preprocess(checks: Checks, x86: Path, arm: Path) -> None:
    ref, got = np.load(x86 / "preprocess.npz"), np.load(arm / "preprocess.npz")
    ref_impl, got_impl = str(ref["implementation"]), str(got["implementation"])
    # the portable C++ path reports no SIMD: on aarch64 that is what must have run
    checks.report("aarch64 pre-processing is the compiled portable path", got_impl == "native (none)",
                  f"aarch64 ran '{got_impl}', x86-64 '{ref_impl}'")
    decoded = sorted(k for k in ref.files if k.endswith("|decoded"))
    decode_diff = [k.split("|")[0] for k in decoded if k not in got.files or str(ref[k]) != str(got[k])]
    checks.report("decoded photos", not decode_diff,
                  f"{len(decoded)} photos decode to the same pixels (SHA-256)" if not decode_diff
                  else f"OpenCV decodes differently: {decode_diff} (the warp comparison below is then not like for like)")
    inputs = sorted(k for k in ref.files if "|" in k and not k.endswith("|decoded"))
    differ = []
    for key in inputs:
        a = ref[key]
        b = got[key] if key in got.files else None
        if b is None or a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a.view(np.uint32), b.view(np.uint32)):
            ulps = "" if b is None or a.shape != b.shape else f" (largest |difference| {float(np.max(np.abs(a - b))):.1e})"
            differ.append(key + ulps)
    shapes = sorted({"x".join(map(str, ref[k].shape[2:])) for k in inputs})
    checks.report("network input bit for bit", not differ and len(inputs) > 0,
                  f"{len(inputs)} network inputs ({', '.join(shapes)}) identical to x86-64's" if not differ
                  else f"{len(differ)} of {len(inputs)} differ: {differ[:4]}")


def check_tests(checks: Checks, arm: Path, rc: int) -> str:
    lines = [line.strip() for line in (arm / "tests.txt").read_text().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    checks.report("runtime tests on aarch64", rc == 0, f"pytest exit {rc}: {summary}")
    return summary.split(" in ")[0]


def check_bench(checks: Checks, arm: Path) -> None:
    document = json.loads((arm / "bench.json").read_text())
    machine = document["machine"]
    printout = (arm / "bench.txt").read_text()
    marked = bool(machine.get("emulation")) and "EMULATED" in printout
    checks.report("bench marked as emulated", marked,
                  f"record machine.emulation = {machine.get('emulation')!r}, label {machine.get('label')!r}, "
                  f"printout {'says' if 'EMULATED' in printout else 'does NOT say'} EMULATED")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--x86", required=True, type=Path, help="results of the x86-64 reference run")
    parser.add_argument("--aarch64", required=True, type=Path, help="results of the emulated aarch64 run")
    parser.add_argument("--tests-rc", type=int, default=None, help="pytest's exit status in the root")
    parser.add_argument("--elapsed-s", type=float, default=None, help="how long the whole check took")
    parser.add_argument("--emulation", default="", help="what emulated the aarch64 run (printed)")
    parser.add_argument("--box-tol", type=float, default=0.5, help="pixels (default 0.5)")
    parser.add_argument("--score-tol", type=float, default=1e-3, help="default 1e-3")
    parser.add_argument("--int8-tol", type=float, default=0.015,
                        help="largest mAP / AP50 difference of the int8 model (default 0.015: ncnn's int8 kernels "
                             "round differently per architecture and per kernel choice)")
    args = parser.parse_args(argv)

    missing = [str(d / f) for d in (args.x86, args.aarch64) for f in RESULT_FILES if not (d / f).exists()]
    if missing:
        print(f"arm64 check: result files missing: {', '.join(missing)} FAIL")
        return 1
    checks = Checks()
    ref_versions, arm_versions = read_versions(args.x86 / "versions.txt"), read_versions(args.aarch64 / "versions.txt")
    # pip and setuptools come with each side's venv (not locked); `build` only on the x86 side
    tooling = {"pip", "setuptools", "wheel", "build", "pyproject-hooks"}
    differ = sorted(k for k in (set(ref_versions) & set(arm_versions)) - tooling if ref_versions[k] != arm_versions[k])
    checks.report("same versions on both sides", not differ,
                  ", ".join(f"{k} {arm_versions[k]}" for k in REPORTED_PACKAGES if k in arm_versions)
                  + (f"; DIFFER: {[(k, ref_versions[k], arm_versions[k]) for k in differ]}" if differ else ""))
    fp16 = compare_eval(checks, args.x86, args.aarch64, "fp16")
    int8 = compare_eval(checks, args.x86, args.aarch64, "int8", tolerance=args.int8_tol)
    int8_x86 = float(json.loads((args.x86 / "eval_int8.json").read_text())["mAP"])
    compare_detections(checks, args.x86, args.aarch64, args.box_tol, args.score_tol)
    compare_preprocess(checks, args.x86, args.aarch64)
    tests = check_tests(checks, args.aarch64, args.tests_rc) if args.tests_rc is not None else "tests not run"
    if (args.aarch64 / "bench.json").exists():
        check_bench(checks, args.aarch64)
    else:
        checks.report("bench marked as emulated", False, "no bench.json")
    took = f"{args.elapsed_s / 60:.0f} min" if args.elapsed_s is not None else ""
    if args.emulation:
        print(f"emulation: {args.emulation}")
    verdict = "PASS" if not checks.failed else f"FAIL ({', '.join(checks.failed)})"
    fp16_word = "equal" if "eval fp16" not in checks.failed else "NOT equal"
    int8_word = f"within {args.int8_tol}" if "eval int8" not in checks.failed else f"NOT within {args.int8_tol}"
    print(f"arm64 check: mAP fp16 {fp16:.4f} int8 {int8:.4f} on aarch64 (x86-64: fp16 {fp16_word}, "
          f"int8 {int8_x86:.4f}, {int8_word}), tests {tests}, {took} {verdict}")
    return 0 if not checks.failed else 1


if __name__ == "__main__":
    sys.exit(main())
