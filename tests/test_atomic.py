"""Atomic writes: the file appears whole or not at all, and a failed write keeps the old one."""
from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from nanoplus.atomic import atomic_open, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_create_folders_and_leave_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    write_json_atomic(target, {"x": [1, 2]})
    assert json.loads(target.read_text()) == {"x": [1, 2]}
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == []


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb", fsync=True) as f:
            f.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass


# -- a full disk (issue 12 item 5): a real one reproduces it (mount -t tmpfs -o size=400k tmpfs DIR);
# here the writers' errors are simulated the ways they arrive


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")])
def test_full_disk_names_the_folder_and_leaves_nothing(tmp_path, monkeypatch, error):
    """torch.save says RuntimeError, Python says ENOSPC: both become a DiskFullError naming the folder."""
    import nanoplus.atomic as atomic

    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 12_000)
    with pytest.raises(atomic.DiskFullError, match=rf"no space left on {tmp_path} \(0\.0 MB free\).*run again"):
        with atomic.atomic_open(tmp_path / "last.ckpt", "wb") as f:
            f.write(b"x" * 100)
            raise error
    assert list(tmp_path.iterdir()) == []


def test_other_errors_with_space_left_are_not_called_a_full_disk(tmp_path, monkeypatch):
    import nanoplus.atomic as atomic

    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10 << 30)
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic.atomic_open(tmp_path / "x.json") as f:
            raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_cli_says_no_space_instead_of_a_traceback(monkeypatch, capsys):
    from nanoplus import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "out/detections.json")

    parser = cli.build_command_parser("infer")
    monkeypatch.setattr(cli, "build_command_parser", lambda name: parser)
    parser.set_defaults(_run=full)
    assert cli.main(["infer", "m.onnx", "x.jpg"]) == 2
    assert "no space left on the device (writing out/detections.json)" in capsys.readouterr().err
