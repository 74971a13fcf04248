"""Many users in one durable store (memgas.tenants): opening reads no user, a user is read on first
use, and the users held in memory stay within the cache's bounds while every user stays correct."""

import sqlite3

from memgas.association import AssociationConfig
from memgas.db import Database
from memgas.store import MemGASConfig, MemoryStore
from memgas.tenants import memory_bytes
from suite.encoders import HashingEncoder


def _grow(path, users):
    """One user through the API, copied in SQL to `users` users (as benchmarks/store_tenants.py)."""
    st = MemoryStore.open(
        path, MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1)), encoder=HashingEncoder()
    )
    for i in range(4):
        st.add(f"user zero's note {i} about hiking and bread", "u0", session_id=f"s{i}")
    st.close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN")
    for u in range(1, users):
        for t, cols in (
            ("sessions", "session_id, pos, date, meta, units"),
            ("nodes", "key, session_id, gran, vec, floor"),
            ("edges", "a, b"),
        ):
            con.execute(f"INSERT INTO {t} SELECT ?, {cols} FROM {t} WHERE user_id='u0'", (f"u{u}",))
        # each user's own words, so a search shows whose memory answered
        con.execute(
            "UPDATE sessions SET units = replace(units, 'user zero', ?) WHERE user_id = ?", (f"user {u}", f"u{u}")
        )
    con.execute("COMMIT")
    con.close()


def test_opening_a_2000_user_store_reads_no_users_vectors(tmp_path, monkeypatch):
    """Mutation caught: loading every user at open (the old `_apply` on a fresh store): vectors read."""
    p = tmp_path / "mem.sqlite"
    _grow(p, 2000)
    reads = []
    real = Database._vec
    monkeypatch.setattr(Database, "_vec", lambda self, *a: reads.append(a[2]) or real(self, *a))
    st = MemoryStore.open(p, encoder=HashingEncoder())
    assert reads == [] and len(st.users) == 0
    assert st.search("hiking", "u1234", 1)["results"][0]["text"] == "user: user 1234's note 0 about hiking and bread"
    assert set(reads) == {"u1234"} and st.users.loaded() == ["u1234"]
    assert len(st.user_ids()) == 2000


def test_touching_more_users_than_the_cache_holds_keeps_memory_bounded_and_answers_right(tmp_path):
    """300 users through a cache of 50 (and a byte bound of about 20 users): at most 50 users are held,
    their estimated bytes stay within the bound, and an evicted user answers with its own memory when
    touched again (and takes a new add). Mutations caught: `_evict` never dropping (300 held); evicting
    without reloading (an evicted user's search comes back empty)."""
    p = tmp_path / "mem.sqlite"
    _grow(p, 300)
    st = MemoryStore.open(p, encoder=HashingEncoder(), max_users=50)
    one = memory_bytes(st.users["u0"])
    st.users.max_bytes = 20 * one
    for u in range(300):
        top = st.search("hiking", f"u{u}", 1)["results"]
        assert top and (f"user {u}'s note" in top[0]["text"] or (u == 0 and "user zero" in top[0]["text"]))
        assert len(st.users) <= 50 and st.users.bytes() <= 21 * one
    assert st.users.peek("u3") is None  # evicted long ago
    st.add("u3's fresh note about kayaks", "u3", session_id="new")
    assert [r["session_id"] for r in st.search("kayaks", "u3", 1)["results"]] == ["new"]
    assert len(st.get_all("u3")) == 5 and st.users.loads >= 300
