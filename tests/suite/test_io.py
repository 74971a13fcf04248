import json
import os

import pytest

from suite.io import DataError, append_jsonl, atomic_dir, atomic_write_json, read_json, read_jsonl


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_dir_failure_keeps_old(tmp_path):
    d = tmp_path / "d"
    with atomic_dir(d) as t:
        (t / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as t:
            (t / "f").write_text("new")
            raise RuntimeError("crash mid-write")
    assert (d / "f").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_read_json_errors_name_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(DataError, match=r"bad.json.*invalid JSON at line 1"):
        read_json(bad)
    nb = tmp_path / "nb.json"
    nb.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match="not UTF-8"):
        read_json(nb)


def test_jsonl_torn_last_line_is_dropped(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"i": 1})
    append_jsonl(p, {"i": 2})
    with open(p, "a") as f:
        f.write('{"i": 3, "x"')  # crash mid-line
    assert [r["i"] for r in read_jsonl(p)] == [1, 2]
