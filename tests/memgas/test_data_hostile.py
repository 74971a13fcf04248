"""Property-based hostile inputs for the memory-benchmark loaders and the memory store API."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memgas.data import load_locomo, load_long_mt_bench, load_longmemeval
from memgas.store import MemGASConfig, MemoryStore
from suite.encoders import HashingEncoder
from suite.io import DataError
from tests.hostile import mutated, write

LOCOMO = [
    {
        "sample_id": "c1",
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Bob",
            "session_1_date_time": "1 May 2023",
            "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "I hiked."},
                {"speaker": "Bob", "dia_id": "D1:2", "text": "Nice!", "blip_caption": "a mountain"},
            ],
            "session_2": [{"speaker": "Ann", "dia_id": "D2:1", "text": "I cooked pasta."}],
        },
        "qa": [
            {"question": "What did Ann cook?", "answer": "pasta", "evidence": ["D2:1"], "category": 1},
            {"question": "When?", "answer": 2023, "evidence": ["D1:1; D2:1"], "category": 2},
            {"question": "Adversarial?", "adversarial_answer": "no", "evidence": [], "category": 5},
        ],
    }
]
LME = [
    {
        "question_id": "q1",
        "question": "Where did I hike?",
        "answer": "mountains",
        "question_type": "single",
        "question_date": "2023/05/02",
        "haystack_session_ids": ["s1", "s2"],
        "haystack_dates": ["d1", "d2"],
        "answer_session_ids": ["s1"],
        "haystack_sessions": [
            [{"role": "user", "content": "I hiked the mountains"}],
            [{"role": "user", "content": "pasta"}, {"role": "assistant", "content": "yum"}],
        ],
    },
    {
        "question_id": "q2_abs",
        "question": "My cat?",
        "answer": "unknown",
        "haystack_session_ids": ["s9"],
        "haystack_sessions": [[{"role": "user", "content": "dogs"}]],
    },
]
MTB = [
    {
        "id": "m1",
        "sessions": [["hi", "hello"], [{"role": "user", "content": "x"}], [{"user": "u", "assistant": "a"}]],
        "questions": ["what?"],
        "answers": ["x"],
    }
]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _counts_locomo(doc):
    return sum(len(r.get("qa", [])) for r in doc)


@SETTINGS
@given(which=st.sampled_from(["locomo", "longmemeval", "long_mt_bench"]), data=st.data())
def test_benchmark_loaders_any_single_mutation(which, data):
    base, load = {
        "locomo": (LOCOMO, load_locomo),
        "longmemeval": (LME, load_longmemeval),
        "long_mt_bench": (MTB, load_long_mt_bench),
    }[which]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"{which}.json"
        kind, bad = data.draw(mutated(base))
        write(p, bad)
        try:
            convs = load(p)
        except DataError as e:
            assert str(p) in str(e) and e.problem
            return
        # loaded: nothing dropped, every gold names a session of its conversation, no empty session
        n_q = {
            "locomo": lambda: _counts_locomo(bad),
            "longmemeval": lambda: len(bad),
            "long_mt_bench": lambda: sum(len(r["questions"]) for r in bad),
        }[which]()
        assert sum(len(c.questions) for c in convs) == n_q
        for c in convs:
            ids = {s.session_id for s in c.sessions}
            assert all(s.turns for s in c.sessions)
            assert all(set(q.gold_sessions) <= ids for q in c.questions)
            assert all(isinstance(q.answer, str) and q.question.strip() for q in c.questions)


def test_evidence_pointing_nowhere_is_named(tmp_path):
    import copy

    doc = copy.deepcopy(LOCOMO)
    doc[0]["qa"][0]["evidence"] = ["D7:1"]
    write(tmp_path / "l.json", doc)
    with pytest.raises(DataError, match=r"record c1 qa\[0\], field 'evidence': 'D7:1' points to session 7"):
        load_locomo(tmp_path / "l.json")


# ------------------------------------------------------------------------------------ store API
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=80)})
TEXTS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


def _store():
    from memgas.association import AssociationConfig

    # association from the second session on, so the GMM sees tiny and degenerate score sets too
    return MemoryStore(
        MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1)), encoder=HashingEncoder(dim=32)
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sessions=st.lists(st.lists(MESSAGE, min_size=1, max_size=4), min_size=1, max_size=6),
    queries=st.lists(TEXTS, min_size=1, max_size=3),
)
def test_store_add_search_any_texts_finds_every_session(sessions, queries):
    st_ = _store()
    ids = [st_.add(m, user_id="u") for m in sessions]
    assert len(set(ids)) == len(sessions)
    for q in queries:
        res = st_.search(q, "u", limit=len(sessions))
        assert sorted(r["session_id"] for r in res["results"]) == sorted(ids)  # nothing lost
        assert all(r["score"] == r["score"] for r in res["results"])  # no NaN scores


@settings(max_examples=60, deadline=None)
@given(
    messages=st.one_of(
        st.none(),
        st.integers(),
        st.just([]),
        st.lists(
            st.one_of(
                st.integers(),
                st.text(max_size=5),
                st.fixed_dictionaries({"role": st.text(max_size=3)}),
                st.fixed_dictionaries({"content": st.integers()}),
            ),
            min_size=1,
            max_size=3,
        ),
    )
)
def test_store_add_rejects_bad_messages_by_name(messages):
    st_ = _store()
    with pytest.raises(DataError) as e:
        st_.add(messages, user_id="u", session_id="s1")
    assert e.value.file == "add()" and e.value.field in ("messages", "content")
    assert st_.users.get("u") is None or not st_.users["u"].sessions  # nothing half-added


def test_store_search_arguments_are_checked():
    st_ = _store()
    st_.add("hello there", "u", "s1")
    for bad in (0, -1, "3", 2.5):
        with pytest.raises(ValueError, match="limit"):
            st_.search("hi", "u", limit=bad)
    with pytest.raises(ValueError, match="query"):
        st_.search(None, "u")
    with pytest.raises(ValueError, match="already in this memory"):
        st_.add("again", "u", "s1")
