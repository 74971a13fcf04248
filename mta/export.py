"""A user's MTA adapter as one standard peft folder (issue #20, part 1).

MTA never stores a user's adapter: it is the fused anchors (a pure function of the bank and the
profile) plus a rank-1..4 stacked LoRA. For serving with tools that load one LoRA per request
(`vllm serve --enable-lora`, `PeftModel.from_pretrained`), the two are combined **exactly** into one
LoRA by concatenation, as peft's `cat` combination does:

    ΔW = s_f·B_f·A_f + s_s·B_s·A_s = [s_f·B_f | s_s·B_s] · [A_f ; A_s]      (scale 1: lora_alpha = r)

no SVD, no cross terms. The rank is then padded with zero rows of A and zero columns of B to the
next rank vLLM accepts (`VLLM_RANKS`, vLLM's `max_lora_rank` choices), which leaves ΔW unchanged.

Pure tensor math (`combine_exact`, `pad_rank`) is kept apart from the one function that writes
(`save_peft`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mta.bank import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter, save_adapter
from suite.io import atomic_dir

# the ranks vLLM's LoRA support accepts (vllm.config.LoRAConfig.max_lora_rank)
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _modules(sd: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k[: -len(".lora_A.weight")] for k in sd if k.endswith(".lora_A.weight"))


def combine_exact(parts: list[tuple[dict[str, torch.Tensor], float]]) -> tuple[dict[str, torch.Tensor], int]:
    """One LoRA whose update is Σ scale_i·B_i·A_i, exactly: A stacked, B concatenated with each
    part's scale folded in (so the result's own scale is 1). Returns (state_dict, rank)."""
    mods = _modules(parts[0][0])
    for sd, _ in parts[1:]:
        if _modules(sd) != mods:
            raise ValueError("the adapters to combine target different modules")
    out, rank = {}, 0
    for m in mods:
        A = torch.cat([sd[f"{m}.lora_A.weight"].float() for sd, _ in parts], 0)
        B = torch.cat([s * sd[f"{m}.lora_B.weight"].float() for sd, s in parts], 1)
        out[f"{m}.lora_A.weight"], out[f"{m}.lora_B.weight"] = A.contiguous(), B.contiguous()
        rank = A.shape[0]
    return out, rank


def vllm_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank`."""
    for r in VLLM_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"rank {rank} is above every rank vLLM accepts ({VLLM_RANKS[-1]})")


def pad_rank(sd: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Zero rows of A and zero columns of B up to `rank`: the update B·A is unchanged."""
    out = {}
    for m in _modules(sd):
        A, B = sd[f"{m}.lora_A.weight"], sd[f"{m}.lora_B.weight"]
        extra = rank - A.shape[0]
        if extra < 0:
            raise ValueError(f"{m}: rank {A.shape[0]} is above the padded rank {rank}")
        out[f"{m}.lora_A.weight"] = torch.cat([A, A.new_zeros(extra, A.shape[1])], 0)
        out[f"{m}.lora_B.weight"] = torch.cat([B, B.new_zeros(B.shape[0], extra)], 1)
    return out


def peft_config(rank: int, target_modules: list[str], base_model: str) -> dict:
    """adapter_config.json of a scale-1 LoRA (lora_alpha = r), in peft's standard fields."""
    from peft import LoraConfig

    from mta.bank import lora_config_dict

    cfg = LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=sorted(target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    return lora_config_dict(cfg)


def user_adapter(
    fused_sd: dict[str, torch.Tensor],
    fused_scale: float,
    stack_sd: dict[str, torch.Tensor] | None = None,
    stack_scale: float = 1.0,
    pad_for_vllm: bool = True,
) -> tuple[dict[str, torch.Tensor], int, int]:
    """The user's adapter as one LoRA: (state_dict, exact rank, rank written)."""
    parts = [(fused_sd, fused_scale)] + ([(stack_sd, stack_scale)] if stack_sd else [])
    sd, rank = combine_exact(parts)
    padded = vllm_rank(rank) if pad_for_vllm else rank
    return pad_rank(sd, padded), rank, padded


def save_peft(out_dir: str | Path, sd: dict[str, torch.Tensor], rank: int, target_modules: list[str], base_model: str):
    """Write a standard peft folder atomically (a folder that is not an adapter is never replaced)."""

    def is_adapter(p: Path) -> bool:
        return (p / ADAPTER_CONFIG).is_file() and (p / ADAPTER_WEIGHTS).is_file()

    with atomic_dir(out_dir, is_own=is_adapter, kind="peft adapter") as tmp:
        save_adapter(tmp, sd, peft_config(rank, target_modules, base_model))
        read_adapter(tmp)  # never publish what cannot be read back
    return Path(out_dir)
