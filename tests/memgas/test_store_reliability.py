"""Reliability round 2 for the memory store: ownership of folders, several processes on one store,
validation when data enters, sealed manifests whose paths stay inside the folder."""

import datetime
import json
import multiprocessing as mp
import shutil

import pytest

from memgas.association import AssociationConfig
from memgas.store import MemGASConfig, MemoryStore, StoreError
from suite.encoders import HashingEncoder
from suite.io import DataError, seal


def _cfg():
    return MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1, mem_threshold=10))


def _store(dim=512):
    return MemoryStore(_cfg(), encoder=HashingEncoder(dim))


def _saved(tmp_path, users=("ann", "bob")):
    st = _store()
    for u in users:
        st.add(f"{u} went hiking in the alps", u)
        st.add(f"{u} cooked pasta for friends", u)
    return st, st.save(tmp_path / "mem")


# ------------------------------------------------------------------ writes never touch what isn't theirs
@pytest.mark.parametrize("content", ["file", "subfolder"])
def test_save_refuses_a_folder_that_is_not_a_store(tmp_path, content):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious") if content == "file" else (d / "photos").mkdir()
    with pytest.raises(DataError, match="is not a memory store"):
        _store().save(d)
    assert sorted(p.name for p in d.iterdir()) == (["thesis.tex"] if content == "file" else ["photos"])


def test_save_over_its_own_store_and_into_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _store().save(tmp_path / "empty")
    st, path = _saved(tmp_path)
    st.add("one more", "ann")
    st.save(path)  # its own kind: replaced
    assert len(MemoryStore.load(path, encoder=HashingEncoder()).users["ann"].sessions) == 3


def test_a_reader_deletes_nothing(tmp_path):
    _, path = _saved(tmp_path)
    backup = tmp_path / ".mem.old"
    shutil.copytree(path, backup)  # what an interrupted fallback swap leaves
    (tmp_path / "notes.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    MemoryStore.load(path, encoder=HashingEncoder())
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # (the lock file existed already)
    # with the store itself missing, a reader reads the old copy and still moves nothing
    shutil.rmtree(path)
    assert set(MemoryStore.load(path, encoder=HashingEncoder()).users) == {"ann", "bob"}
    assert backup.exists() and not path.exists()


# ------------------------------------------------------------------ several processes
def _writer(path, worker, n):
    for i in range(n):
        with MemoryStore.transaction(path, _cfg(), encoder=HashingEncoder()) as st:
            st.add(
                f"worker {worker} note {i} about topic {i * 7 % 5}", f"user{worker % 2}", session_id=f"w{worker}-{i}"
            )


def _reader(path, n, q):
    errors = 0
    for _ in range(n):
        try:
            MemoryStore.load(path, encoder=HashingEncoder())
        except Exception:  # noqa: BLE001 - counted, reported by the test
            errors += 1
    q.put(errors)


def test_processes_sharing_a_store_lose_no_add_and_readers_see_no_error(tmp_path):
    path = tmp_path / "mem"
    _store().save(path)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(path, w, 10)) for w in range(3)]
    readers = [ctx.Process(target=_reader, args=(path, 40, q)) for _ in range(2)]
    for p in writers + readers:
        p.start()
    for p in writers + readers:
        p.join(120)
        assert p.exitcode == 0
    assert [q.get(timeout=5) for _ in readers] == [0, 0]
    st = MemoryStore.load(path, encoder=HashingEncoder())
    ids = {s["session_id"] for m in st.users.values() for s in m.sessions}
    assert ids == {f"w{w}-{i}" for w in range(3) for i in range(10)}  # 30 of 30 kept


# ------------------------------------------------------------------ validation at the boundary
@pytest.mark.parametrize(
    "kw,field",
    [
        ({"user_id": "bad\udce9"}, "user_id"),
        ({"user_id": "ann", "session_id": "s\ud800x"}, "session_id"),
        ({"user_id": "ann", "date": datetime.date(2024, 5, 1)}, "date"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": ["ann"]}, "user_id"),
    ],
)
def test_bad_ids_and_dates_are_refused_when_they_enter(tmp_path, kw, field):
    st = _store()
    st.add("a good first session", "ann")
    with pytest.raises(DataError, match=f"field '{field}'"):
        st.add("hello", **kw)
    with pytest.raises(DataError, match="content"):
        st.add([{"role": "user", "content": "caf\udce9"}], "ann")
    st.save(tmp_path / "mem")  # nothing half-entered: the store still saves
    assert len(MemoryStore.load(tmp_path / "mem", encoder=HashingEncoder()).users["ann"].sessions) == 1


def test_a_failed_add_leaves_nothing_behind_and_can_be_retried(monkeypatch):
    import memgas.memory as store_mod  # where Memory.add calls the association

    st = _store()
    st.add("first session about dogs", "ann")
    st.add("second session about cats", "ann")
    before = {k: len(getattr(st.users["ann"], k)) for k in ("sessions", "rows", "node_gran", "node_sess_list", "edges")}
    real = store_mod.associate_candidates

    def boom(*a, **k):
        raise RuntimeError("GMM failed")

    monkeypatch.setattr(store_mod, "associate_candidates", boom)
    with pytest.raises(RuntimeError):
        st.add("third session about birds", "ann", session_id="third")
    assert {k: len(getattr(st.users["ann"], k)) for k in before} == before
    monkeypatch.setattr(store_mod, "associate_candidates", real)
    assert st.add("third session about birds", "ann", session_id="third") == "third"  # the retry is accepted


def test_generated_session_ids_are_unique_across_users_and_never_take_a_chosen_one():
    """Mutation caught: generating ids per user (f"s{n}") gives ann and bob the same id."""
    st = _store()
    st.add("chosen", "ann", session_id="s2")
    ids = [st.add(f"generated {i}", u) for i in range(3) for u in ("ann", "bob")]
    assert len(set(ids)) == len(ids) and "s2" not in ids
    assert [s["session_id"] for s in st.users["ann"].sessions] == ["s2", *ids[0::2]]


def test_an_encoder_of_another_dimension_is_refused_at_open(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(StoreError, match="512-dimensional"):
        MemoryStore.load(path, encoder=HashingEncoder(256))


# ------------------------------------------------------------------ sealed manifests
def _edit_manifest(path, fn, reseal):
    mp = path / "manifest.json"
    man = json.loads(mp.read_text())
    fn(man)
    mp.write_text(json.dumps(seal(man) if reseal else man))


@pytest.mark.parametrize(
    "edit,reseal,match",
    [
        (lambda m: m["users"].pop("bob"), False, "mismatch"),  # a dropped user
        (lambda m: m["users"]["ann"].update(sha256={}), False, "mismatch"),  # checksums emptied
        (lambda m: m.pop("manifest_sha256"), False, "not sealed"),
        # even re-sealed by hand, the structure is checked
        (lambda m: m["users"].pop("bob"), True, "declares"),
        (lambda m: m["users"]["ann"].update(sha256={}), True, "exactly its two files"),
        (lambda m: m["users"]["ann"].update(meta="../elsewhere/user0.json"), True, "leaves the folder"),
        (lambda m: m["users"]["ann"].update(emb="/etc/passwd"), True, "leaves the folder"),
    ],
)
def test_tampered_manifests_are_errors(tmp_path, edit, reseal, match):
    _, path = _saved(tmp_path)
    _edit_manifest(path, edit, reseal)
    with pytest.raises(StoreError, match=match):
        MemoryStore.load(path, encoder=HashingEncoder())


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    outside = tmp_path / "outside.json"
    shutil.copy(path / "user0.json", outside)
    (path / "link.json").symlink_to(outside)
    _edit_manifest(path, lambda m: m["users"]["ann"].update(meta="link.json"), True)
    with pytest.raises(StoreError, match="outside the folder"):
        MemoryStore.load(path, encoder=HashingEncoder())
