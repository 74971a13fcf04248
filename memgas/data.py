"""LoCoMo, LongMemEval (oracle / S / M, one format) and Long-MT-Bench+ into one shape.

Conversation(sessions: [Session(session_id, date, turns: [Turn])], questions: [Question]).
Each question names its gold sessions (empty when the benchmark gives none: QA-only).
Errors name file, record and field (`suite.io.DataError`). Documented handling:
- LoCoMo evidence strings are parsed for every `D<session>:<turn>` they contain ("D8:6; D9:17",
  "D:11:26" are read as two ids and one); strings with no id (e.g. "D") are counted in
  `report["unparsable_evidence"]`; an id naming a session that does not exist is an error.
- LoCoMo image turns keep their caption: "[image: <blip_caption>]" is appended to the text.
- LongMemEval questions whose id ends in `_abs` are abstention questions (no retrieval gold).
- LongMemEval S/M: a haystack that lists one session id twice with identical content (13 of the
  500 official S questions do) keeps it once, counted in `report["duplicate_sessions"]`; the same id
  with different content is an error naming the question and the id. Turns flagged `has_answer`
  give the question's turn-level gold (`gold_turns`, turn ids `<session>:<index>`).
- Ids must be strings or integers; answers strings or numbers; a session with no turns is an error
  (it could never be retrieved); evidence entries that are not strings are read as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.io import DataError, check_id, check_text_value, read_json


@dataclass
class Turn:
    speaker: str
    text: str
    turn_id: str = ""


@dataclass
class Session:
    session_id: str
    turns: list[Turn]
    date: str = ""

    def text(self) -> str:
        return "\n".join(f"{t.speaker}: {t.text}" for t in self.turns)


@dataclass
class Question:
    qid: str
    question: str
    answer: str
    gold_sessions: list[str]
    category: str = ""
    abstention: bool = False
    date: str = ""
    gold_turns: list[str] = field(default_factory=list)


@dataclass
class Conversation:
    conv_id: str
    sessions: list[Session]
    questions: list[Question]
    report: dict = field(default_factory=dict)


def _str(file, rid, name, v, allow_empty=True) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise DataError(file, rid, name, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise DataError(file, rid, name, "is empty")
    return v


def _nonempty(file, rid, name, turns: list) -> list:
    if not turns:
        raise DataError(file, rid, name, "session has no turns")
    return turns


def _list(file, rid, name, v) -> list:
    if not isinstance(v, list):
        raise DataError(file, rid, name, f"expected a list, got {type(v).__name__}")
    return v


EVIDENCE = re.compile(r"D:?(\d+):(\d+)")


def load_locomo(path: str | Path) -> list[Conversation]:
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, None, None, "top level must be a list of conversations")
    out, seen = [], set()
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(path, f"#{i}", None, "expected an object")
        cid = check_id(path, f"#{i}", "sample_id", rec["sample_id"]) if "sample_id" in rec else f"conv-{i}"
        if cid in seen:
            raise DataError(path, cid, "sample_id", "duplicate conversation id")
        seen.add(cid)
        conv = rec.get("conversation")
        if not isinstance(conv, dict):
            raise DataError(path, cid, "conversation", "missing or not an object")
        keys = sorted((k for k in conv if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1]))
        if not keys:
            raise DataError(path, cid, "conversation", "no session_<n> entries")
        sessions = []
        for k in keys:
            turns = []
            for j, t in enumerate(_list(path, f"{cid} {k}", k, conv[k])):
                rid = f"{cid} {k}[{j}]"
                if not isinstance(t, dict):
                    raise DataError(path, rid, None, "turn must be an object")
                for f_name in ("speaker", "text"):
                    if f_name not in t:
                        raise DataError(path, rid, f_name, "missing")
                text = _str(path, rid, "text", t["text"])
                if t.get("blip_caption"):
                    text = f"{text} [image: {_str(path, rid, 'blip_caption', t['blip_caption'])}]"
                turns.append(Turn(_str(path, rid, "speaker", t["speaker"]), text, str(t.get("dia_id", f"{k}:{j}"))))
            _nonempty(path, cid, k, turns)
            sessions.append(Session(k, turns, _str(path, cid, f"{k}_date_time", conv.get(f"{k}_date_time", ""))))
        known = {int(k.split("_")[1]) for k in keys}
        questions, unparsable = [], 0
        for j, q in enumerate(_list(path, cid, "qa", rec.get("qa", []))):
            rid = f"{cid} qa[{j}]"
            if not isinstance(q, dict) or "question" not in q:
                raise DataError(path, rid, "question", "missing")
            ans = q.get("answer", q.get("adversarial_answer"))
            if ans is None:
                raise DataError(path, rid, "answer", "missing (and no adversarial_answer)")
            gold: list[str] = []
            for e in _list(path, rid, "evidence", q.get("evidence", [])):
                ids = EVIDENCE.findall(str(e))
                if not ids:
                    unparsable += 1
                for s, _t in ids:
                    if int(s) not in known:
                        raise DataError(path, rid, "evidence", f"{e!r} points to session {s}, which does not exist")
                    if f"session_{int(s)}" not in gold:
                        gold.append(f"session_{int(s)}")
            questions.append(
                Question(
                    f"{cid}:{j}",
                    _str(path, rid, "question", q["question"], False),
                    check_text_value(path, rid, "answer", ans),
                    gold,
                    str(q.get("category", "")),
                    False,
                )
            )
        out.append(Conversation(cid, sessions, questions, {"unparsable_evidence": unparsable}))
    return out


def load_longmemeval(path: str | Path) -> list[Conversation]:
    """One conversation per question (each question has its own haystack)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, None, None, "top level must be a list of questions")
    out, seen = [], set()
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(path, f"#{i}", None, "expected an object")
        for f_name in ("question_id", "question", "answer", "haystack_sessions", "haystack_session_ids"):
            if f_name not in rec:
                raise DataError(path, rec.get("question_id", f"#{i}"), f_name, "missing")
        qid = check_id(path, f"#{i}", "question_id", rec["question_id"])
        if qid in seen:
            raise DataError(path, qid, "question_id", "duplicate question id")
        seen.add(qid)
        ids = [
            check_id(path, qid, "haystack_session_ids", x)
            for x in _list(path, qid, "haystack_session_ids", rec["haystack_session_ids"])
        ]
        sess = _list(path, qid, "haystack_sessions", rec["haystack_sessions"])
        dates = [
            _str(path, qid, "haystack_dates", d)
            for d in _list(path, qid, "haystack_dates", rec.get("haystack_dates") or [""] * len(ids))
        ]
        if len(sess) != len(ids) or len(dates) != len(ids):
            raise DataError(path, qid, "haystack_sessions", f"{len(sess)} sessions, {len(ids)} ids, {len(dates)} dates")
        sessions, first, dup, gold_turns = [], {}, 0, []
        for sid, date, turns in zip(ids, dates, sess):
            if sid in first:  # a repeated id: the official S file repeats some sessions verbatim
                if turns != first[sid]:
                    raise DataError(
                        path, qid, "haystack_session_ids", f"session id {sid!r} appears twice with different content"
                    )
                dup += 1
                continue
            first[sid] = turns
            tl = []
            for j, t in enumerate(_list(path, f"{qid} {sid}", "haystack_sessions", turns)):
                rid = f"{qid} session {sid} turn {j}"
                if not isinstance(t, dict) or "content" not in t:
                    raise DataError(path, rid, "content", "missing")
                tl.append(
                    Turn(
                        _str(path, rid, "role", t.get("role", "user")),
                        _str(path, rid, "content", t["content"]),
                        f"{sid}:{j}",
                    )
                )
                if t.get("has_answer") is True:
                    gold_turns.append(f"{sid}:{j}")
            _nonempty(path, f"{qid} session {sid}", "haystack_sessions", tl)
            sessions.append(Session(sid, tl, date))
        gold = [
            check_id(path, qid, "answer_session_ids", x)
            for x in _list(path, qid, "answer_session_ids", rec.get("answer_session_ids") or [])
        ]
        missing = [g for g in gold if g not in set(ids)]
        if missing:
            raise DataError(path, qid, "answer_session_ids", f"{missing[0]!r} is not in haystack_session_ids")
        abst = qid.endswith("_abs")
        q = Question(
            qid,
            _str(path, qid, "question", rec["question"], False),
            check_text_value(path, qid, "answer", rec["answer"]),
            [] if abst else gold,
            _str(path, qid, "question_type", rec.get("question_type", "")),
            abst,
            _str(path, qid, "question_date", rec.get("question_date", "")),
            [] if abst else gold_turns,
        )
        out.append(Conversation(qid, sessions, [q], {"duplicate_sessions": dup} if dup else {}))
    return out


def _mt_turns(file, rid, session: Any) -> list[Turn]:
    turns = []
    for j, t in enumerate(_list(file, rid, "sessions", session)):
        if isinstance(t, str):
            turns.append(Turn("user" if j % 2 == 0 else "assistant", t, f"{rid}:{j}"))
        elif isinstance(t, dict) and "content" in t:
            turns.append(Turn(str(t.get("role", "user")), _str(file, rid, "content", t["content"]), f"{rid}:{j}"))
        elif isinstance(t, dict) and ("user" in t or "assistant" in t):
            for role in ("user", "assistant"):
                if role in t:
                    turns.append(Turn(role, _str(file, rid, role, t[role]), f"{rid}:{j}:{role}"))
        else:
            raise DataError(file, f"{rid} turn {j}", None, "a turn is a string, {role, content} or {user, assistant}")
    return turns


def load_long_mt_bench(path: str | Path) -> list[Conversation]:
    """Long-MT-Bench+ (QA only: no evidence sessions): [{sessions: [[turn, ...]], questions: [...],
    answers: [...]}], a turn being a string, {role, content} or {user, assistant}."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("data", [data])
    out = []
    for i, rec in enumerate(_list(path, None, None, data)):
        cid = (
            (check_id(path, f"#{i}", "id", rec["id"]) if "id" in rec else f"conv-{i}")
            if isinstance(rec, dict)
            else f"#{i}"
        )
        if not isinstance(rec, dict) or "sessions" not in rec:
            raise DataError(path, cid, "sessions", "missing")
        sessions = [
            Session(
                f"session_{k + 1}",
                _nonempty(path, f"{cid} session_{k + 1}", "sessions", _mt_turns(path, f"{cid} session_{k + 1}", s)),
            )
            for k, s in enumerate(_list(path, cid, "sessions", rec["sessions"]))
        ]
        qs, ans = rec.get("questions", []), rec.get("answers", [])
        if len(_list(path, cid, "questions", qs)) != len(_list(path, cid, "answers", ans)):
            raise DataError(path, cid, "answers", f"{len(qs)} questions but {len(ans)} answers")
        questions = [
            Question(
                f"{cid}:{j}",
                _str(path, f"{cid} q{j}", "questions", q, False),
                check_text_value(path, f"{cid} q{j}", "answers", a),
                [],
            )
            for j, (q, a) in enumerate(zip(qs, ans))
        ]
        out.append(Conversation(cid, sessions, questions))
    return out


LOADERS = {"locomo": load_locomo, "longmemeval": load_longmemeval, "long_mt_bench": load_long_mt_bench}


def load_benchmark(name: str, path: str | Path) -> list[Conversation]:
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(LOADERS)}")
    return LOADERS[name](path)
