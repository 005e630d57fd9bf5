"""Atomic file writes, for every file nanoplus writes (checkpoints, configs, JSON, reports, images).

The content goes to a temporary file beside the target, then ``os.replace`` puts it in place: a
reader never sees half a file, and a crash or Ctrl-C leaves the previous version untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import IO, Iterator, Union

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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
