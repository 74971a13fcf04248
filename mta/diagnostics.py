"""Does an adapter actually change the model? ||ΔW|| / ||W|| per adapted module, ΔW = scale·B·A.

Pure tensor math (`relative_update`) apart from the one helper that reads base weights out of a
peft model (`base_weights`). The bank reports the mean over modules for every anchor.
"""

from __future__ import annotations

import torch


def relative_update(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scale: float) -> dict[str, float]:
    """{module: ||scale·B·A||_F / ||W||_F} for every module of `adapter` (standard peft keys)."""
    out = {}
    for key, A in adapter.items():
        if not key.endswith(".lora_A.weight"):
            continue
        mod = key[: -len(".lora_A.weight")]
        B = adapter[f"{mod}.lora_B.weight"]
        if mod not in base:
            raise KeyError(f"adapter module {mod} has no base weight")
        dw = scale * (B.float() @ A.float())
        out[mod] = float(dw.norm() / base[mod].float().norm().clamp(min=1e-12))
    return out


def base_weights(peft_model) -> dict[str, torch.Tensor]:
    """Base linear weights of a peft model keyed like its LoRA state dict (module path)."""
    return {
        name: m.base_layer.weight
        for name, m in peft_model.named_modules()
        if hasattr(m, "base_layer") and hasattr(m.base_layer, "weight")
    }


def plain_base_weights(model, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base weights of a model not wrapped by peft, keyed like `adapter`'s modules
    (`base_model.model.<path>`): reading them never wraps or changes the model."""
    out = {}
    for key in adapter:
        if key.endswith(".lora_A.weight"):
            mod = key[: -len(".lora_A.weight")]
            path = mod[len("base_model.model.") :] if mod.startswith("base_model.model.") else mod
            out[mod] = model.get_submodule(path).weight
    return out


def mean_relative_update(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scale: float) -> float:
    r = relative_update(base, adapter, scale)
    return float(sum(r.values()) / max(1, len(r)))


def peft_relative_update(peft_model, adapter: dict[str, torch.Tensor], scale: float) -> float:
    """Mean ||scale·B·A|| / ||W|| of an adapter hosted on a peft model (OPPU's LoRA, the stack):
    the base weight of each module is its LoRA layer's `base_layer`."""
    base = {}
    for key in adapter:
        if key.endswith(".lora_A.weight"):
            mod = key[: -len(".lora_A.weight")]
            base[mod] = peft_model.get_submodule(mod).base_layer.weight
    return mean_relative_update(base, adapter, scale)
