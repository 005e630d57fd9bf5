"""Image files of a dataset: which suffixes count as images, listing a folder, and image sizes
read from the file headers."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm")


def read_image_size(path: Union[str, os.PathLike]) -> Optional[tuple[int, int]]:
    """(height, width) of an image as ``read_image`` decodes it (EXIF rotation applied), or None
    when the file cannot be read: missing, empty, not an image, or a JPEG / PNG cut short. Reads
    only the header and the last few bytes where PIL is available (a full decode otherwise)."""
    from nanoplus.runtime.images import ImageReadError, file_truncation, read_image

    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        try:
            with Image.open(path) as img:
                width, height = img.size
                orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "MPO") else 1
            if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the decoder swaps the sides
                width, height = height, width
            return None if file_truncation(path) else (int(height), int(width))
        except Exception:  # a format PIL does not know may still be readable by OpenCV
            pass
    try:
        img = read_image(path)
    except ImageReadError:
        return None
    return int(img.shape[0]), int(img.shape[1])


def read_sizes(paths: Sequence[str]) -> list[Optional[tuple[int, int]]]:
    """Image sizes for many files: header reads in a few threads, a progress bar for big sets."""
    if len(paths) < 64:
        return [read_image_size(p) for p in paths]
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(tqdm(pool.map(read_image_size, paths, chunksize=64), total=len(paths),
                         desc="reading image sizes", unit="img", leave=False,
                         disable=len(paths) < 2000))


def files_in(folder: Path) -> set[str]:
    """The names in ``folder`` (one listing instead of a stat per image); empty when unreadable."""
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()
