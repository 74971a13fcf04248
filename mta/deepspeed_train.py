"""The LoRA training loop under DeepSpeed (ZeRO-2 by default, ZeRO-3 for models that do not fit).

Same samples, order and schedule as `training.train_lora`; the DeepSpeed engine averages gradients
across data-parallel workers and accumulation steps. `"auto"` entries of the JSON config are filled
from the `LoraTrainConfig` and the hardware (bf16 only on GPU). LoRA weights are gathered from their
ZeRO-3 partitions before saving (`gathered_state_dict`), so no adapter is ever saved empty. On CPU,
pass a plain torch optimizer (DeepSpeedCPUAdam compiles for ~50 s and ~6 GB).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mta.training import (
    LoraTrainConfig,
    Sample,
    TrainState,
    collate,
    encode_sample,
    lr_lambda,
    sample_order,
    total_steps,
)
from suite.models import TextCodec


def fill_ds_config(path_or_dict, cfg: LoraTrainConfig, world: int) -> dict:
    ds = json.loads(Path(path_or_dict).read_text()) if not isinstance(path_or_dict, dict) else dict(path_or_dict)
    if cfg.batch_size % (cfg.micro_batch * world):
        raise ValueError(
            f"anchor_train.batch_size={cfg.batch_size} must be a multiple of "
            f"anchor_train.micro_batch={cfg.micro_batch} x workers={world}"
        )
    auto = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.batch_size // (cfg.micro_batch * world),
        "train_batch_size": cfg.batch_size,
        "gradient_clipping": cfg.grad_clip,
    }
    for k, v in auto.items():
        if ds.get(k, "auto") == "auto":
            ds[k] = v
    if ds.get("bf16", {}).get("enabled") == "auto":
        ds["bf16"] = {"enabled": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}
    return ds


def gathered_state_dict(host, name: str) -> dict[str, torch.Tensor]:
    """The adapter's full tensors, gathered from ZeRO-3 partitions when needed (a no-op otherwise)."""
    import deepspeed

    params = [p for n, p in host.model.named_parameters() if f".{name}." in n]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {k: v.detach().clone().cpu() for k, v in host.state_dict(name).items()}


def train_lora_deepspeed(
    model,
    codec: TextCodec,
    samples: list[Sample],
    cfg: LoraTrainConfig,
    ds_config,
    rank: int,
    world: int,
    resume_dir: str | None = None,
    on_step=None,
    checkpoint_every: int = 0,
) -> tuple[TrainState, object]:
    """Train the active LoRA of `model` with DeepSpeed. `on_step(state, engine)` runs every
    `checkpoint_every` steps (to save a resumable checkpoint); `resume_dir` restores one."""
    import deepspeed

    ds = fill_ds_config(ds_config, cfg, world)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = total_steps(len(samples), cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, optimizer=opt, lr_scheduler=sched, config=ds
    )
    state = TrainState()
    if resume_dir:
        _, client = engine.load_checkpoint(resume_dir, load_module_strict=False)
        state = TrainState(**(client or {}).get("train_state", {}))
    order = sample_order(len(samples), steps, cfg)
    encoded = [encode_sample(codec, s) for s in samples]
    pad = codec.pad_id
    engine.train()
    while state.step < steps:
        mine = order[state.step * cfg.batch_size : (state.step + 1) * cfg.batch_size][rank::world]
        total = 0.0
        for j in range(0, len(mine), cfg.micro_batch):
            b = collate([encoded[i] for i in mine[j : j + cfg.micro_batch]], pad)
            b = {k: v.to(engine.device) for k, v in b.items()}
            out = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            engine.backward(out.loss)
            engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
            total += float(out.loss.detach())
        state.step += 1
        state.losses.append(total / max(1, math.ceil(len(mine) / cfg.micro_batch)))
        if on_step is not None and checkpoint_every and state.step % checkpoint_every == 0 and state.step < steps:
            on_step(state, engine)
    engine.eval()
    return state, engine
