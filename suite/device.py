"""One device rule for the whole suite.

Every model, adapter, encoder and tensor the suite creates goes to `current()`. The rule is set once
per process from the job config's `device` (`use(spec)`), and resolved as:

- `cpu`, `cuda`, `cuda:N`: exactly that; asking for CUDA where there is none fails at once
  (before any training), naming what torch sees;
- `auto`: inside a Ray Train worker the device Ray Train assigned (`ray.train.torch.get_device()`,
  which honours `CUDA_VISIBLE_DEVICES`), else the first CUDA device when there is one, else CPU.

The dtype follows the device: bfloat16 where the GPU supports it, float32 on CPU (`dtype=auto`).
"""

from __future__ import annotations

import re

import torch

from suite.config import ConfigError

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")

_current: torch.device | None = None


def check_spec(spec: str, where: str = "device") -> str:
    """`spec` if it is a device string the suite understands; ConfigError otherwise (at parse time)."""
    if not isinstance(spec, str) or not DEVICE_SPEC.match(spec):
        raise ConfigError(f"{where}: {spec!r} is not a device; expected auto, cpu, cuda or cuda:N")
    return spec


def check_dtype(name: str, where: str = "dtype") -> str:
    if name not in DTYPES:
        raise ConfigError(f"{where}: {name!r} is not one of {list(DTYPES)}")
    return name


def _train_worker_device() -> torch.device | None:
    """The device Ray Train gave this worker, or None outside a Ray Train worker."""
    try:
        import ray.train
        import ray.train.torch

        ray.train.get_context().get_world_rank()  # raises outside a Train worker
    except Exception:  # noqa: BLE001 - not in a Train worker (or Ray not installed)
        return None
    try:
        return ray.train.torch.get_device()
    except Exception:  # noqa: BLE001
        return None


def resolve(spec: str = "auto") -> torch.device:
    """The torch.device for `spec` in this process (see the module docstring)."""
    check_spec(spec)
    if spec == "auto":
        dev = _train_worker_device()
        if dev is not None:
            return dev
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={spec!r} but CUDA is not available in this process (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}); use device=auto or device=cpu"
            )
        dev = torch.device(spec if ":" in spec else "cuda:0")
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return dev
    return torch.device("cpu")


def use(spec: str = "auto") -> torch.device:
    """Resolve `spec` and make it this process's device; returns it."""
    global _current
    _current = resolve(spec)
    if _current.type == "cuda":
        torch.cuda.set_device(_current)
    return _current


def current() -> torch.device:
    """This process's device (`use` it first; otherwise `auto`)."""
    return _current if _current is not None else resolve("auto")


def dtype_for(device: torch.device, name: str = "auto") -> torch.dtype:
    """The model dtype: `auto` = bfloat16 on a GPU that supports it, float32 otherwise."""
    check_dtype(name)
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def model_device(model) -> torch.device:
    """Where a model's parameters live (PeftModel, DeepSpeed engine or plain module)."""
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


def describe(device: torch.device | None = None, dtype: torch.dtype | None = None) -> dict:
    """What `summary.json` states about where a run ran."""
    device = device or current()
    out = {"device": str(device), "dtype": str(dtype or dtype_for(device)).replace("torch.", "")}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
