"""A small detection dataset the project makes itself: coloured shapes on textured backgrounds.

No downloads, no torch, deterministic: the same arguments give byte-identical files (on one
OpenCV build; JPEG encoding may differ between libjpeg versions). It is the default data for
demos and tests, sized so that NanoDet-Plus-m learns it from scratch within minutes on a CPU.

Three classes, told apart by shape (circle, square, triangle) and, for most objects, by a hue
family (reddish, greenish, bluish); one object in five gets a random hue so that shape matters
too. Objects vary in size (small to large), rotation and shading and may overlap a little;
the background is a low-saturation colour field with noise, lines and blobs of clutter; some
images hold no object. Boxes are the tight extent of each drawn shape, so they lie inside the
image.

Written in COCO format::

    OUT_DIR/annotations/instances_train.json, instances_val.json
    OUT_DIR/train/*.jpg, OUT_DIR/val/*.jpg

so ``load_dataset(OUT_DIR, "train")`` / ``"val"`` read it. Command line:
``python -m nanoplus.train.synthetic OUT_DIR [--num-train N] [--num-val N] [--height H] [--width W] [--seed S]
[--max-objects N] [--object-size MIN MAX]``. ``--object-size 0.02 0.12 --max-objects 10`` makes a
dataset of many small objects (sizes as fractions of the image's shorter side; default 0.15 0.5).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np

from nanoplus.atomic import write_bytes_atomic
from nanoplus.errors import NanoplusError

CLASS_NAMES = ("circle", "square", "triangle")
CLASS_HUES = (0, 60, 120)  # OpenCV hue (0..180): red, green, blue families
GENERATOR_VERSION = 1


class SyntheticDatasetError(NanoplusError, ValueError):
    """Arguments or an output folder the generator cannot use."""


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-saturation colour field + noise + clutter strokes (never saturated like the objects)."""
    coarse = rng.uniform(60, 200, size=(3, 4, 1)).astype(np.float32)
    tint = rng.uniform(-18, 18, size=(3, 4, 3)).astype(np.float32)
    field = cv2.resize(coarse + tint, (width, height), interpolation=cv2.INTER_CUBIC)
    texture = cv2.resize(rng.normal(0, 14, size=(height // 4 + 1, width // 4 + 1)).astype(np.float32),
                         (width, height), interpolation=cv2.INTER_LINEAR)
    img = field + texture[..., None]
    for _ in range(int(rng.integers(2, 7))):  # grey clutter: lines and ellipses
        grey = float(rng.uniform(30, 230))
        colour = (grey + rng.uniform(-10, 10), grey + rng.uniform(-10, 10), grey + rng.uniform(-10, 10))
        if rng.random() < 0.6:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(3, 25)), int(rng.integers(3, 25)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return img


def _shape_mask(rng: np.random.Generator, cls: int, height: int, width: int, size: float) -> np.ndarray:
    """uint8 mask (255 inside) of one shape of about ``size`` pixels, placed inside the image."""
    margin = size / 2 + 2
    cx = rng.uniform(margin, width - margin)
    cy = rng.uniform(margin, height - margin)
    mask = np.zeros((height, width), np.uint8)
    shift = 4  # sub-pixel vertex precision for cv2.fillPoly
    if cls == 0:
        axes = (size / 2, size / 2 * rng.uniform(0.85, 1.0))  # slightly elliptic circles
        cv2.ellipse(mask, (int(cx * 16), int(cy * 16)), (int(axes[0] * 16), int(axes[1] * 16)),
                    float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_8, shift)
        return mask
    if cls == 1:
        angle = rng.uniform(-20, 20) * np.pi / 180
        half = size / 2 / (abs(np.cos(angle)) + abs(np.sin(angle)))  # rotated square stays within size
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
    else:
        angle = rng.uniform(0, 2 * np.pi)
        corners = np.array([[np.cos(a), np.sin(a)] for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]) * (size / 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = corners @ rot.T + [cx, cy]
    cv2.fillPoly(mask, [np.round(points * (1 << shift)).astype(np.int32)], 255, cv2.LINE_8, shift)
    return mask


def _box_of(mask: np.ndarray) -> np.ndarray:
    """Tight x1, y1, x2, y2 (pixel edges) of a mask's non-zero pixels."""
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], np.float64)


def _overlap(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each of ``others``: the largest of IoU, the share of that box covered by ``box`` and
    the share of ``box`` inside it (so neither hiding nor nesting passes a low limit)."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], 1)
    return np.maximum(inter / (area + areas - inter), np.maximum(inter / areas, inter / area))


def render_image(rng: np.random.Generator, height: int, width: int, max_objects: int,
                 empty_fraction: float, min_size: float = 0.15, max_size: float = 0.5,
                 ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image (H, W, 3) uint8 BGR and its objects [(class index, box x1y1x2y2)].

    Object sizes are log-uniform in [min_size, max_size] x the image's shorter side.
    """
    img = _background(rng, height, width)
    num = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    short = min(height, width)
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(num * 8):  # placement attempts; crowded images end up with fewer objects
        if len(objects) == num:
            break
        cls = int(rng.integers(len(CLASS_NAMES)))
        size = float(np.exp(rng.uniform(np.log(min_size * short), np.log(max_size * short))))
        mask = _shape_mask(rng, cls, height, width, size)
        if not mask.any():
            continue
        box = _box_of(mask)
        if objects:
            if _overlap(box, np.stack([b for _, b in objects])).max() > 0.35:  # overlap a little only
                continue
        hue = CLASS_HUES[cls] if rng.random() < 0.8 else float(rng.uniform(0, 180))
        hsv = np.uint8([[[int(hue + rng.uniform(-12, 12)) % 180, rng.integers(150, 256), rng.integers(130, 256)]]])
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        # shading across the shape, soft edges
        ramp = np.linspace(-1, 1, width, dtype=np.float32)[None, :] * float(rng.uniform(-25, 25))
        alpha = cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32)[..., None] / 255.0
        img = img * (1 - alpha) + (colour[None, None, :] + ramp[..., None]) * alpha
        objects.append((cls, box))
    img = img + rng.normal(0, 5, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _write_split(out: Path, split: str, count: int, height: int, width: int, seed: int,
                 max_objects: int, empty_fraction: float, object_size: tuple[float, float]) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    split_code = {"train": 0, "val": 1}[split]
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split_code, index])  # each image independent of counts
        img, objects = render_image(rng, height, width, max_objects, empty_fraction, *object_size)
        file_name = f"{index:06d}.jpg"
        # encoded here and written by Python: cv2.imwrite crashes on a folder name that is not UTF-8
        ok, encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise OSError(f"OpenCV cannot encode {out / split / file_name} as JPEG")
        write_bytes_atomic(out / split / file_name, encoded.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for cls, box in objects:
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0})
    coco = {
        "info": {"description": "nanoplus synthetic shapes", "version": GENERATOR_VERSION},
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASS_NAMES)],
    }
    (out / "annotations").mkdir(exist_ok=True)
    with open(out / "annotations" / f"instances_{split}.json", "w", encoding="utf-8") as f:
        json.dump(coco, f)


def make_synthetic_dataset(out_dir: Union[str, os.PathLike], num_train: int = 480, num_val: int = 96,
                           image_hw: Sequence[int] = (192, 256), seed: int = 0, max_objects: int = 4,
                           empty_fraction: float = 0.06, force: bool = False,
                           object_size: Sequence[float] = (0.15, 0.5)) -> Path:
    """Generate the dataset into ``out_dir`` (COCO layout, see the module docstring) and return it.

    image_hw: (height, width) of every image. object_size: (min, max) object size as a fraction of
    the image's shorter side (log-uniform between them). A folder already holding a dataset generated with
    the same arguments is reused unless ``force``; a non-empty folder that this generator did not
    write is refused. The files are written into a temporary folder first and moved into place,
    so a reader never sees half a dataset.
    """
    out = Path(out_dir)
    height, width = (int(v) for v in image_hw)
    if min(height, width) < 32:
        raise SyntheticDatasetError(f"image_hw {tuple(image_hw)}: images must be at least 32 pixels high and wide")
    smallest, largest = (float(v) for v in object_size)
    if not 0 < smallest <= largest <= 0.9 or smallest * min(height, width) < 2:
        raise SyntheticDatasetError(
            f"object_size ({smallest}, {largest}): need 0 < min <= max <= 0.9 and objects of at least 2 pixels "
            f"(min x shorter side {min(height, width)} = {smallest * min(height, width):.1f}); e.g. 0.02 0.12")
    if int(max_objects) < 1:
        raise SyntheticDatasetError(f"max_objects {max_objects}: need at least 1")
    params = {"version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
              "image_hw": [height, width], "seed": int(seed), "max_objects": int(max_objects),
              "empty_fraction": float(empty_fraction), "object_size": [smallest, largest]}
    manifest = out / "synthetic.json"
    if out.exists():
        if manifest.is_file():
            if not force and json.loads(manifest.read_text()) == params:
                return out
        elif any(out.iterdir()):
            raise SyntheticDatasetError(f"{out} exists and holds files this generator did not write; "
                                        "choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split, count in (("train", num_train), ("val", num_val)):
            _write_split(tmp, split, int(count), height, width, int(seed), int(max_objects), float(empty_fraction),
                         (smallest, largest))
        (tmp / "synthetic.json").write_text(json.dumps(params, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanoplus.train.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write (created; reused if already generated the same way)")
    parser.add_argument("--num-train", type=int, default=480)
    parser.add_argument("--num-val", type=int, default=96)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=4, help="objects per image, at most (default 4)")
    parser.add_argument("--object-size", type=float, nargs=2, default=(0.15, 0.5), metavar=("MIN", "MAX"),
                        help="object size range as fractions of the shorter image side (default 0.15 0.5)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    args = parser.parse_args(argv)
    try:
        out = make_synthetic_dataset(args.out_dir, args.num_train, args.num_val, (args.height, args.width),
                                     args.seed, max_objects=args.max_objects, force=args.force,
                                     object_size=args.object_size)
    except SyntheticDatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"synthetic dataset in {out}: {args.num_train} train + {args.num_val} val images, "
          f"classes {', '.join(CLASS_NAMES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
