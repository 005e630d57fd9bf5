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
from typing import Iterator, Union

import numpy as np

from nanoplus.errors import NanoplusError

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
# bytes at the end of a JPEG searched for its end marker: some writers pad the file after it
JPEG_TAIL_BYTES = 4096


class ImageReadError(NanoplusError, OSError):
    """An image file that cannot be read or decoded; the message names the file and why."""


def display_path(path: Union[str, os.PathLike, bytes]) -> str:
    """A path as text that can always be printed (bytes that are not UTF-8 shown as \\xe9)."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def jpeg_is_truncated(data: bytes) -> bool:
    """True for a JPEG whose end-of-image marker is missing (the file was cut short)."""
    return data[:2] == JPEG_START and JPEG_END not in data[-JPEG_TAIL_BYTES:]


def decode_image(data: bytes, path: Union[str, os.PathLike, bytes] = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> BGR uint8 (h, w, 3); ``path`` only names the source in errors."""
    import cv2

    if not data:
        raise ImageReadError(f"{display_path(path)}: cannot read this image (the file is empty, 0 bytes)")
    if jpeg_is_truncated(data):
        raise ImageReadError(f"{display_path(path)}: cannot read this image (a JPEG cut short: its end is "
                             "missing; copy the file again)")
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
