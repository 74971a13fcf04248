import json

import pytest

from memgas.data import load_benchmark, load_locomo, load_long_mt_bench, load_longmemeval
from suite.io import DataError
from tests.conftest import make_locomo


def test_locomo_loads_and_parses_odd_evidence(tmp_path):
    p = make_locomo(tmp_path / "l.json")
    d = json.loads(p.read_text())
    d[0]["qa"][0]["evidence"] = ["D1:2; D3:1", "D:2:4", "D"]
    p.write_text(json.dumps(d))
    c = load_locomo(p)[0]
    assert len(c.sessions) == 8 and c.questions[0].gold_sessions == ["session_1", "session_3", "session_2"]
    assert c.report["unparsable_evidence"] == 1
    assert c.questions[-1].answer == "no" and c.questions[-1].gold_sessions == []


@pytest.mark.parametrize(
    "mutate,record,field",
    [
        (lambda d: d[0]["qa"][0].__setitem__("evidence", ["D99:1"]), "conv-x qa[0]", "evidence"),
        (lambda d: d[0]["conversation"]["session_2"][1].pop("text"), "conv-x session_2[1]", "text"),
        (lambda d: d[0]["qa"][1].pop("answer"), "conv-x qa[1]", "answer"),
        (lambda d: d[0].__setitem__("conversation", []), "conv-x", "conversation"),
    ],
)
def test_locomo_errors_name_file_record_field(tmp_path, mutate, record, field):
    p = make_locomo(tmp_path / "l.json")
    d = json.loads(p.read_text())
    mutate(d)
    p.write_text(json.dumps(d))
    with pytest.raises(DataError) as e:
        load_locomo(p)
    assert (e.value.file, e.value.record, e.value.field) == (str(p), record, field)


def _lme(**over):
    rec = {
        "question_id": "q1",
        "question_type": "single-session-user",
        "question": "Where?",
        "answer": "Paris",
        "question_date": "2023/05/01",
        "haystack_dates": ["d1", "d2"],
        "haystack_session_ids": ["s1", "s2"],
        "haystack_sessions": [
            [{"role": "user", "content": "hi"}],
            [{"role": "user", "content": "Paris", "has_answer": True}],
        ],
        "answer_session_ids": ["s2"],
    }
    rec.update(over)
    return rec


def test_longmemeval_loader_and_errors(tmp_path):
    p = tmp_path / "lme.json"
    p.write_text(json.dumps([_lme(), _lme(question_id="q2_abs")]))
    convs = load_longmemeval(p)
    assert convs[0].questions[0].gold_sessions == ["s2"] and convs[1].questions[0].abstention
    assert convs[1].questions[0].gold_sessions == []
    p.write_text(json.dumps([_lme(answer_session_ids=["s9"])]))
    with pytest.raises(DataError, match="record q1, field 'answer_session_ids'"):
        load_longmemeval(p)
    p.write_text(json.dumps([_lme(), _lme()]))
    with pytest.raises(DataError, match="duplicate question id"):
        load_longmemeval(p)


def test_long_mt_bench_shapes(tmp_path):
    p = tmp_path / "mt.json"
    p.write_text(
        json.dumps(
            [{"sessions": [["hi", "hello"], [{"user": "u", "assistant": "a"}]], "questions": ["q?"], "answers": ["a"]}]
        )
    )
    c = load_long_mt_bench(p)[0]
    assert len(c.sessions) == 2 and c.sessions[1].turns[1].speaker == "assistant" and c.questions[0].gold_sessions == []
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("nope", p)


def test_longmemeval_s_repeated_sessions_kept_once_or_refused(tmp_path):
    """The official S file lists some session ids twice with identical content: kept once and
    counted; the same id with different content stays an error naming the question and the id."""
    p = tmp_path / "lme_s.json"
    rec = _lme()
    rec["haystack_session_ids"].append(rec["haystack_session_ids"][0])
    rec["haystack_sessions"].append(json.loads(json.dumps(rec["haystack_sessions"][0])))
    rec["haystack_dates"].append(rec["haystack_dates"][0])
    rec["haystack_sessions"][1][0]["has_answer"] = True
    p.write_text(json.dumps([rec]))
    conv = load_longmemeval(p)[0]
    assert [s.session_id for s in conv.sessions] == ["s1", "s2"] and conv.report == {"duplicate_sessions": 1}
    assert conv.questions[0].gold_turns == ["s2:0"]
    rec["haystack_sessions"][-1] = [{"role": "user", "content": "something else"}]
    p.write_text(json.dumps([rec]))
    with pytest.raises(
        DataError, match=r"record q1, field 'haystack_session_ids'.*'s1' appears twice with different content"
    ):
        load_longmemeval(p)
