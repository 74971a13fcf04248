"""The configuration of MTA's evaluation: data, evaluation and the composed per-task config, with
the checks that make a typo or an unequal tuning budget fail before any work."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from mta.anchors import AnchorConfig
from mta.data import (
    TASKS,
    task_info,
)
from mta.fusion import FusionConfig
from mta.stacking import StackConfig
from mta.training import LoraTrainConfig
from suite.config import ConfigError, from_dict, opt
from suite.models import ModelConfig

MIN_SELECT_USERS = 32  # an experiment's choices rest on at least this many train users ...
MIN_CANDIDATES = 4  # ... among at least this many candidates per trained method
DEFAULT_METHODS = ["base", "rag", "prior", "prior_recency", "oppu", "fusion", "mta", "mta_prior", "uniform", "random"]
# mta_swept: MTA with the fusion and stacking of a sweep's best_config.yaml (eval.swept)
ALL_METHODS = DEFAULT_METHODS + ["mta_swept"]
LABEL_ONLY = {"mta_prior"}  # methods that need label scores (classification / rating tasks)
# what decides the bank a sweep chose on: a swept setting is evaluated only on the same bank
SWEPT_BANK_KEYS = ("encoder", "anchors", "anchor_train")


@dataclass
class DataConfig:
    task: str = opt("LaMP_2", "LaMP task: LaMP_1,2,3,4,5,7")
    root: str = opt(
        "", "data folder (holding LaMP_k/ or the split files); empty = ../shared/data/lamp_like, then download"
    )
    train_split: str = opt("train", "split whose users are anchor candidates")
    eval_split: str = opt("dev", "split whose users are evaluated (`train`: the train users that are not anchors)")
    scheme: Literal["user", "time"] = opt("user", "user | time (official download layout)")
    max_eval_users: int = opt(0, "evaluate the first N users (0 = all)")
    max_train_users: int = opt(0, "anchor candidates kept (0 = all)")
    select_users: int = opt(
        32,
        "train users (not anchors) on which every trained method's settings are chosen (0 = none); "
        f"an experiment needs >= {MIN_SELECT_USERS}",
    )
    select_profile_cap: int = opt(
        10, "newest profile items kept for train users used as few-shot users (selection, sweeps on eval_split=train)"
    )
    download: bool = opt(True, "download the official files when not found locally")
    base_url: str = opt("https://ciir.cs.umass.edu/downloads/LaMP", "official LaMP host")


@dataclass
class EvalConfig:
    methods: list[str] = opt(
        help=f"methods to run, among {ALL_METHODS} (mta_swept is added when eval.swept is set)",
        factory=lambda: list(DEFAULT_METHODS),
    )
    swept: str = opt(
        "",
        "a sweep's best_config.yaml (ray_jobs.sweep_mta): its fusion and stacking are evaluated beside "
        "as method mta_swept, on the same users (chosen by the sweep on train users, never here)",
    )
    selection_from: str = opt(
        "",
        "a selection.json an earlier run of this configuration wrote (OUT/selection.json): its choices "
        "are used instead of choosing again; the users, bank, grids and base settings must match "
        "(checked), so a long experiment can choose in one job and evaluate in another",
    )
    stop_after: Literal["", "select"] = opt(
        "", "select: write OUT/selection.json and stop before any method runs on an evaluated user"
    )
    inference: Literal["auto", "label", "generate"] = opt(
        "auto", "auto (label scoring for classification/rating, else greedy) | label | generate"
    )
    calibration: Literal["auto", "base_content_free", "none"] = opt(
        "auto",
        "primary label-score calibration, the same for every method: auto (base_content_free for "
        "classification, none for rating) | base_content_free (the base model's label scores on the "
        "content-free prompt, no adapter, no history) | none. adapter_content_free and batch are "
        "always reported beside; they depend on the method and never order methods",
    )
    adapter_twin: bool = opt(
        False,
        "also score each method's content-free twin (its own adapter and history, input blanked) to "
        "report the adapter_content_free calibration beside; doubles label scoring",
    )
    rag_k: int = opt(1, "BM25 items in the RAG prompt")
    history_k: int = opt(1, "BM25 items in adapter-method prompts (as in training)")
    max_new_tokens: int = opt(32, "greedy decoding length")
    seed: int = opt(0, "random-anchor baseline seed")
    recency_decay: float = opt(
        0.8, "prior_recency / mta_prior: an item's weight is decay**(its age rank, newest 0)", lo=0, lo_open=True, hi=1
    )
    prior_lambda: float = opt(1.0, "mta_prior: weight of log p_user(label); < 0 = chosen from lambda_grid", lo=None)
    lambda_grid: list[float] = opt(
        help="mta_prior: lambdas tried on the selection users when prior_lambda < 0", factory=list
    )
    stacking_grid: list[dict] = opt(
        help="stacking settings tried on the selection users (train users, never dev), "
        "e.g. [{max_steps: 2, lr: 5e-4}, {r: 2, max_steps: 8}]; the best by the "
        "task's main metric replaces `stacking` (empty = use `stacking`)",
        factory=list,
    )
    oppu_grid: list[dict] = opt(
        help="OPPU settings tried on the same selection users, e.g. [{lr: 1e-4, epochs: 3}, {lr: 1e-3}]; "
        "the best replaces `oppu` (empty = use `oppu`). Every trained method gets the same number of "
        "candidates (a fixed setting counts as one): unequal budgets are refused when the config is read",
        factory=list,
    )
    save_users: bool = opt(
        False, "write each evaluated user's record (anchors, weights, stacked LoRA) to users_dir, as ray_jobs.adapt"
    )
    bootstrap: int = opt(10000, "bootstrap resamples for the paired intervals")
    purpose: Literal["experiment", "pipeline_check"] = opt(
        "experiment",
        "experiment | pipeline_check (a run too small to compare methods, e.g. the demo: "
        "its table is printed without comparisons and the summary says so)",
    )
    progress: bool = opt(True, "progress bar over users")
    backend: Literal["local", "ray"] = opt(
        "local", "local (in the driver) | ray (one Ray task, re-executed from the resume log if its worker dies)"
    )
    cpus: float = opt(2.0, "ray backend: CPUs reserved by the evaluation task", lo=0, lo_open=True)
    gpus: float = opt(0.0, "ray backend: GPUs reserved by the evaluation task")
    max_retries: int = opt(3, "ray backend: re-executions after the task's worker dies")
    fail_at: dict = opt(
        help="fault injection for tests: {after_users: N, marker: PATH} kills the task's worker "
        "once, after its N-th user",
        factory=dict,
    )

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"eval.methods: {unknown or 'empty'} not among {ALL_METHODS}")
        if self.swept and "mta_swept" not in self.methods:
            self.methods = [*self.methods, "mta_swept"]
        if "mta_swept" in self.methods and not self.swept:
            raise ConfigError("eval.methods: mta_swept needs eval.swept (a sweep's best_config.yaml)")

    def budgets(self, label_task: bool = True) -> dict[str, int]:
        """Candidates each trained method chooses among on the selection users (fixed = 1);
        `mta_prior` exists only on label-scored tasks."""
        out = {}
        if "oppu" in self.methods:
            out["oppu"] = len(self.oppu_grid) or 1
        if {"mta", "mta_prior"} & set(self.methods):
            out["mta (stack)"] = len(self.stacking_grid) or 1
        if "mta_prior" in self.methods and label_task:
            out["mta_prior (lambda)"] = len(self.lambda_grid) if self.prior_lambda < 0 else 1
        return out


@dataclass
class MTAConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: str = opt("minilm", "user/anchor encoder: minilm | hashing | hub id / path")
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    anchor_train: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    stacking: StackConfig = field(default_factory=StackConfig)
    oppu: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):  # one tuning budget for every trained method, on train users only
        e = self.eval
        if e.swept:  # a missing file, a bad setting or another bank fails here, before any work
            swept_settings(e.swept, self)
        label_task = _uses_labels(self.data.task, e.inference) if self.data.task in TASKS else True
        if e.prior_lambda < 0 and not e.lambda_grid:
            raise ConfigError("eval.prior_lambda < 0 asks for a choice among eval.lambda_grid, which is empty")
        grids = e.oppu_grid or e.stacking_grid or (e.prior_lambda < 0 and label_task)
        if grids and self.data.select_users <= 0:
            raise ConfigError("eval.*_grid / prior_lambda < 0 choose on train users: data.select_users must be > 0")
        b = e.budgets(label_task)
        if grids and e.purpose == "experiment":  # enough evidence for each choice, checked before any work
            if self.data.select_users < MIN_SELECT_USERS:
                raise ConfigError(
                    f"data.select_users={self.data.select_users}: an experiment chooses its settings on at least "
                    f"{MIN_SELECT_USERS} train users (or set eval.purpose=pipeline_check)"
                )
            few = {m: n for m, n in b.items() if n < MIN_CANDIDATES}
            if few:
                raise ConfigError(
                    f"{few} candidates: an experiment chooses among at least {MIN_CANDIDATES} per trained "
                    "method (eval.oppu_grid, eval.stacking_grid, eval.lambda_grid), or set eval.purpose=pipeline_check"
                )
        if len(set(b.values())) > 1:
            raise ConfigError(
                "unequal tuning budgets: "
                + ", ".join(f"{m}: {n}" for m, n in b.items())
                + " candidates; give every trained method the same number (eval.oppu_grid, "
                "eval.stacking_grid, eval.lambda_grid)"
            )


def _uses_labels(task: str, mode: str) -> bool:
    kind = task_info(task)["kind"]
    return mode == "label" or (mode == "auto" and kind in ("classification", "rating"))


def resolve_calibration(task: str, mode: str) -> str:
    """`auto`: the base model's content-free scores for classification; none for ratings, where
    subtracting the label prior pushes predictions away from the 5 stars most users give (LaMP_3).
    Both are the same for every method."""
    if mode != "auto":
        return mode
    return "none" if task_info(task)["kind"] == "rating" else "base_content_free"


def swept_settings(path: str | Path, cfg: MTAConfig | None = None) -> dict:
    """The fusion and stacking of a sweep's best_config.yaml, for method `mta_swept`:
    {"fusion": FusionConfig, "stacking": StackConfig, "file", "sha256", "selected_by"}. With `cfg`,
    the file must describe the same task and bank (SWEPT_BANK_KEYS, model name): a setting chosen
    on other anchors says nothing about these."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        data = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"eval.swept: {p}: cannot read a best_config.yaml ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("fusion", "stacking")):
        raise ConfigError(f"eval.swept: {p}: no fusion and stacking sections (not a sweep's best_config.yaml)")
    out = {
        "fusion": from_dict(FusionConfig, data["fusion"], f"{p}: fusion"),
        "stacking": from_dict(StackConfig, data["stacking"], f"{p}: stacking"),
        "file": str(p),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "selected_by": next((ln[2:].strip() for ln in raw.decode().splitlines()[1:2] if ln.startswith("# ")), ""),
    }
    if cfg is not None:
        mine = asdict(cfg)
        theirs = {**data, "task": (data.get("data") or {}).get("task"), "model": (data.get("model") or {}).get("name")}
        mine = {**mine, "task": cfg.data.task, "model": cfg.model.name}
        for k in ("task", "model", *SWEPT_BANK_KEYS):
            if theirs.get(k) != mine[k]:
                raise ConfigError(
                    f"eval.swept: {p}: {k} is {theirs.get(k)!r}, this run's is {mine[k]!r}: the sweep chose "
                    "on another task or bank"
                )
    return out
