"""One PeftModel per run hosting named LoRA adapters that are swapped in and out, so every method
(base, OPPU, fusion, MTA, ...) and every anchor is trained and evaluated on the same base weights,
loaded once. Several adapters can be active at once (fused + stacked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from mta.bank import lora_config_dict
from mta.training import LoraTrainConfig, Sample, TrainState, train_lora
from suite.models import TextCodec

if TYPE_CHECKING:  # fusion imports nothing from here, but the annotation is all we need
    from mta.fusion import FusedAdapter

IDLE = "_idle"


class AdapterHost:
    def __init__(self, base_model, target_modules: list[str]):
        # An idle rank-1 adapter with B = 0 keeps a PeftModel alive between users (an exact no-op).
        self.model = get_peft_model(
            base_model, LoraConfig(r=1, lora_alpha=1, target_modules=target_modules), adapter_name=IDLE
        )
        self.targets = target_modules
        self.deactivate()

    def deactivate(self):
        self.model.base_model.set_adapter(IDLE)
        self._freeze_all()

    def _freeze_all(self):
        for p in self.model.parameters():
            p.requires_grad_(False)

    def add(
        self,
        name: str,
        r: int,
        alpha: float,
        state_dict: dict | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        if name in self.model.peft_config:
            self.remove(name)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model.add_adapter(
                name,
                LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or self.targets),
            )
        if state_dict is not None:
            res = set_peft_model_state_dict(self.model, state_dict, adapter_name=name)
            bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
            if bad:
                raise ValueError(f"adapter {name}: {len(bad)} unexpected keys, e.g. {bad[0]}")

    def remove(self, name: str) -> None:
        if name in self.model.peft_config:
            self.deactivate()
            self.model.delete_adapter(name)

    def activate(self, names: list[str], trainable: str | None = None) -> None:
        self.model.base_model.set_adapter(names if len(names) > 1 else names[0])
        self._freeze_all()
        if trainable:
            for n, p in self.model.named_parameters():
                if f".{trainable}." in n and "lora_" in n:
                    p.requires_grad_(True)

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.model, adapter_name=name)

    def load_fused(self, fused: FusedAdapter, name: str = "fused") -> None:
        self.add(name, fused.r, fused.alpha, fused.state_dict, target_modules=fused.target_modules)

    def train_new(
        self,
        name: str,
        samples: list[Sample],
        cfg: LoraTrainConfig,
        codec: TextCodec,
        frozen: list[str] = (),
        **train_kw,
    ) -> TrainState:
        """Add LoRA `name`, activate it on top of the frozen adapters `frozen`, train only it."""
        self.add(name, cfg.r, cfg.alpha, dropout=cfg.dropout, target_modules=cfg.target_modules, seed=cfg.seed)
        self.activate(list(frozen) + [name], trainable=name)
        return train_lora(self.model, codec, samples, cfg, **train_kw)

    def lora_config(self, name: str) -> dict:
        return lora_config_dict(self.model.peft_config[name])
