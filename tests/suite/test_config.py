from dataclasses import dataclass, field

import pytest

from suite.config import ConfigError, describe, load_config, opt


@dataclass
class Inner:
    top_k: int = opt(2, "anchors")
    temp: float = opt(0.1, "temperature")


@dataclass
class Outer:
    name: str = opt("x", "a name")
    inner: Inner = field(default_factory=Inner)
    items: list[str] = opt(help="things", factory=lambda: ["a"])


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("# cmd\nname: y\ninner:\n  top_k: 5\n")
    cfg = load_config(Outer, p, ["inner.temp=2", "items=[b, c]"])
    assert (cfg.name, cfg.inner.top_k, cfg.inner.temp, cfg.items) == ("y", 5, 2.0, ["b", "c"])


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  topk: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml.inner: unknown key\(s\) \['topk'\]"):
        load_config(Outer, p)


def test_type_errors_and_bad_override():
    with pytest.raises(ConfigError, match="inner.top_k: expected int"):
        load_config(Outer, None, ["inner.top_k=abc"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Outer, None, ["inner.top_k"])


def test_describe_has_help():
    lines = "\n".join(describe(Outer))
    assert "inner.top_k = 2  # anchors" in lines


def test_every_shipped_yaml_loads_and_starts_with_its_command():
    from pathlib import Path

    from mta.recipe import MTAJobConfig

    for p in sorted(Path("ray_jobs/configs").glob("mta_*.yaml")):
        first = p.read_text().splitlines()[0]
        assert first.startswith("# python -m ray_jobs."), p
        assert p.name in first, p
        load_config(MTAJobConfig, p)
