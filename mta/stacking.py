"""Stage 3 — LoRA stacking, all in memory: the frozen fused adapter and a new ultra-low-rank LoRA
(rank 1-4) are active together on one peft model; only the new one trains. The reference exports a
merged full model per user; here nothing per user touches the disk but the small stacked LoRA.

"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch
from safetensors.torch import save as st_save

from mta.adapters import AdapterHost
from mta.fusion import FusedAdapter
from mta.training import LoraTrainConfig, Sample
from suite.config import opt
from suite.models import TextCodec


@dataclass
class StackConfig(LoraTrainConfig):
    r: int = opt(4, "stacked LoRA rank (ultra-low: 1, 2 or 4)", lo=1)
    alpha: int = opt(8, "stacked LoRA alpha", lo=0, lo_open=True)
    lr: float = opt(5e-5, "learning rate (reference 5e-5)", lo=0, lo_open=True)
    epochs: int = opt(1, "epochs over the user's leave-one-out samples (reference 1)")
    batch_size: int = opt(8, "samples per step (reference 8: ~1-2 steps for a 10-item user)", lo=1)
    micro_batch: int = opt(4, "samples per forward pass", lo=1)
    warmup_ratio: float = opt(0.0, "warmup fraction", hi=1)


def adapter_bytes(state_dict: dict[str, torch.Tensor], extra: dict | None = None) -> int:
    """Bytes of what must be stored: the adapter as safetensors plus a JSON record."""
    n = len(st_save({k: v.contiguous() for k, v in state_dict.items()}))
    return n + (len(json.dumps(extra).encode()) if extra else 0)


def stack_user(
    host: AdapterHost,
    fused: FusedAdapter,
    samples: list[Sample],
    cfg: StackConfig,
    codec: TextCodec,
) -> dict:
    """Fuse + stack for one user; leaves ["fused", "stack"] active for inference."""
    t0 = time.perf_counter()
    host.load_fused(fused)
    state = host.train_new("stack", samples, cfg, codec, frozen=["fused"])
    host.activate(["fused", "stack"])
    return {
        "steps": state.step,
        "seconds": time.perf_counter() - t0 + fused.seconds,
        "bytes": adapter_bytes(host.state_dict("stack"), fused.record()),
    }
