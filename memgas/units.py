"""Memory units of one session at four granularities (SPEC §2): the session text, its turns (an
utterance with its reply), a summary and a keyword list. Summary and keywords come from one LLM
call each (temperature 0, max 500 tokens) or, with no LLM, from the extractive fallback below;
`UnitBuilder.source` says which was used and results report it."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

from memgas.data import Session
from memgas.llm import LLMError

GRANULARITIES = ("session", "turn", "summary", "keywords")
SUMMARY_PROMPT = (
    "Summarize the following conversation session in a few sentences, keeping names, dates, "
    "events and facts.\n\n{session}\n\nSummary:"
)
KEYWORD_PROMPT = (
    "List the keywords (names, places, objects, topics, events) of the following conversation "
    "session, comma separated.\n\n{session}\n\nKeywords:"
)

_STOP = set(
    """a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves yeah yes oh hey hi thanks thank really
also like get got know think going go well much lot one that's it's i'm you're don't can't i've what's""".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+")
_SENT = re.compile(r"(?<=[.!?])\s+")


def content_words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP and len(w) > 2]


def extractive_summary(session: Session, n_sentences: int = 4) -> str:
    """The sentences whose content words are most frequent in the session (order kept)."""
    sents = [(t.speaker, s) for t in session.turns for s in _SENT.split(t.text) if s.strip()]
    if not sents:
        return ""
    freq = Counter(w for _, s in sents for w in content_words(s))
    scored = [
        (sum(freq[w] for w in set(content_words(s))) / (1 + len(content_words(s))) ** 0.5, i)
        for i, (_, s) in enumerate(sents)
    ]
    keep = sorted(i for _, i in sorted(scored, reverse=True)[:n_sentences])
    return " ".join(f"{sents[i][0]}: {sents[i][1]}" for i in keep)


def extractive_keywords(session: Session, n: int = 15) -> str:
    """Most frequent content words, capitalised names boosted (they anchor most questions)."""
    c: Counter = Counter()
    for t in session.turns:
        for w in _WORD.findall(t.text):
            lw = w.lower()
            if lw in _STOP or len(lw) <= 2:
                continue
            c[lw] += 2 if w[0].isupper() else 1
    return ", ".join(w for w, _ in c.most_common(n))


def turn_units(session: Session) -> list[str]:
    """Each utterance with its reply: consecutive turns paired (a lone last turn stands alone)."""
    t = session.turns
    return [" \n".join(f"{x.speaker}: {x.text}" for x in t[i : i + 2]) for i in range(0, len(t), 2)] or [""]


@dataclass
class SessionUnits:
    session: str
    turns: list[str]
    summary: str
    keywords: str

    def by_granularity(self) -> dict[str, list[str]]:
        return {"session": [self.session], "turn": self.turns, "summary": [self.summary], "keywords": [self.keywords]}


class UnitBuilder:
    """Units of a session. If the LLM endpoint fails for good on a session, that session falls back
    to extractive units (counted in `fallbacks` and reported in `source`) and ingestion goes on."""

    def __init__(self, llm=None, max_tokens: int = 500, memo: int = 4096):
        self.llm, self.max_tokens = llm, max_tokens
        self.fallbacks = 0
        # the last `memo` sessions' units: several memories of one conversation (each method on its
        # own association settings) are built from the same units, with one set of LLM calls
        self._memo: dict[str, SessionUnits] = {}
        self._memo_size = memo

    @property
    def source(self) -> str:
        if self.llm is None:
            return "extractive"
        return f"llm ({self.fallbacks} session(s) extractive after LLM failures)" if self.fallbacks else "llm"

    def build(self, session: Session) -> SessionUnits:
        text = session.text()
        key = hashlib.sha256(f"{session.session_id}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()
        if key not in self._memo:
            if len(self._memo) >= self._memo_size:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = self._build(session, text)
        return self._memo[key]

    def forget(self, texts) -> None:
        """Drop the memoised units of deleted sessions (given their unit texts)."""
        gone = set(texts)
        for k in [k for k, u in self._memo.items() if u.session in gone]:
            del self._memo[k]

    def _build(self, session: Session, text: str) -> SessionUnits:
        summary = keywords = None
        if self.llm is not None:
            try:
                summary = self.llm.complete(SUMMARY_PROMPT.format(session=text), self.max_tokens, 0.0)
                keywords = self.llm.complete(KEYWORD_PROMPT.format(session=text), self.max_tokens, 0.0)
            except LLMError:
                self.fallbacks += 1
                summary = keywords = None
        if summary is None:
            summary, keywords = extractive_summary(session), extractive_keywords(session)
        return SessionUnits(text, turn_units(session), summary or text[:500], keywords or text[:200])
