"""Atomic file writes, for every file nanoplus writes (checkpoints, configs, JSON, reports, images).

The content goes to a temporary file beside the target, then ``os.replace`` puts it in place: a
reader never sees half a file, and a crash or Ctrl-C leaves the previous version untouched.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import IO, Iterator, Union

from nanoplus.errors import NanoplusError

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", fsync: bool = False, suffix: str = ".tmp") -> Iterator[IO]:
    """``with atomic_open(path, "wb") as f:`` — write ``f``; ``path`` appears only when the block ends.

    mode: "w" (text, UTF-8) or "wb". fsync: flush to the disk before the rename (checkpoints).
    suffix: the temporary file's ending. The parent folder is created; on an error the temporary
    file is removed and ``path`` is left as it was. The file gets the usual permissions (umask).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        with open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        full = isinstance(error, Exception) and disk_is_full(path.parent, error)  # before the unlink frees space
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if full:
            raise DiskFullError(path.parent) from error
        raise


# Writers report a full disk in their own ways (OSError ENOSPC from Python, RuntimeError from
# torch.save's C++ writer or OpenVINO, an empty file from pnnx): a failed write that leaves less
# than this much free space in the folder is taken as a full disk.
LOW_SPACE_BYTES = 4 << 20


class DiskFullError(NanoplusError, OSError):
    """No space left where nanoplus writes; the message names the folder and the fix."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        free = free_bytes(self.folder)
        shown = f"{free / 1e6:.1f} MB free" if free is not None else "free space unknown"
        super().__init__(f"no space left on {self.folder} ({shown}); the partial files were removed. Free some "
                         "space or write somewhere else, and run again")


def free_bytes(folder: PathLike) -> int | None:
    """Bytes this process may still write in ``folder`` (its nearest existing parent), or None."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_is_full(folder: PathLike, error: BaseException) -> bool:
    """Whether ``error``, raised while writing in ``folder``, is (most likely) a full disk."""
    if isinstance(error, DiskFullError):
        return False  # already said
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    free = free_bytes(folder)
    return free is not None and free < LOW_SPACE_BYTES


def write_text_atomic(path: PathLike, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json_atomic(path: PathLike, document, indent: int | None = 1) -> Path:
    """``document`` as JSON (``indent`` None: one line)."""
    with atomic_open(path) as f:
        json.dump(document, f, indent=indent)
    return Path(path)


# the temporary name atomic_open gives: .{target name}.{pid}.{8 hex}{suffix}
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(?P<suffix>\.[^.]+)$")


def remove_stale_temp_files(folder: PathLike) -> list[Path]:
    """Delete the temporary files ``atomic_open`` left in ``folder`` when its process was killed
    (SIGKILL, power loss: no ``except`` ran), i.e. those whose process no longer runs. Returns them."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_NAME.match(name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        path = Path(folder) / name
        with contextlib.suppress(OSError):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but is not ours, or cannot tell: leave its file alone
        return True
    return True
