"""The one way nanoplus reads an image file: the bytes through Python, the pixels through ``cv2.imdecode``.

``cv2.imread`` is not used anywhere: it takes the path as a C string, and a file or folder name
that is not valid UTF-8 (a Latin-1 byte such as 0xE9 from an old camera or a Windows share)
crashed OpenCV inside ``imread`` (segfault, no message). Python's ``open`` passes any name the
file system has to the OS, so reading the bytes ourselves works for every name; ``imdecode``
decodes them as ``imread`` would (EXIF orientation applied, 8-bit BGR).

A JPEG whose end is missing decodes without an error in OpenCV (the missing rows come out grey);
``read_image`` refuses it instead, because a detector or a training step on those grey rows gives
a silent wrong answer.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from nanoplus.errors import NanoplusError

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
# bytes at the end of a file searched for its end marker: some writers pad the file after it
TAIL_BYTES = 4096


class ImageReadError(NanoplusError, OSError):
    """An image file that cannot be read or decoded; the message names the file and why."""


class ImageArrayError(NanoplusError, ValueError):
    """An image array of a shape or dtype without one obvious meaning; the message says what is expected."""


def display_path(path: Union[str, os.PathLike, bytes]) -> str:
    """A path as text that can always be printed (bytes that are not UTF-8 shown as \\xe9)."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def truncation(head: bytes, tail: bytes) -> Optional[str]:
    """Why an image file is cut short, from its first 8 and last ``TAIL_BYTES`` bytes; None when
    its end marker is there (JPEG, PNG) or the format has none that is checked."""
    if head.startswith(JPEG_START) and JPEG_END not in tail:
        return "a JPEG cut short: its end is missing; copy the file again"
    if head.startswith(PNG_START) and PNG_END not in tail:
        return "a PNG cut short: its end is missing; copy the file again"
    return None


def file_truncation(path: Union[str, os.PathLike]) -> Optional[str]:
    """``truncation`` of a file, reading only its first and last few bytes (cheap at load time)."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL_BYTES))
        return truncation(head, f.read())


def decode_image(data: bytes, path: Union[str, os.PathLike, bytes] = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> BGR uint8 (h, w, 3); ``path`` only names the source in errors."""
    import cv2

    if not data:
        raise ImageReadError(f"{display_path(path)}: cannot read this image (the file is empty, 0 bytes)")
    cut = truncation(data[:8], data[-TAIL_BYTES:])
    if cut:
        raise ImageReadError(f"{display_path(path)}: cannot read this image ({cut})")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageReadError(f"{display_path(path)}: cannot read this image (not an image OpenCV can decode: "
                             "truncated or another format; use JPEG, PNG, BMP, TIFF or WebP)")
    return img


def read_image(path: Union[str, os.PathLike, bytes]) -> np.ndarray:
    """BGR uint8 (h, w, 3) from an image file, as ``cv2.imread`` would decode it; an
    ``ImageReadError`` naming the file when it is missing, empty, cut short or not an image."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(f"{display_path(path)}: cannot read this image (no such file)") from None
    except IsADirectoryError:
        raise ImageReadError(f"{display_path(path)}: cannot read this image (it is a folder)") from None
    except OSError as e:
        raise ImageReadError(f"{display_path(path)}: cannot read this image ({e.strerror or e})") from None
    return decode_image(data, path)


@contextlib.contextmanager
def opencv_path(path: Union[str, os.PathLike]) -> Iterator[str]:
    """A name OpenCV's path-taking calls (``VideoCapture``, ``VideoWriter``) can be given for
    ``path`` (a file or a folder): the path itself when it is valid UTF-8, else a symbolic link
    to it with a plain name in a temporary folder, for as long as the ``with`` block lasts (OpenCV
    crashes on a name that is not UTF-8)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield text
        return
    folder = tempfile.mkdtemp(prefix="nanoplus-path-")
    link = os.path.join(folder, "link" + "".join(s for s in Path(text).suffixes if s.isascii()))
    try:
        os.symlink(os.path.abspath(text), link)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


IMAGE_EXPECTED = ("a BGR image as OpenCV gives it: a numpy array (height, width, 3) of uint8; also accepted: "
                  "grey (height, width) or (height, width, 1), BGRA (height, width, 4), and uint16 (scaled to 8 bits)")


def as_bgr_uint8(image, name: str = "image") -> np.ndarray:
    """Any image array with one obvious meaning -> BGR uint8 (h, w, 3); an ``ImageArrayError``
    saying what is expected for the rest.

    Accepted: uint8 or uint16 (h, w), (h, w, 1) grey, (h, w, 3) BGR, (h, w, 4) BGRA. uint16 is
    scaled to 8 bits by v / 257, rounded (65535 -> 255; an 8-bit value stored as 16 bits, v * 257,
    comes back exactly). Refused: other
    dtypes (float: is it 0..1 or 0..255?; signed or wider integers; bool), (h, w, 2), channels
    first (3, h, w), a batch (n, h, w, 3), an empty image.
    """
    import cv2

    if not isinstance(image, np.ndarray):
        raise ImageArrayError(f"{name}: got a {type(image).__name__}; expected {IMAGE_EXPECTED}")
    shape, dtype = tuple(image.shape), image.dtype
    got = f"got shape {shape} {dtype}"
    if image.ndim == 4:
        raise ImageArrayError(f"{name}: {got}, a batch; pass one image at a time; expected {IMAGE_EXPECTED}")
    if image.ndim == 3 and shape[2] not in (1, 3, 4):
        hint = (" (channels first? use image.transpose(1, 2, 0))" if shape[0] in (1, 3, 4) else "")
        raise ImageArrayError(f"{name}: {got}{hint}; expected {IMAGE_EXPECTED}")
    if image.ndim not in (2, 3):
        raise ImageArrayError(f"{name}: {got}; expected {IMAGE_EXPECTED}")
    if image.size == 0:
        raise ImageArrayError(f"{name}: {got}, an empty image; expected {IMAGE_EXPECTED}")
    if dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif dtype != np.uint8:
        hint = (" (a float image in 0..1: (image * 255).round().astype(np.uint8))" if dtype.kind == "f" else "")
        raise ImageArrayError(f"{name}: {got}{hint}; expected {IMAGE_EXPECTED}")
    if image.ndim == 2 or shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(image.reshape(shape[:2])), cv2.COLOR_GRAY2BGR)
    if shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)  # a flipped or cropped view: the warp wants rows in order
