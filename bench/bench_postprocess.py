"""Decode + NMS cost of ``nanoplus.runtime.postprocess`` on realistic model outputs.

Raw outputs come from the published NanoDet-Plus-m-416 COCO models (80 classes, N = 3598 points)
run by the runtime on the shared photos: the fp16 ncnn model gives raw logits channels-first
(112, N), decoded through a transposed view as ``Detector`` does; the int8 model gives sigmoid
scores (N, 112). Each case (model x threshold: 0.35 = edge default, 0.05 = upstream's
evaluation; IoU 0.6, max 100) runs on every photo per round, rounds interleave the cases (so a
busy period of a shared machine hits all alike), and the median time per image is printed with
the candidate and detection counts. Each decode+NMS case runs twice per round, through the
compiled path (``nanoplus.runtime._native``, when built) and through numpy (NANOPLUS_NATIVE=0),
so the two are compared A/B in the same rounds. Pre-processing (warp + normalise) and
boxes_to_original are timed the same way for scale. Single thread (numpy's element-wise work is
single-threaded anyway).

    python3 bench/bench_postprocess.py [--rounds 300] [--images dog,horses,...] [--shared ../shared]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

import nanoplus.runtime.postprocess as postprocess_module
from nanoplus.runtime.detector import Detector
from nanoplus.runtime.images import read_image
from nanoplus.runtime.postprocess import postprocess, sigmoid
from nanoplus.runtime.preprocess import boxes_to_original, preprocess

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "fp16 ncnn (CN logits)": "nanodet-plus-m_416-ncnn-fp16",
    "int8 ncnn (NC sigmoid)": "nanodet-plus-m_416-ncnn-int8",
}


def raw_outputs(model_dir: Path, images: dict) -> list[tuple]:
    """[(raw as the detector decodes it, meta, warp matrix, src_hw)] for each photo."""
    det = Detector(model_dir, threads=1)
    out = []
    for img in images.values():
        blob, matrix = det.preprocess(img)
        raw = det._run_nc(blob)  # the engine's output: (N, C+32), a transposed view for CN models
        raw = np.array(raw.T).T if det.meta.layout == "CN" else np.array(raw)  # own copy, same layout
        out.append((raw, det.meta, matrix, img.shape[:2]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("NANOPLUS_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--images", default="dog,horses,person,kite,giraffe,eagle,scream")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    cv2.setNumThreads(1)

    assets = Path(args.shared) / "assets"
    missing = [assets / "models" / d for d in MODELS.values() if not (assets / "models" / d).exists()]
    if missing:
        print(f"missing {missing[0]}: pass --shared pointing at the shared material", file=sys.stderr)
        return 1
    images = {name: read_image(assets / "images" / f"{name}.jpg") for name in args.images.split(",")}
    outputs = {label: raw_outputs(assets / "models" / folder, images) for label, folder in MODELS.items()}

    implementations = ["native", "numpy"] if postprocess_module.native_enabled() else ["numpy"]
    cases = []  # (label, fn running every photo once, counts per photo or None)
    for score_thr in (0.35, 0.05):
        for label, items in outputs.items():
            for implementation in implementations:
                def decode_and_nms(items=items, score_thr=score_thr, implementation=implementation):
                    os.environ["NANOPLUS_NATIVE"] = "1" if implementation == "native" else "0"
                    for raw, meta, _, _ in items:
                        postprocess(raw, meta.input_hw, meta.strides, meta.reg_max, score_thr, 0.6, 100,
                                    meta.score_activation == "sigmoid")
                    os.environ.pop("NANOPLUS_NATIVE")

                counts = []
                for raw, meta, _, _ in items:
                    cls = raw[:, :meta.num_classes]
                    scores = cls if meta.score_activation == "sigmoid" else sigmoid(cls)
                    kept = postprocess(raw, meta.input_hw, meta.strides, meta.reg_max, score_thr, 0.6, 100,
                                       meta.score_activation == "sigmoid")[0]
                    counts.append((int((scores > score_thr).sum()), len(kept)))
                cases.append((f"decode+NMS {implementation:<6} {label:<23} score>{score_thr:<5}", decode_and_nms, counts))

    meta = outputs[next(iter(MODELS))][0][1]

    def warp_and_normalise():
        for img in images.values():
            preprocess(img, meta)

    boxes = np.random.default_rng(0).uniform(0, 200, (100, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]

    def boxes_back():
        for _, _, matrix, src_hw in outputs[next(iter(MODELS))]:
            boxes_to_original(boxes, matrix, src_hw)

    cases.append((f"preprocess  warp+normalise to {meta.input_hw[0]}x{meta.input_hw[1]}", warp_and_normalise, None))
    cases.append(("boxes_to_original (100 boxes)", boxes_back, None))

    samples = {label: [] for label, _, _ in cases}
    for _, fn, _ in cases:
        fn()  # warm-up
    for _ in range(args.rounds):
        for label, fn, _ in cases:
            start = time.perf_counter_ns()
            fn()
            samples[label].append((time.perf_counter_ns() - start) / 1e3 / len(images))

    print(f"numpy {np.__version__}, opencv {cv2.__version__}, decode+NMS {'/'.join(implementations)}; "
          f"{args.rounds} interleaved rounds over "
          f"{len(images)} photos; microseconds per image: median (p10-p90)")
    for label, _, counts in cases:
        values = sorted(samples[label])
        p10, p90 = values[len(values) // 10], values[(9 * len(values)) // 10]
        line = f"{label:<63} {statistics.median(values):8.1f} us ({p10:.0f}-{p90:.0f})"
        if counts:
            line += (f"   candidates {statistics.mean(c for c, _ in counts):6.1f}, "
                     f"kept {statistics.mean(k for _, k in counts):5.1f} per image")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
