"""Forgetting (memgas.forget, MemoryStore.delete): no byte of a deleted session in any file of the
store once `delete` returns, no text in the caches, and (exact path) a graph and rankings equal to
those of a store that never saw it."""

import sqlite3

import numpy as np
import pytest

from memgas.association import AssociationConfig
from memgas.forget import unit_texts
from memgas.store import ForgettingPending, MemGASConfig, MemoryStore
from suite.encoders import HashingEncoder

MARK = "quetzal-marker-7731"
WORDS = (
    "alps bread bank dog vet hike oven loan walk cake rope snow rent yeast leash trail salary crust fetch "
    "summit flour mortgage kennel glacier dough budget puppy ridge starter interest collar"
).split()


def _cfg(start=1, k=10):
    return MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=start, mem_threshold=k))


def _files(path):
    return {f.name: f.read_bytes() for f in path.parent.iterdir() if f.name.startswith(path.name)}


def _secret_vectors(st, user, sid):
    """Bytes of the session's node vectors that no other node shares (a vector is its own trace)."""
    mem = st.users[user]
    i = mem._sids[sid]
    others = {mem.rows[j].tobytes() for j, s in enumerate(mem.node_sess_list) if s != i}
    mine = [mem.rows[j].tobytes() for j, s in enumerate(mem.node_sess_list) if s == i]
    return [v for v in mine if v not in others]


def _texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 6, replace=True)) + f" day {i}" for i in range(n)]


@pytest.mark.parametrize("checkpoint_first", [False, True], ids=["still-in-wal", "already-in-main-file"])
def test_a_deleted_session_leaves_no_byte_in_any_file(tmp_path, checkpoint_first):
    """Text and vectors of a deleted session are in no file of the store (main, -wal, -shm) when
    `delete` returns, whether the add was still in the WAL or already checkpointed into the main
    file, and in neither cache of the process. Mutations caught: dropping the truncating checkpoint
    after the delete (`_purge` without `forget`): the text stays in the WAL (still-in-wal) or in the
    main file (already-in-main-file); dropping `encoder.forget` or `units.forget` from `_purge`."""
    p = tmp_path / "mem.sqlite"
    st = MemoryStore.open(p, _cfg(), encoder=HashingEncoder())
    for i, t in enumerate(_texts(6)):
        st.add(t, "ann", session_id=f"s{i}")
    st.add(f"my locker code is {MARK} and my cat is called Pistachio", "ann", session_id="secret")
    vecs = _secret_vectors(st, "ann", "secret")
    texts = [t for t in unit_texts(st.users["ann"].sessions[-1]) if MARK in t]
    assert vecs and texts and all(st.encoder.key(t) in st.encoder._cache for t in texts)
    assert any(MARK.encode() in b for b in _files(p).values())
    if checkpoint_first:
        st._db.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert MARK.encode() in p.read_bytes()
    assert st.delete("secret", "ann")
    files = _files(p)
    assert files and not any(MARK.encode() in b or b"Pistachio" in b for b in files.values()), list(files)
    assert not any(v in b for v in vecs for b in files.values())
    assert st.history("ann")[-1] == {
        "event": "delete",
        "session_id": "secret",
        "at": st.history("ann")[-1]["at"],
        "exact": True,
        "reassociated": st.history("ann")[-1]["reassociated"],
        "reassociated_nodes": st.history("ann")[-1]["reassociated_nodes"],
    }
    # the process's caches let go of it too
    assert not any(MARK in u.session for u in st.units._memo.values())
    assert not any(st.encoder.key(t) in st.encoder._cache for t in texts)


def test_delete_all_leaves_no_byte_either(tmp_path):
    """Mutation caught: `delete_all` without the purge (its rows stay in the WAL)."""
    p = tmp_path / "mem.sqlite"
    st = MemoryStore.open(p, _cfg(), encoder=HashingEncoder())
    for i, t in enumerate(_texts(4)):
        st.add(f"{t} {MARK}", "bob", session_id=f"b{i}")
    st.add("someone else's note", "ann")
    assert st.delete_all("bob") == 4
    assert not any(MARK.encode() in b for b in _files(p).values())
    assert st.get_all("bob") == [] and len(st.get_all("ann")) == 1


def test_a_reader_holding_a_snapshot_makes_delete_raise_then_compact_finishes(tmp_path):
    """While another connection holds a read snapshot the checkpoint cannot run: delete raises
    ForgettingPending (the session is gone from searches, its bytes are not yet) instead of returning
    as if done; compact() once the reader has finished purges it and says what it did.
    Mutation caught: ignoring the checkpoint's busy result in `Database.forget` (delete returns
    normally while the marker is still in the WAL)."""
    p = tmp_path / "mem.sqlite"
    st = MemoryStore.open(p, _cfg(), encoder=HashingEncoder())
    st.forget_timeout_s = 0.2
    for i, t in enumerate(_texts(4)):
        st.add(t, "ann", session_id=f"s{i}")
    st.add(f"the safe combination is {MARK}", "ann", session_id="secret")
    reader = sqlite3.connect(p, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM sessions").fetchone()  # the snapshot is now held
    with pytest.raises(ForgettingPending, match="compact"):
        st.delete("secret", "ann")
    assert st.get("secret", "ann") is None
    assert any(MARK.encode() in b for b in _files(p).values())  # honestly pending
    with pytest.raises(Exception, match="blocked"):
        st.compact(timeout_s=0.2)
    reader.execute("COMMIT")
    reader.close()
    done = st.compact()
    assert done["vacuumed"] and done["bytes_after"] <= done["bytes_before"]
    assert not any(MARK.encode() in b for b in _files(p).values())


def _graph(st, user="u"):
    """Edges as (session id, granularity, index within session) pairs, in stored order."""
    mem = st.users[user]
    first = {}
    name = []
    for j, s in enumerate(mem.node_sess_list):
        first.setdefault(s, j)
        name.append((mem.sessions[s]["session_id"], mem.node_gran[j], j - first[s]))
    return [(name[a], name[b]) for a, b in mem.edges]


def _rankings(st, queries, user="u"):
    return [[(r["session_id"], round(r["score"], 6)) for r in st.search(q, user, 10)["results"]] for q in queries]


@pytest.mark.parametrize("durable", [False, True], ids=["in-memory", "sqlite-reopened"])
def test_exact_delete_leaves_the_graph_and_rankings_of_a_store_that_never_saw_it(tmp_path, durable):
    """50 sessions with X at position 10; after delete(X) the association graph (every edge, in
    order) and the top-10 rankings equal those of a store built without X — also when the SQLite
    store is reopened from its file. The cheap path (exact=False) is shown to leave a trace, so the
    comparison can fail. Mutation caught: skipping the re-association in `memgas.forget`
    (`_reassociate_after` returning []), or not persisting it (`rewrite_association` a no-op:
    the reopened store differs); association scores from a float32 product (on this machine's CPU
    a re-associated subset of a session then scores an ulp apart, seen failing)."""
    texts = _texts(50, seed=3)
    x = "a long story about the glacier trail summit ridge snow alps hike walk"

    def build(with_x, path=None):
        st = (
            MemoryStore.open(path, _cfg(start=2), encoder=HashingEncoder())
            if path
            else MemoryStore(_cfg(start=2), encoder=HashingEncoder())
        )
        for i, t in enumerate(texts):
            if with_x and i == 10:
                st.add(x, "u", session_id="X")
            st.add(t, "u", session_id=f"s{i}")
        return st

    queries = ["glacier summit hike", "bread flour oven", "loan mortgage bank", "dog leash walk"]
    never = build(False)
    cheap = build(True)
    cheap.delete("X", "u", exact=False)
    assert _graph(cheap) != _graph(never)  # a trace the exact path must remove
    assert cheap.history("u")[-1]["exact"] is False
    st = build(True, tmp_path / "mem.sqlite" if durable else None)
    assert st.delete("X", "u")
    assert st.history("u")[-1]["exact"] is True and st.history("u")[-1]["reassociated"] > 0
    if durable:
        st.close()
        st = MemoryStore.open(tmp_path / "mem.sqlite", encoder=HashingEncoder())
    assert _graph(st) == _graph(never)
    assert _rankings(st, queries) == _rankings(never, queries)
    # and the memory keeps growing like the other one
    st.add("fresh note about the kennel and the puppy", "u", session_id="new")
    never.add("fresh note about the kennel and the puppy", "u", session_id="new")
    assert _graph(st) == _graph(never)


def test_deleting_below_start_session_unassociates_the_session_that_moves_down():
    """With association from the 3rd session, deleting the 1st moves the 3rd down to 2nd place: a
    store that never saw the 1st never associated it. Mutation caught: leaving its edges."""
    texts = _texts(8, seed=5)
    a = MemoryStore(_cfg(start=2), encoder=HashingEncoder())
    b = MemoryStore(_cfg(start=2), encoder=HashingEncoder())
    for i, t in enumerate(texts):
        a.add(t, "u", session_id=f"s{i}")
        if i:
            b.add(t, "u", session_id=f"s{i}")
    a.delete("s0", "u")
    assert _graph(a) == _graph(b)
