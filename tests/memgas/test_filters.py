"""mem0's filter language (memgas.filters) through the store's verbs, ids as mem0's users pass them,
metadata removal, and the folder API never replacing a store it did not load."""

import pytest

from memgas.association import AssociationConfig
from memgas.filters import compile_filter
from memgas.store import MemGASConfig, MemoryStore, StoreError
from suite.encoders import HashingEncoder
from suite.io import DataError

META = [
    {"topic": "trip", "priority": 1, "city": "Lisbon", "done": True},
    {"topic": "work", "priority": 3, "city": "Oslo"},
    {"topic": "trip", "priority": 5, "city": "Porto", "done": False},
    {"topic": "health", "priority": 2},
]


def _store():
    st = MemoryStore(
        MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1)), encoder=HashingEncoder()
    )
    for i, m in enumerate(META):
        st.add(f"note {i} about the {m['topic']}", "ann", session_id=f"n{i}", metadata=m)
    return st


CASES = [
    ({"topic": "trip"}, ["n0", "n2"]),
    ({"done": "*"}, ["n0", "n2"]),
    ({"priority": {"eq": 3}}, ["n1"]),
    ({"topic": {"ne": "trip"}}, ["n1", "n3"]),
    ({"priority": {"gt": 2}}, ["n1", "n2"]),
    ({"priority": {"gte": 2, "lt": 5}}, ["n1", "n3"]),
    ({"priority": {"lte": 1}}, ["n0"]),
    ({"city": {"in": ["Oslo", "Porto"]}}, ["n1", "n2"]),
    ({"city": {"nin": ["Oslo"]}}, ["n0", "n2"]),  # a missing key matches no operator
    ({"city": {"contains": "to"}}, ["n2"]),
    ({"city": {"icontains": "LIS"}}, ["n0"]),
    ({"done": True}, ["n0"]),
    ({"priority": True}, []),  # a bool is not the number 1
    ({"AND": [{"topic": "trip"}, {"priority": {"gt": 2}}]}, ["n2"]),
    ({"OR": [{"topic": "work"}, {"topic": "health"}]}, ["n1", "n3"]),
    ({"NOT": [{"topic": "trip"}]}, ["n1", "n3"]),
    ({"OR": [{"AND": [{"topic": "trip"}, {"done": False}]}, {"priority": 2}]}, ["n2", "n3"]),
]


@pytest.mark.parametrize("flt,want", CASES, ids=[str(c[0]) for c in CASES])
def test_every_operator_selects_exactly_the_matching_sessions(flt, want):
    """Each operator against hand-worked answers, through get_all and search alike.
    Mutations caught: any operator's comparison swapped (e.g. gt as gte), `_same` without the bool
    check, NOT implemented as OR."""
    st = _store()
    assert [s["session_id"] for s in st.get_all("ann", filters=flt)] == want
    assert sorted(r["session_id"] for r in st.search("note", "ann", 10, filters=flt)["results"]) == want


@pytest.mark.parametrize(
    "flt,part",
    [
        ({"priority": {"between": [1, 2]}}, "filters.priority.between"),
        ({"$in": ["a"]}, r"filters\.\$in"),
        ({"and": [{"topic": "trip"}]}, "filters.and"),
        ({"AND": {"topic": "trip"}}, "filters.AND"),
        ({"missing": None}, "filters.missing"),
        ({"city": {"in": "Oslo"}}, "filters.city.in"),
        ({"city": {"contains": 3}}, "filters.city.contains"),
        ({"OR": [{"topic": {"like": "t%"}}]}, r"filters.OR\[0\].topic.like"),
        ("topic=trip", "filters"),
    ],
)
def test_a_bad_filter_is_an_error_naming_its_part_never_an_empty_result(flt, part):
    """Mutation caught: returning a predicate that matches nothing for an unknown operator."""
    st = _store()
    with pytest.raises(DataError, match=part):
        st.search("note", "ann", filters=flt)
    with pytest.raises(DataError, match=part):
        st.get_all("ann", filters=flt)
    with pytest.raises(DataError):
        compile_filter(flt)


def test_integer_and_string_ids_are_one_session_on_every_verb():
    """Mutation caught: `get` / `delete` looking the id up without normalising it (5 is not '5')."""
    st = _store()
    assert st.add("the number five", 7, session_id=5) == "5"
    assert st.get(5, 7)["session_id"] == "5" and st.get("5", "7") is not None
    assert st.update(5, 7, metadata={"k": 1}) and st.get_all("7", filters={"k": 1})
    assert [r["session_id"] for r in st.search("five", 7)["results"]] == ["5"]
    assert st.delete(5, 7) and st.get("5", "7") is None and not st.delete("5", 7)


def test_none_in_update_metadata_removes_the_key():
    """Mutation caught: merging {k: None} by skipping it (the key stays, update returns True)."""
    st = _store()
    assert st.update("n0", "ann", metadata={"city": None, "mood": "glad"})
    assert st.get("n0", "ann")["metadata"] == {"topic": "trip", "priority": 1, "done": True, "mood": "glad"}
    assert [s["session_id"] for s in st.get_all("ann", filters={"city": "*"})] == ["n1", "n2"]


def test_a_fresh_store_saved_over_an_existing_one_is_refused(tmp_path):
    """A store that was not loaded from a folder cannot replace the store in it (two plain writers
    would otherwise drop each other's sessions); overwrite=True is the explicit way.
    Mutation caught: the check only for stores loaded from that folder (the old behaviour)."""
    st = _store()
    st.save(tmp_path / "mem")
    fresh = MemoryStore(st.cfg, encoder=HashingEncoder())
    fresh.add("another note", "bob")
    with pytest.raises(StoreError, match="not loaded from"):
        fresh.save(tmp_path / "mem")
    assert len(MemoryStore.load(tmp_path / "mem", encoder=HashingEncoder()).get_all("ann")) == 4
    other = MemoryStore.load(tmp_path / "mem", encoder=HashingEncoder())
    other.add("a third note", "ann")
    other.save(tmp_path / "mem")  # its own folder: fine
    fresh.save(tmp_path / "mem", overwrite=True)
    assert MemoryStore.load(tmp_path / "mem", encoder=HashingEncoder()).get_all("ann") == []
