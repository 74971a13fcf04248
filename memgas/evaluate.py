"""Retrieval and QA metrics (SPEC §2) and the benchmark loop.

Retrieval, at session level, as LongMemEval defines them: recall_any@k (some gold session in the
top k), recall_all@k (every gold session in the top k), ndcg_any@k with binary relevance and
LongMemEval's DCG (rel_1 + Σ_{i≥2} rel_i / log2(i)). Abstention questions and questions with no
gold session are skipped. QA: SQuAD-normalised token F1 and exact match, BLEU-1, ROUGE-L, and a
yes/no LLM judge when an endpoint is configured.
"""

from __future__ import annotations

import hashlib
import re
import string
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from memgas.attribution import alone_rankings, decided, entropy_ratio, summarize_attribution
from memgas.data import Conversation
from memgas.filter import filter_and_answer
from memgas.memory import StoreError
from memgas.retrieval import RetrievalConfig, rank_sessions
from memgas.store import MemoryStore
from suite.config import ConfigError, opt
from suite.io import append_jsonl, json_digest, read_jsonl
from suite.provenance import code_version
from suite.redact import redact_text
from suite.stats import compare, deciding_test, describe

KS = (1, 3, 5, 10, 30, 50)


def _dcg(rel: np.ndarray) -> float:
    if rel.size == 0:
        return 0.0
    return float(rel[0] + np.sum(rel[1:] / np.log2(np.arange(2, rel.size + 1))))


def retrieval_metrics(ranked: list[str], gold: list[str], corpus: list[str], ks=KS) -> dict[str, float]:
    gold_set = set(gold)
    out = {}
    rel_all = np.array([1.0 if c in gold_set else 0.0 for c in corpus])
    ideal = np.sort(rel_all)[::-1]
    for k in ks:
        top = ranked[:k]
        out[f"recall_any@{k}"] = float(any(g in top for g in gold_set))
        out[f"recall_all@{k}"] = float(all(g in top for g in gold_set))
        rel = np.array([1.0 if c in gold_set else 0.0 for c in top])
        idcg = _dcg(ideal[:k])
        out[f"ndcg_any@{k}"] = _dcg(rel) / idcg if idcg > 0 else 0.0
    return out


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g:
        return float(p == g)
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def bleu1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return 0.0
    clipped = sum((Counter(p) & Counter(g)).values())
    bp = 1.0 if len(p) > len(g) else float(np.exp(1 - len(g) / len(p)))
    return bp * clipped / len(p)


def qa_metrics(pred: str, gold: str) -> dict[str, float]:
    rl = rouge_scorer.RougeScorer(["rougeL"]).score(gold, pred)["rougeL"].fmeasure
    return {
        "f1": token_f1(pred, gold),
        "em": float(normalize_answer(pred) == normalize_answer(gold)),
        "bleu1": bleu1(pred, gold),
        "rougeL": float(rl),
    }


JUDGE_PROMPT = (
    "Question: {q}\nGold answer: {g}\nModel answer: {p}\n"
    "Does the model answer contain the gold answer or mean the same? Answer yes or no."
)


def judge(llm, q: str, gold: str, pred: str) -> float:
    return float(llm.complete(JUDGE_PROMPT.format(q=q, g=gold, p=pred), 4, 0.0).strip().lower().startswith("yes"))


@dataclass
class MemEvalConfig:
    ks: list[int] = opt(help="cut-offs", factory=lambda: list(KS))
    max_conversations: int = opt(0, "first N conversations (0 = all)")
    max_questions: int = opt(0, "first N questions per conversation (0 = all)")
    qa: bool = opt(False, "answer with the LLM (filter + answer) and score QA")
    qa_method: str = opt("memgas", "retrieval method whose top-K feeds the LLM")
    qa_top_k: int = opt(3, "sessions given to the LLM filter", lo=1)
    use_filter: bool = opt(True, "LLM filter step before answering")
    judge: bool = opt(False, "LLM-as-judge yes/no (needs an endpoint)")
    progress: bool = opt(True, "progress bar over conversations")
    bootstrap: int = opt(10000, "bootstrap resamples for the paired intervals")
    backend: Literal["local", "ray"] = opt("local", "local | ray (each conversation / LongMemEval question a Ray task)")
    cpus: float = opt(1.0, "ray backend: CPUs per task", lo=0, lo_open=True)
    gpus: float = opt(0.0, "ray backend: GPUs per task (the encoder then runs on it)")
    max_retries: int = opt(3, "ray backend: re-executions of a task whose worker died")
    attribution: bool = opt(
        True,
        "record per question which path decides each top-5 place (graph, dense, lexical, bypass), each "
        "path's recall alone and the router's entropy over log N (memgas.attribution)",
    )

    def __post_init__(self):
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks: {self.ks!r} must be a non-empty list of cut-offs >= 1")
        for name in ("max_conversations", "max_questions", "max_retries", "bootstrap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval.{name}: {getattr(self, name)!r} must be >= 0")
        if self.qa_top_k < 1 or self.cpus <= 0 or self.gpus < 0:
            raise ConfigError("eval.qa_top_k must be >= 1, eval.cpus > 0 and eval.gpus >= 0")


def run_key(
    methods: dict[str, RetrievalConfig],
    memories: dict[str, object],
    cfg: MemEvalConfig,
    data_sha: str,
    llm: dict | None = None,
    units: str = "extractive",
) -> str:
    """Hash of everything a per-question record depends on: the methods' configurations, the
    memory each runs on (encoder, association, turn node), the metrics' cut-offs, the QA settings,
    the LLM settings (redacted: no key) and where the units come from, the data file and the
    MemGAS code itself."""

    ev = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "max_conversations", "max_questions")}
    key = {
        "code": code_version(("memgas", "suite")),
        "methods": {m: asdict(c) for m, c in sorted(methods.items())},
        "memories": {m: asdict(c) for m, c in sorted(memories.items())},
        "eval": ev,
        "data": data_sha,
        "llm": llm if cfg.qa else None,
        "units": units,
    }
    return json_digest(key)


def check_question_record(r: dict) -> str | None:
    """The problem with a per-question resume record (naming the field), or None: metrics are
    fractions in [0, 1], latencies finite and >= 0; a failing record is reported and recomputed."""
    for f, t in (("qid", str), ("key", str), ("metrics", dict), ("latency_ms", dict)):
        if not isinstance(r.get(f), t):
            return f"field {f}: missing or not a {t.__name__}"
    for m, vals in r["metrics"].items():
        if not isinstance(vals, dict):
            return f"field metrics.{m}: not an object"
        for k, v in vals.items():
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
                return f"field metrics.{m}.{k}: {v!r} is not in [0, 1]"
    for m, v in r["latency_ms"].items():
        if not isinstance(v, int | float) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
            return f"field latency_ms.{m}: {v!r} is not a finite number >= 0"
    if "turn_metrics" in r and not (
        isinstance(r["turn_metrics"], dict)
        and all(isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in r["turn_metrics"].values())
    ):
        return "field turn_metrics: values not in [0, 1]"
    if "qa" in r and not isinstance(r["qa"], dict):
        return "field qa: not an object"
    if "attribution" in r and not (
        isinstance(r["attribution"], dict) and all(isinstance(a, dict) for a in r["attribution"].values())
    ):
        return "field attribution: not an object of objects"
    return None


def attribute(tr: dict, order, corpus: list[str], n_rows: int, rc: RetrievalConfig, q) -> dict:
    """One question's mechanism attribution (memgas.attribution) for one method's ranking."""
    att = {
        "decided": decided(tr, order, len(corpus), n_rows, 5),
        "entropy_ratio": entropy_ratio(tr, rc.temperature),
    }
    if q.gold_sessions and not q.abstention:
        att["alone"] = {
            p: retrieval_metrics([corpus[i] for i in o], q.gold_sessions, corpus, (5,))["recall_all@5"]
            for p, o in alone_rankings(tr, len(corpus)).items()
        }
    return att


def turn_ranking(mem, s_ids: list[str], q: np.ndarray) -> list[str]:
    """Turn units (a user turn with its reply: turns 2j and 2j+1 of a session) ranked by dense score;
    ids `<session>:<2j>`."""
    idx = mem.nodes_of("turn")
    if not len(idx):
        return []
    sc = mem.matrix()[idx] @ q
    owner = mem.node_sess[idx]
    pos, ids = {}, []
    for o in owner:
        j = pos.get(int(o), 0)
        ids.append(f"{s_ids[int(o)]}:{2 * j}")
        pos[int(o)] = j + 1
    return [ids[i] for i in np.argsort(-sc, kind="stable")]


def turn_gold(gold_turns: list[str]) -> list[str]:
    """Gold turn ids `<session>:<t>` mapped to the turn unit holding them, `<session>:<2*(t//2)>`."""
    out = []
    for g in gold_turns:
        sid, _, t = g.rpartition(":")
        u = f"{sid}:{2 * (int(t) // 2)}"
        if u not in out:
            out.append(u)
    return out


def evaluate(
    convs: list[Conversation],
    make_store,
    methods: dict[str, RetrievalConfig],
    cfg: MemEvalConfig,
    log_path: str | Path,
    llm=None,
    on_question=None,
    key: str = "",
    memory_cache: str | Path | None = None,
    memories: dict | None = None,
) -> list[dict]:
    """Run every method on every question; per-question records are appended to `log_path` as
    they finish, and questions already there under the same `key` are skipped (resume); records
    written under another key (a changed configuration or data file) are recomputed, never reused.
    When answering, questions whose QA failed (endpoint down) or never ran are retried.

    `memories` (method -> MemGASConfig): each method runs on a memory built with its own settings
    (association, turn node); methods sharing settings share one memory. `make_store(memory_cfg)`
    builds an empty store (without `memories`, `make_store()` builds the one memory of every
    method). The first method's memory is the primary one: its ingestion is recorded and the turn
    ranking uses it. `memory_cache`: a folder where each conversation's ingested memory is saved
    and reloaded (sweeps whose trials share the memory settings ingest once)."""

    done = {}
    for r in read_jsonl(log_path, check_question_record):  # later lines win: a retried question's record replaces
        if r.get("key", "") != key:
            continue
        if cfg.qa and llm is not None and ("qa" not in r or "failed" in r["qa"]):
            continue
        done[r["qid"]] = r
    groups: dict[str, tuple] = {}  # memory digest -> (memory config or None, [methods])
    for name in methods:
        mcfg = (memories or {}).get(name)
        d = json_digest(asdict(mcfg)) if mcfg is not None else ""
        groups.setdefault(d, (mcfg, []))[1].append(name)
    of_method = {m: d for d, (_, ms) in groups.items() for m in ms}
    records = []
    convs = convs[: cfg.max_conversations] if cfg.max_conversations else convs
    for conv in tqdm(convs, desc="conversations", disable=not cfg.progress):
        qs = conv.questions[: cfg.max_questions] if cfg.max_questions else conv.questions
        todo = [q for q in qs if q.qid not in done]
        records += [done[q.qid] for q in qs if q.qid in done]
        if not todo:
            continue
        stores, ingest = {}, None
        for d, (mcfg, _) in groups.items():
            if not stores:
                store = make_store(mcfg) if memories is not None else make_store()
            else:  # later memories reuse the first one's encoder cache and units (no second LLM call)
                first = next(iter(stores.values()))
                store = MemoryStore(mcfg, encoder=first.encoder, units=first.units)
            t0 = time.perf_counter()
            cached = None
            if memory_cache is not None:
                cached = Path(memory_cache) / d / hashlib.sha1(conv.conv_id.encode()).hexdigest()[:16]
            from_cache = cached is not None and (cached / "manifest.json").exists()
            if from_cache:
                store = MemoryStore.load(cached, encoder=store.encoder)
            else:
                for s in conv.sessions:
                    store.add(s, conv.conv_id, s.session_id, s.date)
                if cached is not None:
                    try:
                        store.save(cached)
                    except StoreError:
                        # another trial of the sweep saved this memory first (same config digest, same
                        # sessions, deterministic ingestion): theirs stays, ours is the same memory
                        if not (cached / "manifest.json").exists():
                            raise
            stores[d] = store
            if ingest is None:  # the primary memory's ingestion, on every record (resumed runs report it)
                ingest = {
                    "seconds": time.perf_counter() - t0,
                    "sessions": len(store.users[conv.conv_id].sessions),
                    "texts": getattr(store.encoder, "encoded", None),
                    "from_cache": from_cache,  # decided before ingesting: a fresh memory is saved to the cache
                }
        primary = stores[next(iter(groups))]
        mem = primary.users[conv.conv_id]
        corpus = [s["session_id"] for s in mem.sessions]
        for q in todo:
            rec = {
                "qid": q.qid,
                "key": key,
                "conv": conv.conv_id,
                "category": q.category,
                "abstention": q.abstention,
                "gold": q.gold_sessions,
                "n_sessions": len(corpus),
                "ingest": ingest,
                "metrics": {},
                "latency_ms": {},
                "top": {},
            }
            t = time.perf_counter()
            qv = primary.encoder.encode([q.question])[0]
            enc_ms = (time.perf_counter() - t) * 1000
            for name, rc in methods.items():
                m_mem = stores[of_method[name]].users[conv.conv_id]
                t = time.perf_counter()
                tr: dict | None = {} if cfg.attribution else None
                order, scores, w = rank_sessions(m_mem, qv, q.question, rc, trace=tr)
                rec["latency_ms"][name] = enc_ms + (time.perf_counter() - t) * 1000
                ranked = [corpus[i] for i in order]
                if tr is not None:
                    rec.setdefault("attribution", {})[name] = attribute(tr, order, corpus, len(m_mem.rows), rc, q)
                rec["top"][name] = ranked[: max(cfg.ks)]
                if len(w) > 1:  # every routed method: is the router's weighting exercised?
                    rec.setdefault("router", {})[name] = w
                if q.gold_sessions and not q.abstention:
                    rec["metrics"][name] = retrieval_metrics(ranked, q.gold_sessions, corpus, cfg.ks)
            if q.gold_turns and not q.abstention:
                tr = turn_ranking(mem, corpus, qv)
                rec["turn_metrics"] = retrieval_metrics(tr, turn_gold(q.gold_turns), tr, cfg.ks)
            if cfg.qa and llm is not None:
                qa_store = stores[of_method[cfg.qa_method]]
                res = qa_store.search(q.question, conv.conv_id, cfg.qa_top_k, methods[cfg.qa_method])["results"]
                try:
                    out = filter_and_answer(llm, q.question, res, use_filter=cfg.use_filter)
                    rec["qa"] = {"answer": out["answer"], **qa_metrics(out["answer"], q.answer)}
                    if cfg.judge:
                        rec["qa"]["judge"] = judge(llm, q.question, q.answer, out["answer"])
                except Exception as e:  # an endpoint failure marks this question, the run goes on
                    rec["qa"] = {"failed": redact_text(f"{type(e).__name__}: {e}")}
            append_jsonl(log_path, rec)
            records.append(rec)
            if on_question:
                on_question(rec)
    return records


BREAKDOWN_KEYS = ("recall_all@5", "recall_any@5", "ndcg_any@5", "recall_all@10")


def ingest_stats(records: list[dict]) -> dict:
    """Sessions and unit texts ingested per second, from the ingestion recorded on each question
    (one per conversation, the latest; memories loaded from `memory_cache` are left out)."""
    per_conv = {}
    for r in records:
        ing = r.get("ingest")
        if ing and not ing.get("from_cache"):
            per_conv[r["conv"]] = ing
    secs = sum(i["seconds"] for i in per_conv.values())
    if not per_conv or secs <= 0:
        return {}
    out = {"ingest_sessions_per_s": sum(i["sessions"] for i in per_conv.values()) / secs}
    if all(i.get("texts") is not None for i in per_conv.values()):
        out["ingest_texts_per_s"] = sum(i["texts"] for i in per_conv.values()) / secs
    return out


def router_weight_stats(records: list[dict]) -> dict:
    """Per routed method: each granularity's mean weight, its standard deviation across questions
    and the share of questions where it alone weighs most. A router whose weights do not vary (sd 0)
    is not choosing anything; this is how a run shows whether the entropy router is exercised."""
    out = {}
    for m in sorted({m for r in records for m in r.get("router", {})}):
        ws = [r["router"][m] for r in records if m in r.get("router", {})]
        grans = sorted({g for w in ws for g in w})
        mat = np.array([[w.get(g, 0.0) for g in grans] for w in ws])
        srt = np.sort(mat, 1)
        unique = srt[:, -1] - (srt[:, -2] if len(grans) > 1 else 0) > 1e-9  # ties weigh most for no one
        top = np.bincount(mat.argmax(1)[unique], minlength=len(grans)) / len(ws)
        out[m] = {
            "questions": len(ws),
            "mean": dict(zip(grans, map(float, mat.mean(0)))),
            "sd": dict(zip(grans, map(float, mat.std(0)))),
            "top_share": dict(zip(grans, map(float, top))),
        }
    return out


def summarize(
    records: list[dict], methods: list[str], ks=KS, reference: str | None = None, n_boot: int = 10000
) -> dict:
    """Means per method; per category / question type; turn-level recall (LongMemEval); and, given
    a `reference` method, every other method's paired bootstrap interval and permutation p-value
    against it on recall_all@5 (`vs_reference`)."""

    out: dict = {
        "n_questions": len(records),
        "methods": {},
        "n_excluded": {
            "abstention": sum(1 for r in records if r.get("abstention")),
            "no_gold": sum(1 for r in records if not r.get("abstention") and not r["metrics"]),
        },
    }
    for m in methods:
        rows = [r["metrics"][m] for r in records if m in r["metrics"]]
        if rows:
            out["methods"][m] = {k: float(np.mean([x[k] for x in rows])) for k in rows[0]}
            out["methods"][m]["n_scored"] = len(rows)
    cats = sorted({str(r.get("category", "")) for r in records if r["metrics"]})
    out["by_category"] = {}
    for c in cats:
        rs = [r for r in records if str(r.get("category", "")) == c and r["metrics"]]
        per_m = {}
        for m in methods:
            ms = [r["metrics"][m] for r in rs if m in r["metrics"]]
            if ms:
                per_m[m] = {k: float(np.mean([x[k] for x in ms])) for k in BREAKDOWN_KEYS if k in ms[0]}
        out["by_category"][c] = {"n": len(rs), **per_m}
    tm = [r["turn_metrics"] for r in records if "turn_metrics" in r]
    if tm:
        out["turn_level"] = {
            "unit": "a user turn with its reply; gold from has_answer",
            "n": len(tm),
            "dense_turn": {k: float(np.mean([x[k] for x in tm])) for k in tm[0]},
        }
    if reference and reference in out["methods"]:
        scored = [r for r in records if reference in r["metrics"]]
        per_q = {
            m: [r["metrics"][m]["recall_all@5"] for r in scored]
            for m in methods
            if all(m in r["metrics"] for r in scored)
        }
        clusters = [r.get("conv", i) for i, r in enumerate(scored)]  # questions of one conversation share its memory
        table = compare(per_q, reference, binary=False, n_boot=n_boot, clusters=clusters)
        out["vs_reference"] = {
            "reference": reference,
            "metric": "recall_all@5",
            "n_clusters": len(set(clusters)),
            "test": deciding_test(table),
            "note": "diff = method - reference; " + describe(False, "conversations", deciding_test(table)),
            "methods": table,
        }
    out["router_weights"] = router_weight_stats(records)
    att = {m: summarize_attribution(records, m) for m in methods}
    if any(att.values()):
        out["attribution"] = {m: a for m, a in att.items() if a}
    lat = [r["latency_ms"].get("memgas") for r in records if "memgas" in r["latency_ms"]]
    if lat:
        out["query_ms_p50"] = float(np.percentile(lat, 50))
        out["query_ms_p95"] = float(np.percentile(lat, 95))
    qa = [r["qa"] for r in records if "qa" in r and "failed" not in r["qa"]]
    if qa:
        out["qa"] = {k: float(np.mean([x[k] for x in qa])) for k in qa[0] if k != "answer"}
        out["qa"]["n"] = len(qa)
    failed = [r["qid"] for r in records if "failed" in r.get("qa", {})]
    if failed:
        out["qa_failed"] = failed
    return out
