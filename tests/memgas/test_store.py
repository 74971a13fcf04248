import numpy as np
import pytest

from memgas.association import AssociationConfig
from memgas.data import load_locomo
from memgas.store import MemGASConfig, MemoryStore, StoreError
from suite.encoders import HashingEncoder
from tests.conftest import make_locomo


def _store():
    cfg = MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1, mem_threshold=10))
    return MemoryStore(cfg, encoder=HashingEncoder())


def test_mem0_style_add_search_and_incremental_graph(tmp_path):
    conv = load_locomo(make_locomo(tmp_path / "l.json"))[0]
    st = _store()
    for s in conv.sessions[:5]:
        st.add(s, "ann")
    mem = st.users["ann"]
    edges_before, rows_before = list(mem.edges), len(mem.rows)
    sid = st.add([{"role": "user", "content": "I adopted a puppy dog from the shelter"}], user_id="ann")
    assert mem.edges[: len(edges_before)] == edges_before  # old edges untouched: incremental
    assert all(a >= rows_before for a, _ in mem.edges[len(edges_before) :])  # new edges start at new nodes
    out = st.search("puppy shelter dog", user_id="ann", limit=2)
    assert out["results"][0]["session_id"] in (sid, "session_3") and set(out["router_weights"]) >= {"session"}
    assert st.search("anything", user_id="nobody") == {"results": [], "router_weights": {}}
    with pytest.raises(ValueError, match="already in this memory"):
        st.add(conv.sessions[0], "ann")
    with pytest.raises(Exception, match="content"):
        st.add([{"role": "user"}], "ann")


def test_round_trip_gives_identical_results_and_detects_corruption(tmp_path):
    conv = load_locomo(make_locomo(tmp_path / "l.json"))[0]
    st = _store()
    for s in conv.sessions:
        st.add(s, "ann")
    st.add("a second user's note about guitars", "bob")
    st.save(tmp_path / "mem")
    back = MemoryStore.load(tmp_path / "mem", encoder=HashingEncoder())
    for q in ["hiking trail", "guitar band", "pasta"]:
        a, b = st.search(q, "ann", 5), back.search(q, "ann", 5)
        assert [r["session_id"] for r in a["results"]] == [r["session_id"] for r in b["results"]]
        np.testing.assert_allclose([r["score"] for r in a["results"]], [r["score"] for r in b["results"]])
    assert back.users["ann"].edges == st.users["ann"].edges
    f = tmp_path / "mem" / "user0.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="user0.safetensors: missing or checksum mismatch"):
        MemoryStore.load(tmp_path / "mem", encoder=HashingEncoder())


def test_concurrent_adds_and_searches_lose_nothing():
    """Writers and readers on one store from several threads: no error, every session found."""
    import threading

    st = _store()
    errors, ids = [], {f"w{w}": [] for w in range(3)}

    def writer(w):
        for i in range(8):
            try:
                ids[f"w{w}"].append(
                    st.add(f"writer {w} talks about topic {i} and guitars", f"user{w % 2}", f"w{w}-s{i}")
                )
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    def reader():
        for _ in range(15):
            try:
                st.search("guitars topic", "user0", 3)
                st.search("guitars topic", "user1", 3)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for u, ws in (("user0", ["w0", "w2"]), ("user1", ["w1"])):
        want = sorted(s for w in ws for s in ids[w])
        got = sorted(r["session_id"] for r in st.search("x", u, limit=len(want))["results"])
        assert got == want


def test_a_save_over_a_newer_store_is_refused_never_a_silent_overwrite(tmp_path):
    """Two writers through the plain API (load → add → save): the second save would drop the first
    writer's add; it is refused with a clear error, and after a reload both adds are kept."""
    from memgas.store import MemGASConfig, MemoryStore, StoreError
    from suite.encoders import load_encoder

    enc = load_encoder("hashing")
    p = tmp_path / "mem"
    MemoryStore(MemGASConfig(encoder="hashing"), encoder=enc).save(p)
    a, b = MemoryStore.load(p, encoder=enc), MemoryStore.load(p, encoder=enc)
    a.add("we went hiking in the alps", user_id="u", session_id="s-a")
    a.save(p)
    a.add("a second session from the same writer", user_id="u", session_id="s-a2")
    a.save(p)  # the same writer saves again: its own generation, accepted
    b.add("i adopted a cat named miso", user_id="u", session_id="s-b")
    with pytest.raises(StoreError, match="changed since it was loaded"):
        b.save(p)
    b = MemoryStore.load(p, encoder=enc)
    b.add("i adopted a cat named miso", user_id="u", session_id="s-b")
    b.save(p)
    kept = [s["session_id"] for s in MemoryStore.load(p, encoder=enc).users["u"].sessions]
    assert kept == ["s-a", "s-a2", "s-b"]


def test_delete_forgets_everywhere_and_history_shows_it(tmp_path):
    """`delete` removes the session from every later search, from get / get_all, from the nodes,
    embeddings and association edges, and from the saved files (which shrink); `history` keeps the
    events; other users' memories are untouched (scoping)."""
    import numpy as np

    from memgas.association import AssociationConfig
    from memgas.store import MemGASConfig, MemoryStore
    from suite.encoders import load_encoder

    enc = load_encoder("hashing")
    cfg = MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1, mem_threshold=10))
    st = MemoryStore(cfg, encoder=enc)
    texts = {
        "hike": "we went hiking in the alps and saw a glacier",
        "cat": "i adopted a cat named miso, she loves tuna",
        "job": "i started a new job as a nurse at the city hospital",
        "trip": "next month we fly to lisbon for a week of surfing",
    }
    for sid, t in texts.items():
        st.add(t, user_id="alice", session_id=sid)
    st.add("bob also has a cat named miso", user_id="bob", session_id="cat")
    assert st.search("my cat miso", "alice", 1)["results"][0]["session_id"] == "cat"
    mem = st.users["alice"]
    assert any(mem.node_sess_list[a] == 1 or mem.node_sess_list[b] == 1 for a, b in mem.edges)  # cat is linked
    st.save(tmp_path / "before")
    assert st.delete("cat", "alice") and not st.delete("cat", "alice")
    assert st.get("cat", "alice") is None and [s["session_id"] for s in st.get_all("alice")] == ["hike", "job", "trip"]
    for q in ("my cat miso", "tuna", "adopted a cat"):
        assert "cat" not in [r["session_id"] for r in st.search(q, "alice", 10)["results"]]
    n = len(mem.rows)
    assert len(mem.node_gran) == len(mem.node_sess_list) == n and sorted(set(mem.node_sess_list)) == [0, 1, 2]
    assert all(0 <= a < n and 0 <= b < n for a, b in mem.edges)
    assert st.get("cat", "bob") is not None  # another user's session of the same id is untouched
    assert [(e["event"], e["session_id"]) for e in st.history("alice")][-2:] == [("add", "trip"), ("delete", "cat")]
    st.save(tmp_path / "after")
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    assert size(tmp_path / "after") < size(tmp_path / "before")
    again = MemoryStore.load(tmp_path / "after", encoder=enc)
    assert "cat" not in [r["session_id"] for r in again.search("my cat miso", "alice", 10)["results"]]
    assert again.history("alice") == st.history("alice")
    assert again.delete_all("alice") == 3 and again.get_all("alice") == [] and again.get_all("bob")
    np.testing.assert_array_equal(again.users["bob"].matrix(), st.users["bob"].matrix())


def test_scopes_metadata_filters_and_update(tmp_path):
    from memgas.association import AssociationConfig
    from memgas.store import MemGASConfig, MemoryStore
    from suite.encoders import load_encoder
    from suite.io import DataError

    enc = load_encoder("hashing")
    st = MemoryStore(MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1)), encoder=enc)
    st.add("planning the trip to lisbon", user_id="u", session_id="a1", agent_id="travel", metadata={"topic": "trip"})
    st.add("booked flights to lisbon in may", user_id="u", session_id="a2", agent_id="travel", run_id="r1")
    st.add("my lisbon notes for the health app", user_id="u", session_id="h1", agent_id="health")
    hits = lambda **kw: [r["session_id"] for r in st.search("lisbon", "u", 10, **kw)["results"]]  # noqa: E731
    assert set(hits()) == {"a1", "a2", "h1"}
    assert set(hits(agent_id="travel")) == {"a1", "a2"} and hits(agent_id="travel", run_id="r1") == ["a2"]
    assert hits(filters={"topic": "trip"}) == ["a1"] and hits(agent_id="nobody") == []
    assert [s["session_id"] for s in st.get_all("u", agent_id="health")] == ["h1"]
    with pytest.raises(DataError):
        st.add("x", user_id="u", metadata={"bad": [1, 2]})
    assert st.update("a1", "u", metadata={"topic": "flights"}) and hits(filters={"topic": "flights"}) == ["a1"]
    assert st.update("h1", "u", messages="blood test results came back normal")
    new = st.get("h1", "u")
    assert "blood test" in new["text"] and "lisbon" not in new["text"] and new["metadata"] == {"agent_id": "health"}
    assert set(hits()[:2]) == {"a1", "a2"}  # the old lisbon text is forgotten
    assert [e["event"] for e in st.history("u")] == ["add", "add", "add", "update", "update"]
    assert not st.update("zz", "u", metadata={"a": 1})
    st.save(tmp_path / "m")
    again = MemoryStore.load(tmp_path / "m", encoder=enc)
    assert [r["session_id"] for r in again.search("lisbon", "u", 10, agent_id="travel")["results"]] == hits(
        agent_id="travel"
    )
