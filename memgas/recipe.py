"""Recipe (the job config, its stages and the report; `ray_jobs.memgas_eval` launches it).

MemGAS retrieval (and optionally QA) on LoCoMo, LongMemEval or Long-MT-Bench+, run as `setup`
(data split, LLM, encoder: built once) → `evaluate_all` (ingest each conversation, answer its
questions with every method; resumable) → `report` (summary.json, table, W&B).

    python -m ray_jobs.memgas_eval --config ray_jobs/configs/memgas_locomo_cpu.yaml --out runs/memgas_locomo
    python -m ray_jobs.memgas_eval --config ray_jobs/configs/memgas_longmemeval_cpu.yaml --out runs/memgas_lme

    python -m ray_jobs.memgas_eval --config ray_jobs/configs/memgas_locomo_test.yaml --out runs/memgas_locomo_test \
        best_from=runs/sweep_memgas_locomo/best_config.yaml

Writes OUT/summary.json ({"memgas": {benchmark: {...}}}) with every baseline, `memgas_paper` (the
reference defaults), `memgas` (`best`, or the sweep's choice read from `best_from`), each ablation of
both, paired bootstrap intervals against `memgas`, per-category breakdowns and the split used;
OUT/per_question.jsonl (resume log keyed by a hash of the configuration and data file: a rerun skips
finished questions and never reuses records of another configuration). Prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from memgas.data import load_benchmark, load_longmemeval
from memgas.encoders import CachedEncoder
from memgas.evaluate import MemEvalConfig, check_question_record, evaluate, ingest_stats, run_key, summarize
from memgas.llm import LLMConfig, build_llm
from memgas.retrieval import RetrievalConfig, ablation_configs, baseline_configs, paper_config
from memgas.store import MemGASConfig, MemoryStore, paper_memory
from memgas.units import UnitBuilder
from suite.config import ConfigError, from_dict, load_config, opt
from suite.device import check_spec
from suite.device import describe as describe_device
from suite.device import use as use_device
from suite.encoders import load_encoder
from suite.io import append_jsonl, atomic_write_json, claim_run_dir, project_root, read_jsonl, run_lock, sha256_file
from suite.provenance import provenance, start_stamp
from suite.ray_local import init_ray
from suite.redact import redact_config
from suite.tracking import Tracker, TrackingConfig

DEFAULT_FILES = {"locomo": "locomo10.json", "longmemeval": "longmemeval_s_dev.json"}
LME_DEV = "longmemeval_s_dev.json"


@dataclass
class SplitConfig:
    name: Literal["all", "dev", "test"] = opt(
        "all", "all | dev (tune here) | test (report here: never seen by a sweep)"
    )
    dev_every: int = opt(
        3, "LoCoMo: conversation i (file order) is dev when i % dev_every == 0 (4 of 10), else test", lo=2
    )
    dev_data: str = opt(
        "",
        "LongMemEval: the dev file whose question ids are excluded from test; "
        "empty = ../shared/data/memory/longmemeval_s_dev.json",
    )

    def __post_init__(self):
        if self.name not in ("all", "dev", "test"):
            raise ValueError(f"split.name={self.name!r}: all | dev | test")


@dataclass
class MemGASJobConfig:
    benchmark: Literal["locomo", "longmemeval", "long_mt_bench"] = opt("locomo", "locomo | longmemeval | long_mt_bench")
    data: str = opt("", "benchmark file; empty = ../shared/data/memory/<default file> (LongMemEval: the S dev file)")
    split: SplitConfig = field(default_factory=SplitConfig)
    memgas: MemGASConfig = field(default_factory=MemGASConfig)
    best: RetrievalConfig = field(default_factory=paper_config)
    best_from: str = opt(
        "",
        "a best_config.yaml written by sweep_memgas (mechanisms=graph_and_router): its `best` retrieval "
        "and `memgas` memory settings replace these and are reported as the `memgas` row, which must use "
        "the graph and a non-uniform router; the evaluated split must not overlap the one it was chosen on. "
        "`none`: the MemGAS-proper sweep found no configuration whose graph and router measurably act, so "
        "there is no `memgas` row and the authors' configuration (`memgas_paper`) is the reference",
    )
    hybrid_from: str = opt(
        "",
        "a best_config.yaml of an unconstrained sweep: its winner is reported beside, on its own memory, "
        "under a name that says what it computes (e.g. hybrid_bm25_dense when graph and router are off)",
    )
    hybrid: dict = opt(help="filled from hybrid_from: {name, retrieval, memgas, selected_on}", factory=dict)
    selected_on: dict = opt(
        help="where `best` was selected (written by sweep_memgas: split, ids, data checksum)", factory=dict
    )
    eval: MemEvalConfig = field(default_factory=MemEvalConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    ablations: bool = opt(True, "also run each ablation of `best` and of the paper configuration")
    device: str = opt(
        "auto", "encoders and the local LLM: auto (the GPU a Ray task reserved, else cpu) | cpu | cuda | cuda:N"
    )
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        check_spec(self.device, "device")
        if self.eval.qa and self.eval.backend == "ray":
            raise ConfigError(
                "eval.qa=true with eval.backend=ray: the Ray tasks do not carry the LLM (they would build "
                "extractive units and skip QA); answer with eval.backend=local"
            )


def shared_memory_dir() -> Path:
    return project_root().parent / "shared" / "data" / "memory"


def resolve_data(cfg: MemGASJobConfig) -> Path:
    if cfg.data:
        return Path(cfg.data)
    if cfg.benchmark == "longmemeval" and cfg.split.name == "test":
        raise SystemExit(
            "LongMemEval test questions are S questions outside the dev file; they are not on this "
            "machine: pass data=PATH/longmemeval_s.json (the dev questions are excluded automatically)"
        )
    name = DEFAULT_FILES.get(cfg.benchmark)
    if name is None:
        raise SystemExit(f"benchmark {cfg.benchmark!r} has no default file here: pass data=PATH")
    return shared_memory_dir() / name


def exercises_mechanisms(rc: RetrievalConfig) -> bool:
    """Does a retrieval config use what makes MemGAS MemGAS: the association graph and the router?"""
    return rc.use_graph and rc.router != "uniform" and len(rc.granularities) + len(rc.lexical) > 1


def row_name(rc: RetrievalConfig) -> str:
    """A name for what a retrieval config computes (an unconstrained sweep's winner is a baseline
    unless it uses the graph and the router)."""
    kind = "hybrid_bm25_dense" if rc.lexical and rc.granularities else ("bm25_multi" if rc.lexical else "dense_multi")
    return kind + ("_graph" if rc.use_graph else "") + ("_routed" if rc.router != "uniform" else "")


def apply_best_from(cfg: MemGASJobConfig) -> MemGASJobConfig:
    """Take `best` and `memgas` from a sweep's best_config.yaml, and the unconstrained winner from
    `hybrid_from` (validated like any config)."""
    if cfg.best_from and cfg.best_from != "none":
        sel = load_config(MemGASJobConfig, cfg.best_from)
        cfg = replace(cfg, best=sel.best, memgas=sel.memgas, selected_on={**sel.selected_on, "file": cfg.best_from})
    if cfg.hybrid_from:
        h = load_config(MemGASJobConfig, cfg.hybrid_from)
        cfg = replace(
            cfg,
            hybrid={
                "name": row_name(h.best),
                "retrieval": asdict(h.best),
                "memgas": asdict(h.memgas),
                "selected_on": {**h.selected_on, "file": cfg.hybrid_from},
            },
        )
    return cfg


def check_disjoint(cfg: MemGASJobConfig, convs: list) -> None:
    """Refuse to evaluate on questions a selection was made on: every best_config.yaml records the
    ids it was selected on (conversations, LongMemEval questions)."""
    evaluated = {c.conv_id for c in convs}
    for what, sel in (
        ("best_from", cfg.selected_on if cfg.best_from not in ("", "none") else None),
        ("hybrid_from", cfg.hybrid.get("selected_on")),
    ):
        if not sel:
            continue
        if "ids" not in sel:
            raise ConfigError(f"{what}={sel.get('file')}: records no selection ids, so overlap cannot be ruled out")
        both = sorted(evaluated & set(sel["ids"]))
        if both:
            raise ConfigError(
                f"{what}={sel.get('file')} was selected on {len(sel['ids'])} ids of split {sel.get('split')!r}; "
                f"the evaluated split shares {len(both)} of them (e.g. {both[0]}): report on a disjoint split"
            )


BEST_LOCOMO = "ray_jobs/configs/memgas_locomo_best.yaml"


def load_best(path: str | Path | None = None) -> RetrievalConfig:
    """The `best` retrieval config of a sweep's best_config.yaml (default: the committed LoCoMo one,
    selected on the dev conversations); the paper configuration when there is none."""

    p = Path(path) if path else project_root() / BEST_LOCOMO
    return load_config(MemGASJobConfig, p).best if p.exists() else paper_config()


def split_conversations(convs: list, cfg: MemGASJobConfig) -> tuple[list, dict]:
    """The conversations of the configured split, and a record of what went where."""
    sp = cfg.split
    if sp.name == "all" or cfg.benchmark not in ("locomo", "longmemeval"):
        return convs, {"name": "all", "n": len(convs)}
    if cfg.benchmark == "locomo":
        dev = [c for i, c in enumerate(convs) if i % sp.dev_every == 0]
        test = [c for i, c in enumerate(convs) if i % sp.dev_every != 0]
        chosen = dev if sp.name == "dev" else test
        return chosen, {
            "name": sp.name,
            "unit": "conversation",
            "dev": [c.conv_id for c in dev],
            "test": [c.conv_id for c in test],
        }

    dev_path = Path(sp.dev_data) if sp.dev_data else shared_memory_dir() / LME_DEV
    dev_ids = {c.conv_id for c in load_longmemeval(dev_path)}
    chosen = [c for c in convs if (c.conv_id in dev_ids) == (sp.name == "dev")]
    if not chosen:
        raise SystemExit(f"split {sp.name!r}: no LongMemEval question of this file is on that side of {dev_path}")
    return chosen, {"name": sp.name, "unit": "question", "dev_file": str(dev_path), "n_dev_ids": len(dev_ids)}


def reference_row(cfg: MemGASJobConfig) -> str:
    """The row every other is compared with: `memgas`, or `memgas_paper` when none was found."""
    return "memgas_paper" if cfg.best_from == "none" else "memgas"


def methods_for(cfg: MemGASJobConfig) -> tuple[dict[str, RetrievalConfig], dict[str, MemGASConfig]]:
    """Every row and the memory it runs on: `memgas_paper` (and its ablations) on the authors'
    memory, `memgas` (which must exercise the graph and the router) and the baselines on `memgas`'s
    memory, the unconstrained sweep's winner on its own. With `best_from=none` there is no `memgas`
    row (none was found on dev) and the baselines run on the configured `memgas` memory."""
    if cfg.best_from != "none" and not exercises_mechanisms(cfg.best):
        raise ConfigError(
            f"best: graph {'on' if cfg.best.use_graph else 'off'}, router {cfg.best.router}: the `memgas` row must "
            "use the association graph and a non-uniform router over several granularities; a configuration "
            "without them is a baseline (give its best_config.yaml as hybrid_from)"
        )
    paper, paper_mem = paper_config(), paper_memory(cfg.memgas.encoder)
    methods = {**baseline_configs(), "memgas_paper": paper}
    if cfg.best_from != "none":
        methods["memgas"] = cfg.best
    memories = {m: cfg.memgas for m in methods}
    memories["memgas_paper"] = paper_mem
    if cfg.hybrid:
        name = cfg.hybrid["name"]
        methods[name] = from_dict(RetrievalConfig, cfg.hybrid["retrieval"], "hybrid.retrieval")
        memories[name] = from_dict(MemGASConfig, cfg.hybrid["memgas"], "hybrid.memgas")
    if cfg.ablations:
        for name, rc in ablation_configs(paper, "memgas_paper").items():
            methods[name], memories[name] = rc, paper_mem
        if cfg.best_from != "none":
            for name, rc in ablation_configs(cfg.best, "memgas").items():
                methods[name], memories[name] = rc, cfg.memgas
    return methods, memories


def encoder_throughput(encoder, texts: list[str]) -> float:
    """Raw texts/s of the encoder on a sample of unit texts (no cache)."""
    t = time.perf_counter()
    encoder.encode(texts)
    return len(texts) / (time.perf_counter() - t)


def print_table(name: str, res: dict, file=sys.stdout) -> None:
    cols = ["recall_all@5", "recall_any@5", "recall_all@10", "ndcg_any@5", "ndcg_any@10"]
    print(f"\n{name} — {res['n_questions']} questions", file=file)
    print(f"{'method':<32}" + "".join(f"{c:>15}" for c in cols), file=file)
    for m, v in res["methods"].items():
        print(f"{m:<32}" + "".join(f"{v.get(c, float('nan')):>15.4f}" for c in cols), file=file)
    for k in ("query_ms_p50", "ingest_sessions_per_s", "ingest_vs_encoder"):
        if k in res:
            print(f"{k}: {res[k]:.3f}", file=file)
    vs = res.get("vs_reference", {})
    for m, d in vs.get("methods", {}).items():
        print(
            f"  {m:<40} {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
            f"p_holm={d['p_holm']:.3g} {d['verdict']} vs {vs['reference']}",
            file=file,
        )


def _eval_conversation(cfg_dict: dict, conv, methods: dict, memories: dict, key: str, log_dir: str) -> list[dict]:
    """One conversation (LongMemEval: one question with its haystack) as a Ray task: it ingests its
    own memory and returns its records; the driver is the only writer of per_question.jsonl.
    If the task's worker dies, Ray runs it again (max_retries)."""

    cfg = from_dict(MemGASJobConfig, cfg_dict, "memgas_eval task")
    use_device(cfg.device)  # this worker's device (the GPU its task reserved, if any)
    cfg.eval.progress = False
    enc = CachedEncoder(load_encoder(cfg.memgas.encoder))
    tmp_log = Path(log_dir) / f".task-{abs(hash(conv.conv_id))}-{time.time_ns()}.jsonl"
    try:
        return evaluate(
            [conv],
            lambda mcfg: MemoryStore(mcfg, encoder=enc),
            methods,
            cfg.eval,
            tmp_log,
            key=key,
            memories=memories,
        )
    finally:
        tmp_log.unlink(missing_ok=True)


def evaluate_on_ray(
    cfg: MemGASJobConfig, convs: list, methods: dict, memories: dict, key: str, log_path: Path
) -> list[dict]:
    """Conversations not yet logged under `key` run as Ray tasks (`eval.cpus` each); each finished
    one is appended to the log by the driver, so a rerun resumes with what was done."""
    import ray

    done = {r["qid"]: r for r in read_jsonl(log_path, check_question_record) if r.get("key") == key}
    todo = [c for c in convs if any(q.qid not in done for q in c.questions)]
    if todo:
        init_ray()
        task = ray.remote(num_cpus=cfg.eval.cpus, num_gpus=cfg.eval.gpus, max_retries=cfg.eval.max_retries)(
            _eval_conversation
        )
        refs = {task.remote(asdict(cfg), c, methods, memories, key, str(log_path.parent)): c.conv_id for c in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for rec in ray.get(ready[0]):
                if rec["qid"] not in done:
                    append_jsonl(log_path, rec)
                    done[rec["qid"]] = rec
    return [done[q.qid] for c in convs for q in c.questions if q.qid in done]


@dataclass
class Session:
    """What `setup` builds once and the later stages share."""

    cfg: MemGASJobConfig
    out: Path
    device: object
    tracker: Tracker
    data_file: Path
    split: dict
    convs: list
    llm: object
    encoder: object
    units: UnitBuilder
    methods: dict
    memories: dict
    key: str
    encoder_texts_per_s: float

    def make_store(self, mcfg: MemGASConfig) -> MemoryStore:
        # a fresh cache per memory: ingest timing includes every encoder call
        return MemoryStore(mcfg, encoder=CachedEncoder(self.encoder), units=self.units)


def setup(cfg: MemGASJobConfig, out: str | Path) -> Session:
    """Stage 1: apply `best_from`, check the device, write config.json, load the split's
    conversations, the LLM and the encoder, measure the encoder alone (the yardstick for ingestion)."""
    cfg = apply_best_from(cfg)
    device = use_device(cfg.device)  # fails here, before any work, if the device is not there
    start_stamp(("memgas", "suite"))  # the commit the run starts at (a commit made while it runs is not its own)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", redact_config(asdict(cfg)))  # no key embedded in a URL is written
    path = resolve_data(cfg)
    convs, split = split_conversations(load_benchmark(cfg.benchmark, path), cfg)
    check_disjoint(cfg, convs)  # before any work: never report on what a selection saw
    if cfg.eval.max_conversations:
        convs = convs[: cfg.eval.max_conversations]
    llm = build_llm(cfg.llm)
    encoder = load_encoder(cfg.memgas.encoder)
    units = UnitBuilder(llm if cfg.eval.qa else None)  # shared by every conversation's store
    # the same mix of unit texts ingestion embeds (sessions, turns, summaries, keywords)
    extractive = UnitBuilder(None)
    sample = [
        t for c in convs[:2] for s in c.sessions[:8] for g in extractive.build(s).by_granularity().values() for t in g
    ]
    raw_tps = encoder_throughput(encoder, sample)
    methods, memories = methods_for(cfg)
    # what the answers depend on (not the transport: URL, timeouts, retries)
    llm_key = {"backend": cfg.llm.backend, "model": cfg.llm.model} if cfg.eval.qa else None
    key = run_key(methods, memories, cfg.eval, sha256_file(path), llm_key, units.source)
    tracker = Tracker(cfg.tracking, "memgas_eval", asdict(cfg), out, name=f"memgas-{cfg.benchmark}")
    return Session(cfg, out, device, tracker, path, split, convs, llm, encoder, units, methods, memories, key, raw_tps)


def evaluate_all(s: Session) -> list[dict]:
    """Stage 2: ingest every conversation and answer its questions with every method (resumable
    per-question records, in this process or one Ray task per conversation)."""
    cfg, log = s.cfg, s.out / "per_question.jsonl"
    if cfg.eval.backend == "ray":
        return evaluate_on_ray(cfg, s.convs, s.methods, s.memories, s.key, log)
    llm = s.llm if cfg.eval.qa else None
    return evaluate(s.convs, s.make_store, s.methods, cfg.eval, log, llm=llm, key=s.key, memories=s.memories)


def report(s: Session, recs: list[dict], wall_s: float) -> dict:
    """Stage 3: summary.json (merged with other benchmarks' results in the same run folder), the
    printed table, and W&B's summary and per-question table."""
    cfg, methods = s.cfg, s.methods
    res = summarize(recs, list(methods), cfg.eval.ks, reference=reference_row(cfg), n_boot=cfg.eval.bootstrap)
    res.update(ingest_stats(recs))  # from the records: a resumed run reports its first pass's ingestion
    if "ingest_texts_per_s" in res:
        res["encoder_texts_per_s"] = s.encoder_texts_per_s
        res["ingest_vs_encoder"] = res["ingest_texts_per_s"] / s.encoder_texts_per_s
    res["units"] = s.units.source
    res["data"] = {
        "file": str(s.data_file),
        "split": s.split,
        "duplicate_sessions": sum(c.report.get("duplicate_sessions", 0) for c in s.convs),
    }
    res["record_key"] = s.key
    res["router"] = {"memgas": cfg.best.router, "memgas_paper": "reference"}
    res["configs"] = {
        "memgas": asdict(cfg.best)
        if cfg.best_from != "none"
        else "not found: no dev configuration whose graph and "
        "router measurably act (the MemGAS-proper sweep's acceptance rule); memgas_paper is the reference",
        "memories": {
            m: asdict(c) for m, c in s.memories.items() if m in ("memgas", "memgas_paper", cfg.hybrid.get("name"))
        },
        "selected_on": cfg.selected_on
        or ("none found" if cfg.best_from == "none" else "not selected: the configured `best`"),
        "hybrid": cfg.hybrid or None,
    }
    res["wall_s"] = wall_s  # this invocation: a resumed run counts only what it redid
    res["runtime"] = describe_device(s.device)
    res["provenance"] = provenance(
        redact_config(asdict(cfg)),
        {"data": s.data_file, "dev_data": cfg.split.dev_data or None},
        res["runtime"],
        ("memgas", "suite"),
    )
    sp = s.out / "summary.json"
    prev = json.loads(sp.read_text()) if sp.exists() else {}
    prev.setdefault("memgas", {})[cfg.benchmark] = res
    atomic_write_json(sp, prev)
    print_table(cfg.benchmark, res)
    s.tracker.summary({f"{cfg.benchmark}/{m}/{k}": v for m, vals in res["methods"].items() for k, v in vals.items()})
    s.tracker.summary(  # what each row's mechanisms decide (graph share, router sd), beside its recall
        {
            f"{cfg.benchmark}/{m}/attribution/{k}": v
            for m, a in (res.get("attribution") or {}).items()
            for k, v in a.items()
            if isinstance(v, int | float)
        }
    )
    base = "bm25_session" if "bm25_session" in methods else None
    m5 = lambda r, m: (r["metrics"].get(m) or {}).get("recall_all@5") if m else None  # noqa: E731
    rows = [
        [
            r["qid"],
            r.get("conv"),
            str(r.get("category", "")),
            json.dumps(r.get("gold")),
            m5(r, "memgas"),
            m5(r, base),
            json.dumps((r.get("top") or {}).get("memgas", [])[:5]),
            json.dumps((r.get("router") or {}).get("memgas", {})),
        ]
        for r in recs[:2000]
    ]
    cols = ["qid", "conv", "category", "gold", "memgas_recall_all@5", f"{base}_recall_all@5", "memgas_top5"]
    s.tracker.table("per_question", cols + ["router_weights"], rows)
    return prev


def run(cfg: MemGASJobConfig, out: str | Path) -> dict:
    """setup → evaluate → report, holding the run folder (one driver at a time)."""
    use_device(cfg.device)  # a missing device fails before anything is written
    claim_run_dir(out)  # before any work: never write into a folder that is not this suite's run
    with run_lock(out):
        return _run(cfg, out)


def _run(cfg: MemGASJobConfig, out: str | Path) -> dict:
    s = setup(cfg, out)
    try:
        t0 = time.perf_counter()
        recs = evaluate_all(s)
        return report(s, recs, time.perf_counter() - t0)
    finally:
        s.tracker.finish()
