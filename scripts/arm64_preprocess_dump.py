"""Save the compiled pre-processing's network input for every photo, to compare across machines.

    python scripts/arm64_preprocess_dump.py MODEL IMAGES_DIR OUT.npz

scripts/arm64_check.sh runs it on x86-64 (the AVX2 path) and inside the emulated arm64 root (the
portable C++ path); scripts/arm64_compare.py then requires the two files to be equal bit for bit.
Besides the model's own input (stretch to its size, BGR) it saves a letterboxed, non-square, RGB
variant, so the padding, both axes' scales and the channel swap are compared too.

OUT.npz holds one (1, 3, H, W) float32 array per "PHOTO|VARIANT", the SHA-256 of each decoded photo
per "PHOTO|decoded" (the JPEG decoder is OpenCV's, also built per architecture: a difference there
is told apart from one in the warp), and "implementation", the string
``nanoplus.runtime.preprocess.implementation()`` gave (the run fails unless it is the compiled one).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import sys
from pathlib import Path

import numpy as np

from nanoplus.atomic import write_bytes_atomic
from nanoplus.runtime import Detector
from nanoplus.runtime.detector import read_image
from nanoplus.runtime.preprocess import implementation, preprocess


def variants(meta) -> dict:
    """Name -> ModelMeta: the model's own pre-processing and a letterboxed 320x416 RGB one."""
    return {
        "model": meta,
        "letterbox_320x416_rgb": dataclasses.replace(meta, input_hw=[320, 416], resize_mode="letterbox",
                                                     color_order="RGB"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a model file the runtime opens (its metadata gives size, mean, std)")
    parser.add_argument("images", help="folder of photos (*.jpg)")
    parser.add_argument("out", help="output .npz")
    args = parser.parse_args(argv)

    used = implementation()
    if not used.startswith("native"):
        print(f"the compiled pre-processing is not in use here ({used}): nothing to compare", file=sys.stderr)
        return 2
    meta = Detector(args.model).meta
    photos = sorted(Path(args.images).glob("*.jpg"))
    if not photos:
        print(f"{args.images}: no *.jpg photos", file=sys.stderr)
        return 2
    arrays = {"implementation": np.array(used)}
    for photo in photos:
        img = read_image(photo)
        arrays[f"{photo.name}|decoded"] = np.array(hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
        for name, variant in variants(meta).items():
            blob, _ = preprocess(img, variant)
            arrays[f"{photo.name}|{name}"] = blob
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(Path(args.out), buffer.getvalue())
    print(f"{used}: {len(photos) * len(variants(meta))} network inputs from {len(photos)} photos -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
