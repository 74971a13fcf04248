"""Security promises: nothing is unpickled from disk, secrets stay in the environment.

Static checks over every module of the suite (an AST walk, so comments and strings do not count)
plus behavioural checks that a pickle-only checkpoint is refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("suite", "mta", "memgas", "ray_jobs", "benchmarks")


def _calls():
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text(), str(f))
            for node in ast.walk(tree):
                yield f, node


def _name(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "<expr>")  # x().eval() is not eval()
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def test_no_unpickling_anywhere_in_the_suite():
    bad = []
    for f, node in _calls():
        where = f"{f.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            if any(
                m.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")
                for m in mods
            ):
                bad.append(f"{where}: imports a pickle module")
        if isinstance(node, ast.Call):
            n = _name(node.func)
            if n == "torch.load" and _kw(node, "weights_only") is not True:
                bad.append(f"{where}: torch.load without weights_only=True")
            if n.endswith("np.load") and _kw(node, "allow_pickle") not in (None, False):
                bad.append(f"{where}: np.load with allow_pickle")
            if n in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                bad.append(f"{where}: {n} (use yaml.safe_load)")
            if n in ("eval", "exec"):
                bad.append(f"{where}: {n}()")
            if _kw(node, "shell") is True:
                bad.append(f"{where}: shell=True")
            if n.endswith("from_pretrained") and n.startswith(("AutoModel", "AutoModelForCausalLM")):
                if _kw(node, "use_safetensors") is None and not any(k.arg is None for k in node.keywords):
                    bad.append(f"{where}: from_pretrained without use_safetensors")
    assert not bad, "\n".join(bad)


def test_a_pickle_only_encoder_checkpoint_is_refused(tmp_path):
    """A hub-style folder holding only pytorch_model.bin (a pickle) must not load."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from suite.encoders import load_encoder, minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = BertModel(
        BertConfig(
            vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    tok.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)safetensors"):
        load_encoder(str(tmp_path))


def test_no_config_field_can_hold_a_secret():
    """Keys are named by environment variable (`api_key_env`), never stored in a config."""
    import dataclasses

    from memgas.recipe import MemGASJobConfig
    from mta.recipe import MTAJobConfig
    from ray_jobs.sweep_memgas import SweepMemGASConfig
    from ray_jobs.sweep_mta import SweepMTAConfig

    def fields(cls, prefix=""):
        for f in dataclasses.fields(cls):
            yield prefix + f.name
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
                yield from fields(f.type, prefix + f.name + ".")
            elif f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
                yield from fields(type(f.default_factory()), prefix + f.name + ".")

    names = [n for cls in (MemGASJobConfig, MTAJobConfig, SweepMTAConfig, SweepMemGASConfig) for n in fields(cls)]
    assert "llm.api_key_env" in names and "job.tracking.project" in names  # the walk reaches nested configs
    import re

    secretish = re.compile(r"(^|_)(api_?key|key|token|secret|password)$")
    leaks = [n for n in names if secretish.search(n.split(".")[-1].lower())]
    assert not leaks, leaks
