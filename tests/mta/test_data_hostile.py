"""Property-based hostile inputs for the LaMP loaders: any single mutation of a valid file (a field
deleted or retyped, huge or empty values, duplicated records, non-UTF-8 bytes, truncation, unknown
tasks) either loads with every record accounted for, or raises `DataError` naming the file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.data import TASKS, load_lamp, load_per_user
from suite.io import DataError
from tests.hostile import mutated, write

QUESTIONS = [
    {
        "id": "q1",
        "user_id": "u1",
        "input": "Which tag? description: a robot on a ship",
        "profile": [
            {"id": "p1", "description": "space ship", "tag": "sci-fi"},
            {"id": "p2", "description": "a wedding", "tag": "comedy"},
        ],
    },
    {
        "id": 2,
        "input": "Which tag? description: a kiss",
        "profile": [{"id": "p3", "description": "love story", "tag": "romance"}],
    },
]
OUTPUTS = {"task": "LaMP_2", "golds": [{"id": "q1", "output": "sci-fi"}, {"id": "2", "output": "romance"}]}
PER_USER = [
    {
        "user_id": "u1",
        "profile": QUESTIONS[0]["profile"],
        "query": [{"id": "q1", "input": "Which tag? a robot", "gold": "sci-fi"}],
    }
]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_loaded(users, n_questions):
    assert sum(len(u.queries) for u in users) == n_questions  # nothing silently dropped
    for u in users:
        assert u.profile and all(isinstance(v, str) for it in u.profile for v in (it["description"], it["tag"]))
        assert all(isinstance(q.input, str) and q.input.strip() and isinstance(q.id, str) for q in u.queries)


@SETTINGS
@given(target=st.sampled_from(["questions", "outputs"]), data=st.data())
def test_official_files_any_single_mutation(target, data):
    with tempfile.TemporaryDirectory() as d:
        qp, op = Path(d) / "dev_questions.json", Path(d) / "dev_outputs.json"
        kind, bad = data.draw(mutated(QUESTIONS if target == "questions" else OUTPUTS))
        write(qp, bad if target == "questions" else QUESTIONS)
        write(op, bad if target == "outputs" else OUTPUTS)
        try:
            users = load_lamp(qp, op, "LaMP_2")
        except DataError as e:
            assert (str(qp) in str(e) or str(op) in str(e)) and e.problem
            return
        n = len(bad) if target == "questions" and isinstance(bad, list) else len(QUESTIONS)
        _check_loaded(users, n)
        assert all(q.gold is not None for u in users for q in u.queries)


@SETTINGS
@given(data=st.data())
def test_per_user_file_any_single_mutation(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "users.json"
        kind, bad = data.draw(mutated(PER_USER))
        write(p, bad)
        try:
            users = load_per_user(p, "LaMP_2")
        except DataError as e:
            assert str(p) in str(e) and e.problem
            return
        _check_loaded(users, sum(len(u["query"]) for u in bad))


@settings(max_examples=40, deadline=None)
@given(task=st.text(max_size=10).filter(lambda t: t not in TASKS))
def test_unknown_task_is_named(task):
    with tempfile.TemporaryDirectory() as d:
        qp = Path(d) / "q.json"
        write(qp, QUESTIONS)
        for call in (lambda: load_lamp(qp, None, task), lambda: load_per_user(qp, task)):
            try:
                call()
            except DataError as e:
                assert e.field == "task" and str(qp) in str(e)
            else:
                raise AssertionError("an unknown task loaded")


def test_documented_handling_examples(tmp_path):
    """Duplicate query ids are errors; duplicate profile item ids and huge texts are accepted."""
    qp, op = tmp_path / "q.json", tmp_path / "o.json"
    write(qp, [QUESTIONS[0], {**QUESTIONS[1], "id": "q1"}])
    write(op, OUTPUTS)
    try:
        load_lamp(qp, None, "LaMP_2")
    except DataError as e:
        assert e.record == "q1" and e.field == "id" and "duplicate" in e.problem
    else:
        raise AssertionError("duplicate ids loaded")
    write(qp, [{**QUESTIONS[0], "input": "x" * 1_000_000}])
    write(op, {"task": "LaMP_2", "golds": [{"id": "q1", "output": "sci-fi"}, {"id": "zz", "output": "comedy"}]})
    try:
        load_lamp(qp, op, "LaMP_2")
    except DataError as e:
        assert e.record == "zz" and "answer no question" in e.problem  # an orphan gold is not dropped silently
    write(op, {"task": "LaMP_2", "golds": [{"id": "q1", "output": "sci-fi"}]})
    assert len(load_lamp(qp, op, "LaMP_2")[0].queries[0].input) == 1_000_000


def test_overlong_integers_and_overflows_name_file_record_and_field(tmp_path):
    import json

    import pytest

    qp, op = tmp_path / "q.json", tmp_path / "o.json"
    write(op, OUTPUTS)
    qp.write_text(json.dumps(QUESTIONS)[:-1] + ', {"id": ' + "7" * 5000 + "}]")
    with pytest.raises(DataError, match=r"an integer of 5000 digits at line 1") as e:
        load_lamp(qp, op, "LaMP_2")
    assert str(qp) in str(e.value)
    # a LaMP_3 rating of 400 digits: float() would overflow
    item = {"id": "p1", "text": "good", "score": int("9" * 400)}
    q3 = [{"id": "r1", "input": "review: ok", "profile": [item]}]
    write(qp, q3)
    write(op, {"task": "LaMP_3", "golds": [{"id": "r1", "output": "5"}]})
    with pytest.raises(DataError) as e:
        load_lamp(qp, op, "LaMP_3")
    assert e.value.record == "r1 profile[0]" and e.value.field == "score" and "not a rating" in e.value.problem
