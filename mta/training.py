"""Leave-one-out samples with BM25 top-1 history, target-only loss, and the LoRA training loop.

The loop is plain PyTorch so that a test, a Ray Train worker (data parallel, gradients summed with
`torch.distributed`) and a stacking run all call the same `train_lora`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from mta.data import build_prompt, item_query, query_content, render_item
from suite.config import opt
from suite.device import model_device
from suite.lexical import BM25Index
from suite.models import TextCodec

LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraTrainConfig:
    r: int = opt(8, "LoRA rank", lo=1)
    alpha: int = opt(16, "LoRA alpha (scale = alpha / r)", lo=0, lo_open=True)
    dropout: float = opt(0.0, "LoRA dropout", hi=1, hi_open=True)
    target_modules: list[str] = opt(
        help="linear layers adapted (all linear, not lm_head)", factory=lambda: list(LINEAR_MODULES)
    )
    lr: float = opt(1e-4, "peak learning rate", lo=0, lo_open=True)
    epochs: int = opt(3, "passes over the samples (ignored when max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps; 0 = derived from epochs")
    batch_size: int = opt(2, "samples per optimizer step (effective, across workers)", lo=1)
    micro_batch: int = opt(2, "samples per forward pass on one worker (gradient accumulation)", lo=1)
    warmup_ratio: float = opt(0.1, "linear warmup fraction of steps", hi=1)
    scheduler: Literal["cosine", "constant"] = opt("cosine", "cosine | constant")
    max_samples: int = opt(0, "cap on leave-one-out samples per user (0 = all)")
    grad_clip: float = opt(1.0, "max gradient norm (0 = off)")
    seed: int = opt(0, "LoRA init and sample order")


def adapter_seed(run_seed: int, kind: str, ident: str) -> int:
    """A seed of its own for every adapter (anchor, OPPU, stacked LoRA), derived from the run seed
    and the adapter's kind and owner: adapters start from different A matrices (so merges of
    anchors are not sums over one shared A), and reruns are identical."""
    h = hashlib.sha256(f"{run_seed}/{kind}/{ident}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def for_adapter(cfg: LoraTrainConfig, kind: str, ident: str) -> LoraTrainConfig:
    """`cfg` with the seed of adapter (kind, ident): its LoRA init and its sample order."""
    return dataclasses.replace(cfg, seed=adapter_seed(cfg.seed, kind, ident))


@dataclass
class Sample:
    prompt: str
    target: str
    item_id: str = ""


def history_for(
    task: str,
    profile: list[dict],
    query_text: str,
    k: int = 1,
    exclude: set[int] | None = None,
    index: BM25Index | None = None,
) -> list[str]:
    """Rendered BM25 top-k profile items for a query (the reference's `### User History`)."""
    if not profile or k <= 0:
        return []
    index = index or BM25Index([render_item(task, it) for it in profile])
    # the query is the input's content alone, as LaMP retrieves (not the instruction around it)
    return [render_item(task, profile[i]) for i in index.top(query_content(task, query_text), k, exclude)]


def loo_samples(
    task: str, profile: list[dict], max_samples: int = 0, seed: int = 0, history_k: int = 1
) -> list[Sample]:
    """For item i: prompt = history (BM25 top-1 of the *other* items) + task prompt of item i;
    target = item i's output field."""
    index = BM25Index([render_item(task, it) for it in profile]) if len(profile) > 1 else None
    out = []
    for i, it in enumerate(profile):
        inp, target = item_query(task, it)
        hist = history_for(task, profile, inp, history_k, {i}, index) if index else []
        out.append(Sample(build_prompt(inp, hist), target, str(it.get("id", i))))
    if max_samples and len(out) > max_samples:
        out = random.Random(seed).sample(out, max_samples)
    return out


def encode_sample(codec: TextCodec, s: Sample) -> dict[str, list[int]]:
    """input_ids and labels, -100 on prompt tokens: the loss covers the target (+ EOS) only.
    Over-long prompts are cut from the left so the task input and target always survive."""
    t_ids = (codec.ids(s.target) + [codec.eos_id])[: codec.max_length // 2]
    p_ids = codec.prompt_ids(s.prompt, reserve=len(t_ids))
    return {"input_ids": p_ids + t_ids, "labels": [-100] * len(p_ids) + t_ids}


def collate(encoded: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), n), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), n), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), n), dtype=torch.long)
    for i, e in enumerate(encoded):
        L = len(e["input_ids"])
        ids[i, :L] = torch.tensor(e["input_ids"])
        labels[i, :L] = torch.tensor(e["labels"])
        mask[i, :L] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def per_sample_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean target-token NLL of each sample (so long targets do not outweigh short ones)."""
    dev = model_device(model)  # collated batches are built on CPU; the model may be on a GPU
    batch = {k: v.to(dev) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    m = (labels != -100).float()
    return (nll * m).sum(1) / m.sum(1).clamp(min=1)


def total_steps(n: int, cfg: LoraTrainConfig) -> int:
    return cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * math.ceil(n / cfg.batch_size)


def lr_lambda(cfg: LoraTrainConfig, steps: int) -> Callable[[int], float]:
    warm = int(round(cfg.warmup_ratio * steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.scheduler == "constant":
            return 1.0
        prog = (step - warm) / max(1, steps - warm)
        return 0.5 * (1 + math.cos(math.pi * prog))

    return f


def sample_order(n: int, steps: int, cfg: LoraTrainConfig) -> list[int]:
    """Sample indices for `steps` steps: seeded epoch-wise shuffles, identical on every worker."""
    order: list[int] = []
    rng = random.Random(cfg.seed)
    for _ in range(math.ceil(steps * cfg.batch_size / n) + 1):
        perm = list(range(n))
        rng.shuffle(perm)
        order += perm
    return order


@dataclass
class TrainState:
    """What a checkpoint needs to resume mid-run: step counter and optimizer state."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_lora(
    model,
    codec: TextCodec,
    samples: list[Sample],
    cfg: LoraTrainConfig,
    rank: int = 0,
    world: int = 1,
    state: TrainState | None = None,
    optimizer_state: dict | None = None,
    on_step: Callable[[TrainState, torch.optim.Optimizer], None] | None = None,
    progress: bool = False,
) -> TrainState:
    """Train the trainable parameters of `model` (its active LoRA) on `samples`.

    Each optimizer step takes `batch_size` samples in a seeded order identical on all workers;
    worker `rank` computes the ones at positions rank, rank+world, ...; gradients are summed across
    workers, so the update equals the single-process one. `state`/`optimizer_state` resume a run.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (is the LoRA adapter active?)")
    if not samples:
        return state or TrainState()
    opt_ = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps = total_steps(len(samples), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_, lr_lambda(cfg, steps))
    state = state or TrainState()
    if optimizer_state:
        opt_.load_state_dict(optimizer_state["optimizer"])
        sched.load_state_dict(optimizer_state["scheduler"])
    order = sample_order(len(samples), steps, cfg)
    encoded = [encode_sample(codec, s) for s in samples]
    pad = codec.pad_id
    dist = torch.distributed if world > 1 else None  # gradients summed across data-parallel workers
    model.train()
    bar = None
    if progress and rank == 0:
        bar = tqdm(total=steps, initial=state.step, desc="lora", leave=False)
    t0 = time.perf_counter()
    while state.step < steps:
        batch_idx = order[state.step * cfg.batch_size : (state.step + 1) * cfg.batch_size]
        mine = batch_idx[rank::world]
        opt_.zero_grad(set_to_none=False)
        loss_sum = torch.zeros((), device=model_device(model))
        for j in range(0, len(mine), cfg.micro_batch):
            b = collate([encoded[i] for i in mine[j : j + cfg.micro_batch]], pad)
            loss = per_sample_loss(model, b).sum() / len(batch_idx)
            loss.backward()
            loss_sum += loss.detach()
        if dist is not None:
            for p in params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt_.step()
        sched.step()
        state.step += 1
        state.losses.append(float(loss_sum))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss_sum):.3f}")
        if on_step is not None:
            on_step(state, {"optimizer": opt_.state_dict(), "scheduler": sched.state_dict()})
    if bar is not None:
        bar.close()
    state.seconds += time.perf_counter() - t0
    model.eval()
    return state


def train_anchor(
    host,
    codec: TextCodec,
    task: str,
    profile: list[dict],
    cfg: LoraTrainConfig,
    name: str = "anchor",
    init_state_dict: dict | None = None,
    anchor_id: str = "",
    **train_kw,
) -> tuple[dict, dict, TrainState]:
    """Stage 1b for one anchor: a fresh LoRA (or one resumed from `init_state_dict`) trained on its
    leave-one-out samples. Returns (state_dict in standard peft keys, adapter config dict, train
    state); the adapter is removed from `host` afterwards. The LoRA init and sample order come from
    the seed of (run seed, anchor_id)."""
    cfg = for_adapter(cfg, "anchor", anchor_id or name)
    samples = loo_samples(task, profile, cfg.max_samples, cfg.seed)
    host.add(
        name,
        cfg.r,
        cfg.alpha,
        state_dict=init_state_dict,
        dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        seed=cfg.seed,
    )
    host.activate([name], trainable=name)
    state = train_lora(host.model, codec, samples, cfg, **train_kw)
    sd = {k: v.detach().clone() for k, v in host.state_dict(name).items()}
    conf = host.lora_config(name)
    host.remove(name)
    return sd, conf, state
