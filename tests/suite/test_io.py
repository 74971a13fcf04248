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


def test_a_log_cut_inside_a_multibyte_character_resumes_losing_only_that_line(tmp_path):
    """A short write (kill, full disk, power cut) can end inside "é": the log must still resume."""
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"i": 1, "name": "café"})
    append_jsonl(p, {"i": 2, "name": "naïve"})
    line = ('{"i": 3, "name": "é' + '"}\n').encode("utf-8")
    cut = line.index("é".encode()) + 1  # one byte into the two-byte character
    with open(p, "ab") as f:
        f.write(line[:cut])
    msgs = []
    assert [r["i"] for r in read_jsonl(p, on_bad=msgs.append)] == [1, 2]
    assert len(msgs) == 1 and "line 3" in msgs[0] and "torn" in msgs[0]
    append_jsonl(p, {"i": 3, "name": "é"})  # the redo lands on a clean line
    assert [r["i"] for r in read_jsonl(p)] == [1, 2, 3]


def test_bad_records_are_reported_with_file_line_and_field_and_left_out(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"i": 1, "v": 0.5}\n5\n{"i": 3, "v": 42}\n\xff\xfe\n{"i": 5, "v": 0.1}\n')
    msgs = []
    check = lambda r: None if 0 <= r.get("v", -1) <= 1 else f"field v: {r.get('v')!r} is not in [0, 1]"  # noqa: E731
    assert [r["i"] for r in read_jsonl(p, check, msgs.append)] == [1, 5]
    assert any(f"{p}: line 2: record: not a JSON object" in m for m in msgs)
    assert any("line 3: field v: 42 is not in [0, 1]" in m for m in msgs)
    assert any("line 4: not a JSON record" in m for m in msgs)


def test_a_second_driver_on_one_run_folder_is_refused(tmp_path):
    from suite.io import RunFolderBusy, run_lock

    with run_lock(tmp_path / "out"):
        with pytest.raises(RunFolderBusy, match="another run is using this folder"):
            with run_lock(tmp_path / "out"):
                pass
    with run_lock(tmp_path / "out"):  # released when the first run ends
        pass


def test_a_run_never_writes_into_a_folder_it_does_not_own(tmp_path):
    from suite.io import claim_run_dir

    mine = claim_run_dir(tmp_path / "new")
    assert (mine / ".suite-run").is_file() and claim_run_dir(mine) == mine  # its own: reused
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": true}')
    with pytest.raises(DataError, match="holds files this suite did not write \\(e.g. 'config.json'\\)"):
        claim_run_dir(foreign)
    assert (foreign / "config.json").read_text() == '{"mine": true}' and not (foreign / ".suite-run").exists()
    own_bad = claim_run_dir(tmp_path / "bad")
    (own_bad / "summary.json").write_text("[1, 2]")  # would crash the run only at its end
    with pytest.raises(DataError, match="not a JSON object"):
        claim_run_dir(own_bad)


def test_atomic_writes_replace_a_symlink_itself_and_keep_the_users_modes(tmp_path):
    import os
    import stat

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_json(link, {"a": 1})
    assert target.read_text() == "keep me" and not link.is_symlink() and read_json(link) == {"a": 1}
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        atomic_write_json(fresh, {})
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # what the umask gives, not mkstemp's 0600
        readme = tmp_path / "README.md"
        readme.write_text("x")
        readme.chmod(0o664)
        atomic_write_json(readme, {})
        assert stat.S_IMODE(readme.stat().st_mode) == 0o664  # the replaced file's mode
    finally:
        os.umask(old)
