"""Atomic writes: the whole new file or the old one, and no temporary file left behind."""
from __future__ import annotations

import json

import pytest

from dicom_node.atomic import fsync_dir, write_atomic, write_json_atomic


@pytest.mark.parametrize("sync", [True, False])
def test_replaces_whole_file(tmp_path, sync):
    path = tmp_path / "sub" / "a.bin"
    write_atomic(path, lambda h: h.write(b"old"), sync=sync)
    write_atomic(path, lambda h: h.write(b"new"), sync=sync)
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["a.bin"]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"a": 1})

    def broken(handle):
        handle.write(b"{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_fsync_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")
