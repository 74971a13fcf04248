"""Recipe (the job config, its stages and the report; `ray_jobs.mta_pipeline` launches it).

MTA end to end on one LaMP task: anchors → bank (Ray Train) → fusion → stacking → evaluation, run as
`setup` (device, bank, users, model: built once) → `select` (settings chosen on train users) →
`evaluate` (every method, every user; resumable) → `report` (summary.json, table, W&B).

    python -m ray_jobs.mta_pipeline --config ray_jobs/configs/mta_lamp2_cpu.yaml --out runs/mta_lamp2
    python -m ray_jobs.mta_pipeline --config ray_jobs/configs/mta_lamp2_cpu.yaml --out runs/x fusion.top_k=3

Writes OUT/summary.json ({"mta": {task: {...}}}), OUT/predictions/<task>/<method>.json (LaMP outputs
format), OUT/per_user.jsonl and OUT/select_user.jsonl (resume logs, keyed by a configuration hash)
and prints a table. The bank lives in bank_cache (default runs/banks/<task>-<hash>) and is shared by
every run that asks for the same bank. Rerunning resumes: finished anchors and users are not redone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from mta.adapt import adapt  # noqa: F401 (re-exported: ray_jobs.adapt, ray_jobs.serve)
from mta.bank import Bank, LoadedBank, bank_content_id
from mta.bank_build import anchor_report, bank_path_for, bank_signature, build_bank, dry_run, pretrain  # noqa: F401 (re-exported)
from mta.config import _uses_labels, resolve_calibration, swept_settings
from mta.data import load_task_split, resolve_task_dir
from mta.job_config import MTAJobConfig
from mta.per_user import Evaluator, anchor_overlap, check_user_record, golds_file, load_users, record_key, split_digest
from mta.selection import (
    TUNED,
    check_budgets,
    fingerprint,
    load_selection,
    select_lambda,
    select_setting,
    write_selection,
)
from mta.verdicts import summarize
from suite.config import from_dict
from suite.device import describe as describe_device
from suite.device import dtype_for
from suite.device import use as use_device
from suite.encoders import load_encoder
from suite.io import DataError, atomic_write_json, claim_run_dir, read_json, read_jsonl, run_lock
from suite.models import load_base
from suite.provenance import code_version, provenance, start_stamp
from suite.ray_local import init_ray
from suite.redact import redact_config
from suite.tracking import Tracker

__all__ = ["MTAJobConfig", "adapt", "bank_path_for", "build_bank", "dry_run", "pretrain", "resummarize", "run"]


def print_table(task: str, res: dict, file=sys.stdout) -> None:
    methods = res["methods"]
    if not methods:
        return
    metrics = list(next(iter(methods.values())))
    check = res.get("purpose") == "pipeline_check"
    vs = {} if check else res.get("vs_mta", {})
    print(f"\n{task} — {res['n_users']} users, {res['inference']}, calibration {res.get('calibration')}", file=file)
    if check:
        print(
            f"(a pipeline check on {res['n_users']} users: too few to compare methods, so no comparison is "
            "printed; the README's Results hold the full tables)",
            file=file,
        )
    head = f"{'method':<14}" + "".join(f"{m:>10}" for m in metrics)
    print(head + (f"{'diff vs MTA [95% CI]  p_holm verdict':>46}" if vs else ""), file=file)
    for name, vals in methods.items():
        d = vs.get(name)
        cmp = (
            f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f},{d['ci95'][1]:+.3f}] {d['p_holm']:6.3f} {d['verdict']}" if d else ""
        )
        print(f"{name:<14}" + "".join(f"{vals[m]:>10.4f}" for m in metrics) + f"{cmp:>46}", file=file)
    for k in ("bytes_per_user", "adapt_s_per_user", "ratios", "rel_update"):
        if res.get(k):
            print(f"{k}: " + ", ".join(f"{m}={v:,.3g}" for m, v in res[k].items()), file=file)


@dataclass
class Session:
    """What `setup` builds once and the later stages share: one bank, one base model wrapped once
    by peft (the evaluator's adapter host), the users to evaluate and the run's tracker."""

    cfg: MTAJobConfig
    out: Path
    device: torch.device
    tracker: Tracker
    bank: Bank
    loaded: LoadedBank
    bank_sig: str
    users: list
    queries_file: Path
    ev: Evaluator | None
    anchors: list[dict]
    label_mode: bool
    anchor_users: list = field(default_factory=list)  # the anchors' full profiles
    key: str = ""  # the record key of the evaluated configuration (set by `select`)
    train_file: Path | None = None  # the train split's questions file (anchors, selection users)


def setup(cfg: MTAJobConfig, out: str | Path) -> Session:
    """Stage 1: check the device, write config.json, build (or reuse) the bank, load the users, the
    base model and its codec once, and wrap the model in the evaluator's adapter host."""
    device = use_device(cfg.model.device)  # fails here, before any training, if the device is not there
    start_stamp(("mta", "suite"))  # the commit the run starts at (a commit made while it runs is not its own)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", redact_config(asdict(cfg)))
    tracker = Tracker(cfg.tracking, "mta_pipeline", asdict(cfg), out, name=f"mta-{cfg.data.task}")
    try:
        encoder = load_encoder(cfg.encoder)
        bank, stats = build_bank(cfg, out, encoder)
        for st in stats:
            tracker.log({"bank/anchor_seconds": st["seconds"], "bank/steps": st["steps"]})
        loaded = bank.load()
        users, qpath = load_users(cfg, cfg.data.eval_split, loaded.ids)
        d = cfg.data
        ids = set(loaded.ids)
        anchor_users = [
            u
            for u in load_task_split(
                d.task, d.train_split, d.root or None, download=d.download, scheme=d.scheme, base_url=d.base_url
            )
            if u.user_id in ids
        ]
        if cfg.data.max_eval_users:
            users = users[: cfg.data.max_eval_users]
        model, codec = load_base(cfg.model)
        anchors = anchor_report(bank, loaded, model)
        ev = Evaluator(cfg, loaded, model, codec, encoder, out)  # wraps the model once (peft)
    except BaseException:
        tracker.finish()
        raise
    return Session(
        cfg,
        out,
        device,
        tracker,
        bank,
        loaded,
        bank_content_id(bank.manifest),
        users,
        qpath,
        ev,
        anchors,
        _uses_labels(cfg.data.task, cfg.eval.inference),
        anchor_users,
        train_file=resolve_task_dir(
            d.task, d.train_split, d.root or None, download=d.download, scheme=d.scheme, base_url=d.base_url
        )
        / f"{d.train_split}_questions.json",
    )


def select(s: Session) -> dict:
    """Stage 2: the choices made on train users that are not anchors, never on the evaluated split,
    with the same number of candidates for every trained method (checked when the config is read):
    the stack's settings (`eval.stacking_grid`), then `mta_prior`'s λ (it re-scores the chosen
    stack), then OPPU's (`eval.oppu_grid`). OUT/selection.json is rewritten after each choice and
    each finished candidate (`in_progress`), so a run stopped midway keeps what it finished;
    `eval.selection_from` applies an earlier run's choices and finished candidates (same users,
    bank recipe, grids and base settings: checked) and runs only the rest.
    Updates the session's config; returns {"lambda", "selection": {method: record}}."""
    cfg = s.cfg
    fp = fingerprint(cfg, split_digest(s.train_file), bank_signature(cfg))
    got = load_selection(cfg.eval.selection_from, fp, s.bank_sig) if cfg.eval.selection_from else None
    held = got["selection"] if got else {}
    made_by = {"code_version": code_version(("mta", "suite")), "bank_content": s.bank_sig, "run": str(s.out)}
    selection, lam = {}, max(cfg.eval.prior_lambda, 0.0)
    budgets = cfg.eval.budgets(s.label_mode)
    progress = {w: dict(rows) for w, rows in ((got or {}).get("in_progress") or {}).items()}

    def save(what: str | None = None, i: int = 0, row: dict | None = None) -> None:
        if what is not None:  # one more candidate finished: kept even if the run stops now
            progress.setdefault(what, {})[str(i)] = {**row, "made_by": made_by}
        part = {"in_progress": progress} if progress else {}
        write_selection(s.out, {"lambda": lam, "selection": selection, "budgets": budgets, **part}, fp)

    for what in _to_choose(cfg, s.label_mode):
        if what in held:
            rec = held[what]
        elif what == "mta_prior_lambda":
            rec = {**select_lambda(cfg, s.ev, s.loaded.ids, s.bank_sig), "made_by": made_by}
        else:
            done = progress.get(what)
            _, rec = select_setting(
                cfg, s.ev, s.loaded.ids, s.bank_sig, what, done=done, on_candidate=partial(save, what)
            )
            rec["made_by"] = made_by
            progress.pop(what, None)
        selection[what] = rec
        if what == "mta_prior_lambda":
            lam = rec["choice"]
            print(f"[select] mta_prior lambda = {lam} (best on {rec['users']} train users)")
        else:
            field_name = TUNED[what][0]
            cfg = replace(cfg, **{field_name: replace(getattr(cfg, field_name), **rec["choice"])})
            s.cfg = s.ev.cfg = cfg
        if what not in held:  # what is chosen survives a stop before the next choice
            save()
    check_budgets(selection, cfg.eval.purpose)  # same users, same candidate count, enough of both
    s.key = s.ev.key = record_key(cfg, split_digest(s.queries_file), s.bank_sig)
    choices = {"lambda": lam, "selection": selection, "budgets": budgets}
    print(f"[select] choices written to {write_selection(s.out, choices, fp)}")
    if got:
        src = got["selection_from"]
        src["reused"] = [w for w in selection if w in held]
        by = [held[w].get("made_by") or {} for w in src["reused"]]  # absent: a file from before made_by
        src["same_bank_content"] = all(b.get("bank_content", s.bank_sig) == s.bank_sig for b in by)
        src["same_code"] = all(b.get("code_version", src["code_version"]) == made_by["code_version"] for b in by)
        print(f"[select] {', '.join(src['reused']) or 'nothing'} from {src['file']} (code {src['code_version']})")
        choices["selection_from"] = src
    return choices


def _to_choose(cfg, label_mode: bool) -> list[str]:
    """What this run chooses, in order: the stack (MTA's and mta_prior's), mta_prior's λ (scored
    with the chosen stack), OPPU."""
    if cfg.data.select_users <= 0:
        return []
    ms = cfg.eval.methods
    out = ["stack"] if ("mta" in ms or "mta_prior" in ms) and cfg.eval.stacking_grid else []
    if "mta_prior" in ms and label_mode and cfg.eval.prior_lambda < 0:
        out.append("mta_prior_lambda")
    return out + (["oppu"] if "oppu" in ms and cfg.eval.oppu_grid else [])


def evaluate(s: Session) -> list[dict]:
    """Stage 3: every method on every evaluated user (resumable records, in this process or as Ray
    tasks)."""
    if s.cfg.eval.backend == "ray":
        s.ev = None  # the Ray tasks load their own model: free this one first
        return evaluate_on_ray(s.cfg, s.out, s.bank.path, s.users, s.key)
    return s.ev.run(s.users)


def report(s: Session, records: list[dict], choices: dict) -> dict:
    """Stage 4: summary.json (merged with other tasks' results in the same run folder), the printed
    table, and W&B's summary, per-user and anchor tables and the bank artifact."""
    cfg, d, task = s.cfg, s.cfg.data, s.cfg.data.task
    e = cfg.eval
    overlap = anchor_overlap(task, s.users, s.anchor_users)
    res = summarize(
        task, records, e.methods, s.label_mode, e.calibration, s.out, choices["lambda"], e.bootstrap, overlap=overlap
    )
    res["split"] = {"eval": d.eval_split, "eval_file": str(s.queries_file)}
    res["selection"] = choices["selection"]  # per trained method: candidates, scores, choice (train users)
    res["tuning_budget"] = choices["budgets"]
    if "selection_from" in choices:  # chosen by an earlier run (eval.selection_from): which, and at what code
        res["selection_from"] = choices["selection_from"]
    res["purpose"] = e.purpose
    if e.swept:  # chosen outside this run, by a sweep on train users: its file and choice, not a grid here
        sw = s.ev.swept if s.ev is not None else swept_settings(e.swept)
        res["swept"] = {
            "file": sw["file"], "sha256": sw["sha256"], "selected_by": sw["selected_by"],
            "fusion": asdict(sw["fusion"]), "stacking": asdict(sw["stacking"]),
        }  # fmt: skip
    res["stacking"] = asdict(cfg.stacking)
    res["oppu"] = asdict(cfg.oppu)
    res["record_key"] = s.key
    res["anchors"] = s.anchors
    res["bank"] = {
        "anchors": len(s.loaded.ids),
        "bytes": s.bank.bytes_on_disk(),
        "path": str(s.bank.path),
        "signature": s.bank.manifest.get("signature"),
    }
    if res.get("bytes_per_user"):
        res["bytes_per_user"]["bank_amortised"] = res["bank"]["bytes"] / max(1, len(records))
    res["runtime"] = {
        "driver": describe_device(s.device, dtype_for(s.device, cfg.model.dtype)),
        "eval_backend": cfg.eval.backend,
        "eval_gpus": cfg.eval.gpus,
        "bank_gpus_per_worker": cfg.bank.gpus_per_worker,
    }
    res["seeds"] = "per adapter: sha256(run seed / kind / anchor or user id)"
    res["resolved_calibration"] = resolve_calibration(task, cfg.eval.calibration)
    res["provenance"] = provenance(
        redact_config(asdict(cfg)),
        {
            "questions": s.queries_file,
            "golds": golds_file(s.queries_file),
            # the split the bank's anchors and the selection users come from
            "train_questions": s.train_file,
            "train_golds": golds_file(s.train_file) if s.train_file else None,
            "swept_config": e.swept or None,
            "selection_from": e.selection_from or None,
        },
        res["runtime"]["driver"],
        ("mta", "suite"),
    )
    summary_path = s.out / "summary.json"
    prev = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    prev.setdefault("mta", {})[task] = res
    atomic_write_json(summary_path, prev)
    print_table(task, res)
    tr = s.tracker
    tr.summary({f"{task}/{m}/{k}": v for m, vals in res["methods"].items() for k, v in vals.items()})
    cost = lambda r, m: (r.get("cost", {}).get(m) or {}).get("seconds")  # noqa: E731
    tr.table(
        "per_user",
        ["user_id", "gold", "anchors", "weights", "mta_adapt_s", "oppu_adapt_s"],
        [
            [
                r["user_id"],
                json.dumps(r.get("golds")),
                json.dumps((r.get("anchors") or {}).get("anchors")),
                json.dumps((r.get("anchors") or {}).get("weights")),
                cost(r, "mta"),
                cost(r, "oppu"),
            ]
            for r in records
        ],
    )
    tr.table(
        "anchors",
        ["id", "n_items", "steps", "loss_first", "loss_last", "rel_update"],
        [
            [a["id"], a.get("n_items"), a.get("steps"), a.get("loss_first"), a.get("loss_last"), a["rel_update"]]
            for a in s.anchors
        ],
    )
    tr.artifact(f"bank-{task}", "model", s.bank.path, {"anchors": len(s.loaded.ids)})
    return prev


def run(cfg: MTAJobConfig, out: str | Path) -> dict:
    """setup → select → evaluate → report, holding the run folder (one driver at a time)."""
    use_device(cfg.model.device)  # a missing device fails before anything is written
    claim_run_dir(out)  # before any work: never write into a folder that is not this suite's run
    with run_lock(out):
        return _run(cfg, out)


def _run(cfg: MTAJobConfig, out: str | Path) -> dict:
    s = setup(cfg, out)
    try:
        choices = select(s)
        if cfg.eval.stop_after == "select":  # no method has run on an evaluated user
            return {"selection": choices}
        return report(s, evaluate(s), choices)
    finally:
        s.tracker.finish()


def _evaluate_task(cfg_dict: dict, out: str, bank_path: str, users: list, key: str) -> list[dict]:
    """The per-user stage (fusion, stacking, baselines) as a Ray task. If its worker dies, Ray runs
    it again; the new attempt skips the users already in per_user.jsonl."""

    cfg = from_dict(MTAJobConfig, cfg_dict, "mta_pipeline task")
    use_device(cfg.model.device)  # the GPU this task reserved (eval.gpus), if any
    model, codec = load_base(cfg.model)
    fail = cfg.eval.fail_at

    def on_user(n: int) -> None:
        if fail and n == int(fail["after_users"]) and not Path(fail["marker"]).exists():
            Path(fail["marker"]).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # what an OOM kill or a lost node does

    ev = Evaluator(cfg, Bank(bank_path).load(), model, codec, load_encoder(cfg.encoder), Path(out), key)
    return ev.run(users, on_user=on_user)


def evaluate_on_ray(cfg: MTAJobConfig, out: Path, bank_path, users: list, key: str) -> list[dict]:
    import ray

    init_ray()
    task = ray.remote(num_cpus=cfg.eval.cpus, num_gpus=cfg.eval.gpus, max_retries=cfg.eval.max_retries)(_evaluate_task)
    return ray.get(task.remote(asdict(cfg), str(Path(out).resolve()), str(Path(bank_path).resolve()), users, key))


def resummarize(out: str | Path) -> dict:
    """Rewrite OUT/summary.json from the records already logged in OUT/per_user.jsonl under the
    summary's own `record_key` (no model is loaded, nothing is recomputed per user): the way to add
    a statistic to a finished run. Selection results (lambda, stacking) are kept from the summary."""
    out = Path(out)
    summary = read_json(out / "summary.json")
    cfg = from_dict(MTAJobConfig, read_json(out / "config.json"), str(out / "config.json"))
    logged = read_jsonl(out / "per_user.jsonl", check_user_record)  # read once, whatever the number of tasks
    for task, old in summary.get("mta", {}).items():
        records = [r for r in logged if r.get("key") == old["record_key"]]
        if len(records) != old["n_users"]:
            raise DataError(
                out / "per_user.jsonl",
                field="key",
                problem=f"{len(records)} records under {old['record_key']}, the summary has {old['n_users']}",
            )
        new = summarize(
            task,
            records,
            cfg.eval.methods,
            _uses_labels(task, cfg.eval.inference),
            cfg.eval.calibration,
            out,
            old.get("mta_prior_lambda", 0.0),
            cfg.eval.bootstrap,
        )
        merged = {**old, **new}
        if "bank_amortised" in old.get("bytes_per_user", {}) and merged.get("bytes_per_user"):
            merged["bytes_per_user"]["bank_amortised"] = old["bytes_per_user"]["bank_amortised"]
        summary["mta"][task] = merged
    atomic_write_json(out / "summary.json", summary)
    return summary
