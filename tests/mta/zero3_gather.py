"""Run by test_deepspeed_zero3.py in its own process (one-process torch.distributed group):
train a LoRA under ZeRO-3 with every parameter partitioned, then check the gather before save.
argv: device (cpu|cuda), port, out folder. Prints one JSON line."""

import json
import os
import sys

import torch
import torch.distributed as dist

from mta.adapters import AdapterHost
from mta.bank import read_adapter, save_adapter
from mta.deepspeed_train import gathered_state_dict, train_lora_deepspeed
from mta.training import LoraTrainConfig, Sample
from suite.models import ModelConfig, load_base

device, port, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
T = ["q_proj", "v_proj"]
model, codec = load_base(ModelConfig(name="tiny", device=device, dtype="float32", max_length=256))
host = AdapterHost(model, T)
host.add("anchor", 2, 4, target_modules=T, seed=3)
host.activate(["anchor"], trainable="anchor")
cfg = LoraTrainConfig(r=2, alpha=4, epochs=1, batch_size=2, micro_batch=2, lr=1e-2, warmup_ratio=0.0, target_modules=T)
ds = json.load(open("ray_jobs/configs/deepspeed/zero3.json"))
ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even tiny LoRA tensors
state, engine = train_lora_deepspeed(
    host.model, codec, [Sample(f"item {i}", f"tag {i % 2}") for i in range(4)], cfg, ds, 0, 1
)
raw = host.state_dict("anchor")
sd = gathered_state_dict(host, "anchor")
save_adapter(out, sd, host.lora_config("anchor"))
back, _ = read_adapter(out)
print(
    json.dumps(
        {
            "steps": state.step,
            "raw_numel": sorted({v.numel() for v in raw.values()}),
            "gathered_numel": sorted({v.numel() for v in sd.values()}),
            "saved_equal": set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd),
            "b_nonzero": any(float(v.abs().sum()) > 0 for k, v in sd.items() if "lora_B" in k),
        }
    )
)
dist.destroy_process_group()
