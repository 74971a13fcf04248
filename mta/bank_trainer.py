"""Stage 1b on Ray Train: a `TorchTrainer` whose workers train a list of anchors one after another,
data parallel across workers (gloo on CPU, NCCL on GPU). The base model is loaded once per worker.

After each anchor, rank 0 reports a checkpoint holding that anchor's adapter and the list of anchors
done so far; every worker calls `ray.train.report`. A restarted worker group resumes from the last
checkpoint and skips finished anchors; the driver installs every reported adapter into the bank.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from mta.adapters import AdapterHost
from mta.bank import Bank, save_adapter, slug
from mta.bank_plan import BankTrainConfig, process_group_backend, trainers_at_once  # noqa: F401 (re-exported)
from mta.deepspeed_train import gathered_state_dict, train_lora_deepspeed
from mta.training import LoraTrainConfig, TrainState, for_adapter, loo_samples, train_anchor
from suite.device import use as use_device
from suite.io import project_root
from suite.models import ModelConfig, load_base
from suite.ray_local import init_ray, started_locally, torch_config
from suite.tracking import Tracker, TrackingConfig

# Ray is imported inside functions on purpose: suite.ray_local must set its loopback-only
# environment before the first `import ray` of a process (Ray reads it at import time).


def _maybe_fail(fail_at: dict, anchor_i: int, step: int, rank: int) -> None:
    """Kill this worker process once (a marker file remembers it), to test recovery."""
    if (
        not fail_at
        or anchor_i != fail_at.get("anchor")
        or step != fail_at.get("step")
        or rank != fail_at.get("rank", 0)
    ):
        return
    marker = Path(fail_at["marker"])
    if not marker.exists():
        import ray.train

        # A preemption comes some time after the last checkpoint: wait until Ray Train has committed
        # every report in flight (a kill within milliseconds of a report would lose it with the worker).
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        marker.write_text(f"killed at anchor {anchor_i} step {step} rank {rank}")
        os._exit(1)


def _report_progress(
    ray_train,
    rank: int,
    done: list[str],
    current: str | None,
    state,
    extra_files: dict,
    metrics: dict,
    name: str,
    all_ranks_files: bool = False,
) -> None:
    """Report a checkpoint (from rank 0, or every rank for sharded DeepSpeed states)."""
    if rank == 0 or all_ranks_files:
        with tempfile.TemporaryDirectory() as tmp:
            for writer in extra_files.values():
                writer(Path(tmp))
            if rank == 0:
                (Path(tmp) / "progress.json").write_text(
                    json.dumps({"done": done, "current": current, "train_state": asdict(state) if state else None})
                )
            ray_train.report(metrics, checkpoint=ray_train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
    else:
        ray_train.report(metrics)


class LossCurves:
    """Anchor training curves for W&B: one run per trainer, a global step across its anchors
    (`train/loss` against step, `train/anchor` the anchor's index), one summary row per anchor."""

    def __init__(self, tracking: dict | None, out_dir: str | Path, name: str, config: dict):
        self.tracker = (
            Tracker(TrackingConfig(**tracking), "bank_train", config, out_dir, name=name, alongside=True)
            if tracking
            else None
        )
        self.step, self.rows = 0, []

    def anchor(self, anchor_id: str, losses: list[float], resumed_from: int = 0) -> None:
        if not self.tracker:
            return
        for i, loss in enumerate(losses):
            self.step += 1
            self.tracker.log(
                {"train/loss": loss, "train/anchor": len(self.rows), "train/anchor_step": i + 1}, step=self.step
            )
        self.rows.append(
            [anchor_id, len(losses), losses[0] if losses else None, losses[-1] if losses else None, resumed_from]
        )

    def finish(self) -> None:
        if self.tracker:
            self.tracker.table("anchors", ["anchor", "steps", "loss_first", "loss_last", "resumed_from"], self.rows)
            self.tracker.finish()


def bank_worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: train the listed anchors one after another."""
    import ray.train

    # 1. This worker: its rank, its device (auto = the one Ray Train assigned) and CPU threads.
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    mcfg, tcfg = ModelConfig(**config["model"]), LoraTrainConfig(**config["train"])
    use_device(mcfg.device)
    strategy, every, fail_at = (
        config.get("strategy", "ddp"),
        int(config.get("checkpoint_every", 0)),
        config.get("fail_at", {}),
    )

    # 2. Resume: the last checkpoint's progress, and its files copied to a folder this worker owns
    #    for the rest of the loop (the checkpoint's own folder is released when the `with` ends).
    local = Path(tempfile.mkdtemp(prefix="bank-resume-"))
    done, resume, resume_dir = [], None, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            shutil.copytree(d, local / "ckpt")
        resume_dir = local / "ckpt"
        prog = json.loads((resume_dir / "progress.json").read_text())
        done, resume = prog["done"], (prog if prog.get("current") else None)
        if rank == 0:
            print(
                f"[bank] resuming: {len(done)} anchor(s) done, in progress: {prog.get('current')} "
                f"at step {(prog.get('train_state') or {}).get('step')}, from checkpoint {ckpt.path}"
            )

    if rank == 0:  # one line per start of this trainer's worker group: a restart after a failure shows as a second
        print(
            f"[bank] trainer {config.get('shard', 0)} started on node {ray.get_runtime_context().get_node_id()}: "
            f"anchors {[a['id'] for a in config['anchors']]}, resuming {resume['current'] if resume else None}"
        )

    # 3. Rank 0 logs loss curves (W&B, offline unless WANDB_API_KEY is set); the other ranks log nothing.
    curves = (
        LossCurves(
            config.get("tracking"),
            config.get("tracking_dir", "."),
            f"bank-trainer-{config.get('shard', 0)}",
            {"task": config["task"], "train": config["train"], "strategy": strategy},
        )
        if rank == 0
        else None
    )

    # 4. The base model, loaded once per worker and shared by all its anchors.
    model, codec = load_base(mcfg)
    host = AdapterHost(model, tcfg.target_modules)

    # 5. Train each anchor not done yet; resume the one in progress from its partial checkpoint.
    for ai, a in enumerate(config["anchors"]):
        if a["id"] in done:
            continue
        t0 = time.perf_counter()
        mine = resume if resume and resume["current"] == a["id"] else None
        resumed_from = mine["train_state"]["step"] if mine else 0
        tag = f"anchor-{len(done) + 1:04d}-{slug(a['id'])}"
        if strategy == "deepspeed":
            sd, conf, state = _train_anchor_deepspeed(
                config, host, codec, a, tcfg, rank, world, done, resume_dir if mine else None, ai
            )
        else:
            init_sd, kw = None, {}
            if mine:
                init_sd = load_file(str(resume_dir / "partial" / "adapter_model.safetensors"))
                kw["state"] = TrainState(**mine["train_state"])
                kw["optimizer_state"] = torch.load(resume_dir / "optimizer.pt", weights_only=True)

            def on_step(state, opt_state, _a=a, _ai=ai, _tag=tag):
                _maybe_fail(fail_at, _ai, state.step, rank)
                if every and state.step % every == 0:
                    files = {}
                    if rank == 0:
                        lora = {k: v.detach().clone() for k, v in host.state_dict("anchor").items()}
                        files = {
                            "lora": lambda d: save_adapter(d / "partial", lora, host.lora_config("anchor")),
                            "opt": lambda d: torch.save(opt_state, d / "optimizer.pt"),
                        }
                    _report_progress(
                        ray.train,
                        rank,
                        done,
                        _a["id"],
                        state,
                        files,
                        {"anchor": _a["id"], "step": state.step, "partial": True},
                        f"{_tag}-step{state.step:05d}",
                    )

            sd, conf, state = train_anchor(
                host,
                codec,
                config["task"],
                a["profile"],
                tcfg,
                init_state_dict=init_sd,
                rank=rank,
                world=world,
                on_step=on_step,
                progress=config.get("progress", False),
                anchor_id=a["id"],
                **kw,
            )
        resume = None

        # 6. Report the finished anchor: rank 0 writes its adapter into the checkpoint and logs its curve.
        if curves:
            curves.anchor(a["id"], state.losses, resumed_from)
        done.append(a["id"])
        metrics = {
            "anchor": a["id"],
            "steps": state.step,
            "resumed_from_step": resumed_from,
            "loss": state.losses[-1] if state.losses else None,
            "seconds": time.perf_counter() - t0,
            "n_done": len(done),
            "partial": False,
            "node_id": ray.get_runtime_context().get_node_id(),  # rank 0's node: the placement a cluster run records
        }

        def write_final(d, _sd=sd, _conf=conf, _m=metrics, _state=state):
            save_adapter(d / "adapter", _sd, _conf)
            (d / "anchor.json").write_text(json.dumps({**_m, "losses": _state.losses}))

        _report_progress(ray.train, rank, done, None, None, {"final": write_final} if rank == 0 else {}, metrics, tag)
    if curves:
        curves.finish()
    shutil.rmtree(local, ignore_errors=True)


def _train_anchor_deepspeed(config, host, codec, a, tcfg, rank, world, done, resume_dir, ai):
    import ray.train

    tcfg = for_adapter(tcfg, "anchor", a["id"])  # the same seed the DDP path derives
    every, fail_at = int(config.get("checkpoint_every", 0)), config.get("fail_at", {})
    samples = loo_samples(config["task"], a["profile"], tcfg.max_samples, tcfg.seed)
    host.add("anchor", tcfg.r, tcfg.alpha, dropout=tcfg.dropout, target_modules=tcfg.target_modules, seed=tcfg.seed)
    host.activate(["anchor"], trainable="anchor")

    def on_step(state, engine):
        _maybe_fail(fail_at, ai, state.step, rank)
        # every rank writes its ZeRO shard; Ray Train merges the workers' files into one checkpoint
        files = {
            "ds": lambda d: engine.save_checkpoint(
                str(d / "ds"), tag="step", client_state={"train_state": {"step": state.step, "losses": state.losses}}
            )
        }
        _report_progress(
            ray.train,
            rank,
            done,
            a["id"],
            state,
            files,
            {"anchor": a["id"], "step": state.step, "partial": True},
            f"anchor-{len(done) + 1:04d}-{slug(a['id'])}-step{state.step:05d}",
            all_ranks_files=True,
        )

    state, engine = train_lora_deepspeed(
        host.model,
        codec,
        samples,
        tcfg,
        config["deepspeed_config"],
        rank,
        world,
        resume_dir=str(resume_dir / "ds") if resume_dir else None,
        on_step=on_step,
        checkpoint_every=every,
    )
    sd = gathered_state_dict(host, "anchor")  # before the engine goes: ZeRO-3 partitions are gathered
    conf = host.lora_config("anchor")
    del engine
    host.remove("anchor")
    return sd, conf, state


def install_checkpoints(bank: Bank, checkpoints) -> list[dict]:
    """Copy every reported anchor adapter not yet in the bank into it (atomic per anchor)."""
    stats = []
    for ckpt in checkpoints:
        with ckpt.as_directory() as d:
            if not (Path(d) / "anchor.json").exists():
                continue  # a mid-anchor checkpoint
            info = json.loads((Path(d) / "anchor.json").read_text())
            if info["anchor"] not in bank.done_ids():
                bank.add_anchor(info["anchor"], Path(d) / "adapter", train_info=info)
            stats.append(info)
    return stats


def train_bank(
    bank: Bank,
    profiles: dict[str, list[dict]],
    task: str,
    model_cfg,
    train_cfg,
    cfg: BankTrainConfig,
    out_dir: str | Path,
    tracking: dict | None = None,
) -> list[dict]:
    """Train every anchor the bank still misses; returns per-anchor stats. With `tracking` (a
    TrackingConfig as a dict), rank 0 of each trainer logs the anchors' loss curves to W&B."""
    missing = bank.missing_ids()
    if not missing:
        return []
    anchors = [{"id": a, "profile": profiles[a]} for a in missing]
    if cfg.backend == "local":
        return _train_local(bank, anchors, task, model_cfg, train_cfg, cfg, tracking, out_dir)
    if cfg.backend != "ray":
        raise ValueError(f"bank backend {cfg.backend!r}: expected ray or local")
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray()
    storage = cfg.storage_path or str(Path(out_dir).resolve() / "ray_results")
    base = cfg.name or f"bank-{slug(str(Path(bank.path).resolve()))}"
    threads = max(1, int(cfg.cpus_per_worker))
    n_par = trainers_at_once(cfg, len(anchors), ray.cluster_resources() if cfg.parallel <= 0 else {})
    ds_path = cfg.deepspeed_config
    if cfg.strategy == "deepspeed" and not Path(ds_path).is_absolute():
        ds_path = str(project_root() / ds_path)
    shards = [anchors[i::n_par] for i in range(n_par)]

    def make_trainer(i: int):
        return TorchTrainer(
            bank_worker_loop,
            train_loop_config={
                "anchors": shards[i],
                "task": task,
                "model": asdict(model_cfg),
                "train": asdict(train_cfg),
                "threads_per_worker": threads,
                "progress": cfg.progress,
                "strategy": cfg.strategy,
                "deepspeed_config": ds_path,
                "checkpoint_every": cfg.checkpoint_every,
                "fail_at": cfg.fail_at,
                "tracking": tracking,
                "tracking_dir": str(Path(out_dir).resolve()),
                "shard": i,
            },
            # NCCL between GPU workers, gloo on CPU (DeepSpeed initialises its own group the same way)
            torch_config=torch_config(
                process_group_backend(cfg, model_cfg.device), Path(out_dir).resolve() / ".rendezvous"
            ),
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.gpus_per_worker > 0,
                resources_per_worker={
                    "CPU": cfg.cpus_per_worker,
                    **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {}),
                },
            ),
            run_config=RunConfig(
                name=base if n_par == 1 else f"{base}-shard{i}of{n_par}",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=None),
                worker_runtime_env={
                    "env_vars": {
                        "TOKENIZERS_PARALLELISM": "false",
                        "OMP_NUM_THREADS": str(threads),
                        **({"GLOO_SOCKET_IFNAME": "lo"} if started_locally() else {}),
                    }
                },
            ),
        )

    def fit(i: int):
        # Ray Train V2 retries worker-group failures (FailureConfig), but a node that dies while the
        # controller polls it can surface as a controller error (ActorUnavailableError), which its
        # policy never retries (seen in the cluster simulation). A new trainer under the same run name
        # and storage restores the run's last checkpoint, so that case is retried here, within the
        # same `max_failures` budget.
        from ray.train import ControllerError

        for attempt in range(cfg.max_failures + 1):
            try:
                return [c for c, _ in make_trainer(i).fit().best_checkpoints]
            except ControllerError as e:
                if attempt == cfg.max_failures:
                    raise
                print(f"[bank] trainer {i}: run failed ({e.__class__.__name__}); restoring from its last checkpoint")

    if n_par == 1:
        return install_checkpoints(bank, fit(0))
    stats = []
    with ThreadPoolExecutor(n_par) as ex:
        # trainers run concurrently; installing (a manifest rewrite) happens here, one at a time
        for fut in as_completed([ex.submit(fit, i) for i in range(n_par)]):
            stats += install_checkpoints(bank, fut.result())
    return stats


def _train_local(
    bank: Bank,
    anchors: list[dict],
    task: str,
    model_cfg,
    train_cfg,
    cfg: BankTrainConfig,
    tracking: dict | None = None,
    out_dir: str | Path = ".",
) -> list[dict]:
    """The same per-anchor training in this process, sequentially (baseline for Ray's overhead)."""
    model, codec = load_base(model_cfg)
    host = AdapterHost(model, train_cfg.target_modules)
    curves = LossCurves(tracking, out_dir, "bank-local", {"task": task, "train": asdict(train_cfg)})
    stats = []
    for a in tqdm(anchors, desc="anchors", disable=not cfg.progress):
        t0 = time.perf_counter()
        sd, conf, state = train_anchor(host, codec, task, a["profile"], train_cfg, anchor_id=a["id"])
        info = {"anchor": a["id"], "steps": state.step, "seconds": time.perf_counter() - t0, "losses": state.losses}
        bank.add_anchor(a["id"], state_dict=sd, lora_config=conf, train_info=info)
        curves.anchor(a["id"], state.losses)
        stats.append(info)
    curves.finish()
    return stats
