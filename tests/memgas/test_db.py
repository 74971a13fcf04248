"""The durable SQLite store (memgas.db through MemoryStore.open): incremental commits, several
processes through the plain API, crash safety, a delete that forgets, scoping, migration."""

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import numpy as np
import pytest

from memgas.association import AssociationConfig
from memgas.store import MemGASConfig, MemoryStore, StoreError
from memgas.tools import main as db_main
from suite.encoders import HashingEncoder


def _cfg():
    return MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1, mem_threshold=10))


def _open(path, **kw):
    return MemoryStore.open(path, _cfg(), encoder=HashingEncoder(), **kw)


TOPICS = ["hiking in the alps", "baking sourdough bread", "a job interview at a bank", "the dog's vet visit"]


def _fill(st, user="ann", n=12):
    for i in range(n):
        st.add(f"{TOPICS[i % 4]} on day {i}; later we talked about {TOPICS[(i * 3) % 4]}", user, session_id=f"s{i}")


def _ranking(st, q, user="ann"):
    return [(r["session_id"], round(r["score"], 6)) for r in st.search(q, user, limit=12)["results"]]


def test_reopen_gives_identical_rankings_and_each_add_writes_only_its_rows(tmp_path):
    p = tmp_path / "mem.sqlite"
    st = _open(p)
    _fill(st)
    mem = st.users["ann"]
    assert mem.edges
    before = {q: _ranking(st, q) for q in ("bread", "vet for the dog", "interview")}
    st.close()
    again = _open(p)
    assert {q: _ranking(again, q) for q in before} == before
    back = again.users["ann"]
    assert back.edges == mem.edges and back.node_keys == mem.node_keys
    np.testing.assert_array_equal(back.rows, mem.rows)
    with sqlite3.connect(p) as con:  # one add = one session row, its nodes, its edges, one event
        n_nodes = con.execute("SELECT COUNT(*) FROM nodes WHERE session_id = 's3'").fetchone()[0]
        assert n_nodes == int((back.node_sess == 3).sum())
        assert con.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 12


def _writer(path, w, n):
    st = MemoryStore.open(path, encoder=HashingEncoder())
    for i in range(n):
        st.add(f"writer {w} note {i}: {TOPICS[i % 4]}", "shared", session_id=f"w{w}-{i}")
    st.close()


def _reader(path, stop, errors):
    st = MemoryStore.open(path, encoder=HashingEncoder(), verify=False)
    while not stop.is_set():
        try:
            st.search("bread", "shared", limit=3)
            MemoryStore.open(path, encoder=HashingEncoder(), verify=False).close()
        except Exception as e:  # noqa: BLE001 - any error is what the test counts
            errors.put(repr(e))


def test_plain_api_writers_in_two_processes_lose_nothing_and_a_reader_never_errors(tmp_path):
    p = tmp_path / "mem.sqlite"
    _open(p).close()
    ctx = mp.get_context("spawn")
    stop, errors = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(p, stop, errors))
    reader.start()
    ws = [ctx.Process(target=_writer, args=(p, w, 15)) for w in range(2)]
    for w in ws:
        w.start()
    for w in ws:
        w.join(120)
        assert w.exitcode == 0
    stop.set()
    reader.join(60)
    assert errors.empty()
    st = _open(p)
    assert sorted(s["session_id"] for s in st.get_all("shared")) == sorted(
        f"w{w}-{i}" for w in range(2) for i in range(15)
    )
    mem = st.users["shared"]
    assert len(mem.rows) == len(mem.node_gran) and all(0 <= a < len(mem.rows) for a, _ in mem.edges)


def test_an_open_store_follows_another_writers_commits(tmp_path):
    p = tmp_path / "mem.sqlite"
    a, b = _open(p), _open(p)
    _fill(a, n=6)
    assert [r["session_id"] for r in b.get_all("ann")] == [f"s{i}" for i in range(6)]
    b.add("a new note about bread", "ann", session_id="from-b")
    assert a.get("from-b", "ann") is not None
    b.delete("s2", "ann")
    assert a.get("s2", "ann") is None and "s2" not in {r["session_id"] for r in a.search("bread", "ann", 10)["results"]}
    assert a.users["ann"].edges == b.users["ann"].edges


def _kill_target(path):
    st = MemoryStore.open(path, encoder=HashingEncoder(), verify=False)
    i = 0
    while True:
        st.add(f"note {i} about {TOPICS[i % 4]} " * 20, "ann", session_id=f"k{i}")
        i += 1


def test_a_kill_during_commits_leaves_a_consistent_store(tmp_path):
    p = tmp_path / "mem.sqlite"
    _open(p).close()
    ctx = mp.get_context("spawn")
    for want, delay in ((3, 0.013), (8, 0.029)):
        proc = ctx.Process(target=_kill_target, args=(p,))
        proc.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # killed once it is committing (start-up time varies with load)
            with sqlite3.connect(p, timeout=60) as con:
                if con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] >= want:
                    break
            time.sleep(0.05)
        time.sleep(delay)  # at some point inside the stream of commits
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        st = _open(p)  # quick_check passes; every committed session has its nodes, edges only between them
        with sqlite3.connect(p) as con:
            n_sess = con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            assert con.execute("SELECT COUNT(DISTINCT session_id) FROM nodes").fetchone()[0] == n_sess
            assert con.execute("SELECT COUNT(*) FROM history WHERE event = 'add'").fetchone()[0] == n_sess
        assert len(st.get_all("ann")) == n_sess
        st.close()
    assert n_sess > 0


def test_delete_forgets_everywhere_shrinks_the_file_and_history_shows_it(tmp_path):
    p = tmp_path / "mem.sqlite"
    st = _open(p)
    _fill(st, n=8)
    secret = "my secret passphrase is tangerine-zebra " * 200
    st.add(secret, "ann", session_id="secret")
    mem = st.users["ann"]
    keys = [k for k, s in zip(mem.node_keys, mem.node_sess_list) if s == mem._sids["secret"]]
    assert st.search("tangerine zebra passphrase", "ann", 1)["results"][0]["session_id"] == "secret"
    size_before = st.disk_bytes()
    assert st.delete("secret", "ann")
    assert "secret" not in {r["session_id"] for r in st.search("tangerine zebra passphrase", "ann", 20)["results"]}
    assert all(k not in st.users["ann"]._key_pos for k in keys)
    ks = ",".join(map(str, keys))
    with sqlite3.connect(p) as con:
        assert con.execute("SELECT COUNT(*) FROM nodes WHERE session_id = 'secret'").fetchone()[0] == 0
        assert con.execute(f"SELECT COUNT(*) FROM edges WHERE a IN ({ks}) OR b IN ({ks})").fetchone()[0] == 0
    st.compact()
    assert st.disk_bytes() < size_before
    raw = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.name.startswith("mem.sqlite"))
    assert b"tangerine" not in raw  # not in the file, the WAL or free pages
    assert [e["event"] for e in st.history("ann")][-2:] == ["add", "delete"]
    st.close()
    again = _open(p)
    assert again.get("secret", "ann") is None and len(again.get_all("ann")) == 8


def test_one_users_search_never_returns_another_users_session(tmp_path):
    st = _open(tmp_path / "mem.sqlite")
    _fill(st, "ann", 6)
    st.add("bob's private note about sourdough bread", "bob", session_id="bob-1")
    for q in ("sourdough bread", "private note"):
        assert all(r["session_id"].startswith("s") for r in st.search(q, "ann", 10)["results"])
        assert [r["session_id"] for r in st.search(q, "bob", 10)["results"]] == ["bob-1"]
    assert st.delete_all("bob") == 1 and st.get_all("bob") == []
    assert st.history("bob")[-1]["event"] == "delete_all"


def test_update_and_metadata_filters_persist(tmp_path):
    p = tmp_path / "mem.sqlite"
    st = _open(p)
    _fill(st, n=4)
    st.add("trip planning for kyoto", "ann", session_id="trip", agent_id="travel", metadata={"topic": "trip"})
    assert st.update("trip", "ann", metadata={"done": True})
    assert st.update("s1", "ann", messages=[{"role": "user", "content": "now about kyoto temples"}])
    st.close()
    st = _open(p)
    assert st.get("trip", "ann")["metadata"] == {"topic": "trip", "agent_id": "travel", "done": True}
    assert [r["session_id"] for r in st.search("kyoto", "ann", 5, agent_id="travel")["results"]] == ["trip"]
    assert "temples" in st.get("s1", "ann")["text"]
    assert [e["event"] for e in st.history("ann")][-2:] == ["update", "update"]


def test_folder_stores_migrate_with_identical_rankings(tmp_path):
    old = MemoryStore(_cfg(), encoder=HashingEncoder())
    _fill(old, n=10)
    old.delete("s4", "ann")
    old.save(tmp_path / "folder")
    with pytest.raises(StoreError, match="python -m memgas.tools migrate"):
        _open(tmp_path / "folder")
    assert db_main(["migrate", str(tmp_path / "folder"), str(tmp_path / "new.sqlite")]) == 0
    new = _open(tmp_path / "new.sqlite")
    for q in ("bread", "alps hiking", "interview"):
        assert _ranking(new, q) == _ranking(old, q)
    assert [e["event"] for e in new.history("ann")][-2:] == ["delete", "migrate"]
    assert db_main(["migrate", str(tmp_path / "folder"), str(tmp_path / "new.sqlite")]) == 2  # never overwrites


def test_a_config_mismatch_or_a_damaged_file_is_a_clear_error(tmp_path):
    p = tmp_path / "mem.sqlite"
    _open(p).close()
    other = MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=3))
    with pytest.raises(StoreError, match="another configuration.*association"):
        MemoryStore.open(p, other, encoder=HashingEncoder())
    with pytest.raises(StoreError, match="encoder"):
        MemoryStore.open(p, encoder=HashingEncoder(256))
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="bad.sqlite"):
        MemoryStore.open(bad, encoder=HashingEncoder())
    with sqlite3.connect(p) as con:  # a vector of the wrong length names table, record and field
        con.execute("INSERT INTO sessions VALUES ('ann', 'x', 0, '', '{}', ?)", ('{"session": ["t"]}',))
        con.execute(
            "INSERT INTO nodes (user_id, key, session_id, gran, vec) VALUES ('ann', 0, 'x', 'session', ?)",
            (b"\0" * 12,),
        )
        con.execute("INSERT INTO history (user_id, event, session_id, at) VALUES ('ann', 'add', 'x', '')")
    st = MemoryStore.open(p, encoder=HashingEncoder())  # opening reads no user: the user's first use does
    with pytest.raises(StoreError, match="table nodes, user 'ann' key 0.*'vec'"):
        st.get_all("ann")


def test_a_failed_commit_leaves_memory_and_database_agreeing(tmp_path, monkeypatch):
    p = tmp_path / "mem.sqlite"
    st = _open(p)
    _fill(st, n=5)
    before = (list(st.users["ann"].edges), len(st.users["ann"].rows))

    def boom(*a, **k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(st._db, "insert_session", boom)
    with pytest.raises(sqlite3.OperationalError):
        st.add("a session that never commits", "ann", session_id="lost")
    monkeypatch.undo()
    assert st.get("lost", "ann") is None  # the in-memory graph was re-read from the rolled-back database
    assert (list(st.users["ann"].edges), len(st.users["ann"].rows)) == before
    with pytest.raises(ValueError, match="already in this memory"):  # an error before any change
        st.add("again", "ann", session_id="s1")
    assert st.add("a session that commits", "ann", session_id="kept") == "kept"
    assert [s["session_id"] for s in _open(p).get_all("ann")][-1] == "kept"


def test_the_command_line_tools_report_compact_and_refuse_missing_files(tmp_path, capsys):
    import json

    p = tmp_path / "mem.sqlite"
    st = _open(p)
    _fill(st, n=6)
    st.delete("s2", "ann")
    st.close()
    assert db_main(["info", str(p)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "memgas-sqlite/1" and info["users"] == 1 and info["sessions"] == 5
    assert db_main(["compact", str(p)]) == 0
    before, after = (
        int(x.replace(",", "")) for x in capsys.readouterr().out.split(": ")[1].split(" bytes")[0].split(" -> ")
    )
    assert after <= before
    missing = tmp_path / "nope.sqlite"
    assert db_main(["info", str(missing)]) == 2 and not missing.exists()  # never creates a store
    assert "no such store file" in capsys.readouterr().err
