"""Every numeric setting has a range checked when the config is read; YAML aliases are refused;
an override that is not valid YAML is one ConfigError (the launcher prints one line)."""

import pytest

from memgas.recipe import MemGASJobConfig
from mta.recipe import MTAJobConfig
from suite.config import ConfigError, load_config


@pytest.mark.parametrize(
    "cls, override, match",
    [
        (MemGASJobConfig, "llm.timeout_s=.inf", "not a finite number"),
        (MemGASJobConfig, "split.dev_every=0", r"out of range \[2, inf\]"),
        (MemGASJobConfig, "memgas.association.n_components=-3", "out of range"),
        (MemGASJobConfig, "best.damping=.nan", "not a finite number"),
        (MemGASJobConfig, "best.damping=1.5", r"out of range \[0, 1\]"),
        (MTAJobConfig, "anchor_train.r=0", "out of range"),
        (MTAJobConfig, "anchor_train.lr=.nan", "not a finite number"),
        (MTAJobConfig, "model.max_length=-5", "out of range"),
        (MTAJobConfig, "stacking.lr=0", r"out of range \(0, inf\]"),
        (MTAJobConfig, "data.max_eval_users=" + "9" * 5000, "not a valid value"),
        (MTAJobConfig, "data.max_eval_users=" + "9" * 40, "too large"),
        (MTAJobConfig, "fusion.top_k=[1", "override fusion.top_k: not a valid value"),
    ],
)
def test_out_of_range_values_are_refused_when_the_config_is_read(cls, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(cls, None, [override])


def test_in_range_values_and_sentinels_are_accepted():
    cfg = load_config(
        MTAJobConfig,
        None,
        ["eval.max_new_tokens=32", "eval.prior_lambda=-1", "eval.lambda_grid=[1.0]", "eval.purpose=pipeline_check"],
    )
    assert cfg.eval.max_new_tokens == 32 and cfg.eval.prior_lambda == -1


def test_yaml_aliases_are_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb)
    with pytest.raises(ConfigError, match="aliases"):
        load_config(MTAJobConfig, p)
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ConfigError, match="nested more than 50"):
        load_config(MTAJobConfig, deep)
