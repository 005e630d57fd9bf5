"""How far each pre-processing is from the project's reference, per shared photo: a Markdown table.

The compiled warp (``nanoplus.runtime._native``) is the definition and must be 0 everywhere; the
OpenCV fallback (what ``preprocess`` runs without it, or with NANOPLUS_NATIVE=0) is whatever the
installed OpenCV's ``warpPerspective`` rounds to. For every photo and input size (stretch, BGR,
upstream's mean/std) it prints, per implementation: the largest difference to
``runtime/preprocess_reference.py`` on the warped uint8 image (grey levels) and on the normalised
float32 blob, and the share of the warped values that differ. The footer names the versions.

    python3 bench/preprocess_diff.py [--sizes 320,416] [--shared ../shared]

Another OpenCV without touching the environment:
    pip install --no-deps --target /tmp/cv50 opencv-python-headless==5.0.0.93
    PYTHONPATH=/tmp/cv50 python3 bench/preprocess_diff.py
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from nanoplus.runtime import preprocess as pre
from nanoplus.runtime.images import read_image
from nanoplus.runtime.preprocess_reference import reference_normalize, reference_warp

REPO = Path(__file__).resolve().parents[1]
MEAN = (103.53, 116.28, 123.675)  # upstream NanoDet-Plus (BGR)
STD = (57.375, 57.12, 58.395)


def differences(warped: np.ndarray, blob: np.ndarray, ref_warped: np.ndarray, ref_blob: np.ndarray) -> tuple:
    """(max grey levels on the warp, max |difference| on the blob, share of warped values that differ)."""
    grey = np.abs(warped.astype(np.int16) - ref_warped)
    return int(grey.max()), float(np.abs(blob - ref_blob).max()), float((grey > 0).mean())


def compiled(simd):
    """The compiled warp (a vector path by its cap, or False: portable code) as a function of (img, matrix, size): the warp alone
    (mul 1, add 0) as (H, W, 3) uint8, and the normalised blob."""
    def run(img: np.ndarray, matrix: np.ndarray, size: tuple) -> tuple:
        raw = np.empty((1, 3, *size), np.float32)
        blob = np.empty((1, 3, *size), np.float32)
        scale, shift = pre._scale_shift(MEAN, STD)
        for out, mul, add in ((raw, (1.0,) * 3, (0.0,) * 3), (blob, tuple(map(float, scale)), tuple(map(float, shift)))):
            pre._native.warp_normalize(img, matrix[0, 0], matrix[1, 1], out, mul, add, False, simd)
        return raw[0].transpose(1, 2, 0).astype(np.uint8), blob
    return run


def fallback(img: np.ndarray, matrix: np.ndarray, size: tuple) -> tuple:
    """OpenCV's warp and numpy's normalisation, as ``preprocess`` runs them without the compiled module."""
    warped = pre.warp_image(img, matrix, size)
    return warped, pre.normalize_to_blob(warped, MEAN, STD)


def cell(diff: tuple) -> str:
    grey, blob, share = diff
    return f"{grey} | {blob:.3g} | {share:.3%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("NANOPLUS_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--sizes", default="320,416", help="square input sizes (default: 320,416)")
    args = parser.parse_args()
    photos = sorted((Path(args.shared) / "assets" / "images").glob("*.jpg"))
    if not photos:
        print(f"no photos under {Path(args.shared) / 'assets' / 'images'}: pass --shared", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    implementations = {}
    if pre._native is not None:
        for cap in ("avx512vbmi", "avx2"):  # every vector path this CPU has
            if pre._native.simd(cap).startswith(cap):
                implementations[f"compiled, {pre._native.simd(cap)}"] = compiled(cap)
        implementations["compiled, portable"] = compiled(False)
    else:
        print("nanoplus.runtime._native is not built: only the OpenCV fallback is measured", file=sys.stderr)
    implementations[f"OpenCV {cv2.__version__} fallback"] = fallback

    header = ["photo", "size"]
    for name in implementations:
        header += [f"{name}: max grey levels", "max blob diff", "values differing"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    worst = {name: (0, 0.0, 0.0) for name in implementations}
    for path in photos:
        img = read_image(path)
        for side in sizes:
            size = (side, side)
            matrix = pre.get_warp_matrix(img.shape[:2], size)
            ref_warped = reference_warp(img, matrix[0, 0], matrix[1, 1], size)
            ref_blob = reference_normalize(ref_warped, MEAN, STD)
            cells = []
            for name, run in implementations.items():
                diff = differences(*run(img, matrix, size), ref_warped, ref_blob)
                worst[name] = tuple(max(a, b) for a, b in zip(worst[name], diff))
                cells.append(cell(diff))
            print(f"| {path.stem} {img.shape[1]}x{img.shape[0]} | {side} | " + " | ".join(cells) + " |")
    print("| **worst** | | " + " | ".join(cell(worst[name]) for name in implementations) + " |")
    print(f"\nOpenCV {cv2.__version__}, numpy {np.__version__}; reference: runtime/preprocess_reference.py; "
          f"stretch resize, BGR, mean {MEAN}, std {STD}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
