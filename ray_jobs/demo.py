"""The suite's three faces on a small sample, in a few minutes (`make demo`): a pipeline check that
shows every part working end to end. It compares no methods: a handful of users or conversations
cannot tell methods apart, and the full comparisons are on the Results page (docs/results.md).

    python -m ray_jobs.demo --config ray_jobs/configs/demo.yaml --out runs/demo --quiet

1. MTA: a 3-anchor bank trained through Ray Train (2 workers); one dev user's record (anchors fused +
   a stacked rank-1 LoRA trained on their items) and another user served from their profile (anchors
   fused on demand); the OpenAI-compatible Ray Serve app answers the same question for both through
   the official `openai` client.
2. MemGAS: retrieval on 3 LoCoMo test conversations with the dev-selected configuration, and the
   table memgas_eval prints (3 conversations are 3 independent units: nothing is established).
3. The memory store: two users' sessions added to one SQLite file, a search, a delete, the same
   search again, and a scan of the store's files for the deleted words.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray_jobs.cli import entry, parse, report_run
from serving.composer import ServeConfig
from suite.config import load_config, opt
from suite.io import atomic_write_json, read_json


def _demo_serve() -> ServeConfig:
    return ServeConfig()


@dataclass
class DemoConfig:
    serve: ServeConfig = field(default_factory=_demo_serve)
    users: list[str] = opt(
        help="two users of job.data.eval_split whose adapters answer", factory=lambda: ["71149", "374"]
    )
    question: str = opt(
        "Which tag does this movie relate to among the following tags? Just answer with the tag name without "
        "further explanation. tags: [sci-fi, based on a book, comedy, action, twist ending, dystopia, dark comedy, "
        "classic, psychology, fantasy, romance, thought-provoking, social commentary, violence, true story] "
        "description: A retired hitman is pulled back in when a crime boss's son steals his car and kills his dog.",
        "what both users are asked (a LaMP_2 tagging question: what their adapters were trained on)",
    )
    max_tokens: int = opt(16, "tokens each answer may use", lo=1)
    memgas_config: str = opt("ray_jobs/configs/memgas_locomo_test.yaml", "the MemGAS evaluation config")
    memgas_overrides: list[str] = opt(
        help="key=value overrides of the MemGAS config",
        factory=lambda: [
            "best_from=none",  # the MemGAS-proper dev sweep accepted no configuration (docs/results.md)
            "hybrid_from=ray_jobs/configs/memgas_locomo_hybrid.yaml",
            "eval.max_conversations=3",
        ],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mta_face(cfg: DemoConfig, out: Path) -> dict:
    """Bank (Ray Train) → two users' records → the Serve app → the official client."""
    from openai import OpenAI
    from ray import serve

    from ray_jobs.serve import prepare, start

    s = cfg.serve
    s.record_users = list(cfg.users[:1])  # the second user has no record: fused on demand from the profile
    s.port = free_port()
    print(f"[demo 1/3] MTA: bank of {s.job.anchors.n_clusters} anchors on Ray Train, adapters for users {cfg.users}")
    with library_noise(out):  # Ray's and Serve's start-up lines go to run.log with --quiet
        prepare(s)  # trains the bank (Ray Train, bank.backend=ray) and each user's stacked LoRA
        start(s, blocking=False)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key=os.environ.get(s.token_env) or "none")
        answers = {}
        for u in cfg.users:
            r = client.chat.completions.create(
                model=f"{s.job.model.name}:{u}",
                messages=[{"role": "user", "content": cfg.question}],
                max_tokens=cfg.max_tokens,
                temperature=0,
            )
            answers[u] = r.choices[0].message.content
            how = "record: fused + stacked LoRA" if u in s.record_users else "profile: fused on demand"
            print(f"  user {u} ({how}): {answers[u]!r}")
        same = len(set(answers.values())) == 1
        print(
            "  the two adapters gave "
            + ("the same answer to this question" if same else "different answers to the same question")
        )
        return {"question": cfg.question, "answers": answers, "different": not same}
    finally:
        with library_noise(out, linger_s=3.0, fds=(1, 2)):  # Ray prints "(raylet) ..." notes on stdout
            serve.shutdown()


@contextlib.contextmanager
def library_noise(out: Path, linger_s: float = 0.0, fds: tuple[int, ...] = (2,)):
    """With --quiet, everything written to the process's stderr meanwhile (Ray's start-up warnings,
    Serve's INFO lines, its controller's shutdown notes; written by handlers holding the original
    stream, so the redirect is at the file-descriptor level) goes to OUT/run.log."""
    from suite.logs import quiet, reapply

    if not quiet():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with open(out / "run.log", "a", encoding="utf-8") as log:
        for fd in fds:
            os.dup2(log.fileno(), fd)
        try:
            yield
            time.sleep(linger_s)  # lines Ray's log monitor delivers a moment later
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
    reapply()  # Ray and Serve reconfigure their loggers when they start


def memgas_face(cfg: DemoConfig, out: Path) -> dict:
    import memgas.recipe as recipe
    from memgas.recipe import MemGASJobConfig
    from memgas.recipe import run as run_memgas

    print("[demo 2/3] MemGAS: retrieval on 3 LoCoMo test conversations (dev-selected configuration)")
    mcfg = load_config(MemGASJobConfig, cfg.memgas_config, cfg.memgas_overrides)
    buf, table = io.StringIO(), recipe.print_table
    recipe.print_table = functools.partial(table, file=buf)  # its comparison table: not on 3 conversations
    try:
        with contextlib.redirect_stdout(buf):
            res = run_memgas(mcfg, out)["memgas"][mcfg.benchmark]
    finally:
        recipe.print_table = table
    (out / "memgas_eval.log").write_text(buf.getvalue())
    cols = ["recall_all@5", "recall_any@5", "ndcg_any@5"]
    print(f"  {res['n_questions']} questions; each method's mean (no differences: 3 conversations are 3 units)")
    print("  " + f"{'method':<34}" + "".join(f"{c:>14}" for c in cols))
    for m, v in res["methods"].items():
        print("  " + f"{m:<34}" + "".join(f"{v.get(c, float('nan')):>14.3f}" for c in cols))
    ref = "memgas" if "memgas" in res["methods"] else "memgas_paper"
    return {"questions": res["n_questions"], "reference": ref, "recall_all@5": res["methods"][ref]["recall_all@5"]}


def store_face(out: Path, encoder_name: str) -> dict:
    from memgas.store import MemGASConfig, MemoryStore
    from suite.encoders import load_encoder

    print("[demo 3/3] the memory store: add, search, delete, search again")
    path = out / "store" / "mem.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    store = MemoryStore.open(path, MemGASConfig(), encoder=load_encoder(encoder_name))
    store.add([{"role": "user", "content": "We hiked the Dolomites in May, near Cortina."}], user_id="alice")
    sid = store.add([{"role": "user", "content": "My sister Zaria moved to Lisbon last winter."}], user_id="alice")
    store.add([{"role": "user", "content": "Bob's sister lives in Oslo."}], user_id="bob")
    q = "where does my sister live?"
    before = [r["session_id"] for r in store.search(q, user_id="alice", limit=1)["results"]]
    print(f"  alice asks {q!r}: top session {before} ({'the Lisbon one' if before == [sid] else 'not the Lisbon one'})")
    store.delete(sid, user_id="alice")
    after = [r["session_id"] for r in store.search(q, user_id="alice", limit=3)["results"]]
    left = [p.name for p in path.parent.iterdir() if b"Zaria" in p.read_bytes()]
    print(f"  after delete: {sid} {'gone from' if sid not in after else 'STILL IN'} her results {after}")
    print(f"  store files still holding the deleted words: {left or 'none'}")
    bob = [r["session_id"] for r in store.search(q, user_id="bob", limit=1)["results"]]
    print(f"  bob's memory is his own: {bob}")
    store.close()
    return {"deleted": sid, "found_after_delete": sid in after, "files_with_deleted_words": left}


def run(cfg: DemoConfig, out: str | Path) -> dict:
    out = Path(out)
    demo = {"mta": mta_face(cfg, out), "memgas": memgas_face(cfg, out), "store": store_face(out, cfg.serve.job.encoder)}
    summary = read_json(out / "summary.json")  # MemGAS's summary; the report renders it
    for r in summary.get("memgas", {}).values():  # a pipeline check: means only, no differences or verdicts
        r.pop("vs_reference", None)
    summary.update({"purpose": "pipeline_check", "demo": demo})
    atomic_write_json(out / "summary.json", summary)
    return summary


@entry
def main(argv=None) -> None:
    args, cfg = parse(DemoConfig, __doc__, argv)
    summary = run(cfg, args.out)
    report_run(args.out)
    print(
        "a pipeline check on a small sample: no method is compared here; the comparisons are in docs/results.md "
        "(site: make docs → site/index.html)"
    )
    print(f"demo summary: {Path(args.out) / 'summary.json'} ({json.dumps(list(summary['demo']))})")


if __name__ == "__main__":
    main()
