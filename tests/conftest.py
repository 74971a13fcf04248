"""Shared fixtures: LaMP-format tasks written by the tests themselves (never ../shared data),
tiny random models, and an environment that keeps everything offline and on loopback."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

GENRES = {
    "sci-fi": "space ship alien planet robot future",
    "comedy": "funny laugh joke wedding party silly",
    "romance": "love couple heart wedding kiss",
    "action": "explosion chase gun fight hero",
    "true story": "real life biography history war",
}


def make_lamp2(root: Path, split: str, n_users: int, n_items: int, seed: int = 0, prefix: str = "u") -> Path:
    """A LaMP_2-shaped split: each user prefers one genre, items are short synthetic plots."""
    rng = random.Random(seed)
    d = root / "LaMP_2"
    d.mkdir(parents=True, exist_ok=True)
    qs, golds = [], []
    tags = list(GENRES)
    for u in range(n_users):
        fav = tags[u % len(tags)]
        prof = []
        for i in range(n_items):
            tag = fav if rng.random() < 0.7 else rng.choice(tags)
            words = GENRES[tag].split()
            prof.append(
                {
                    "id": f"{prefix}{u}-p{i}",
                    "tag": tag,
                    "date": 1000 + i,
                    "description": "A film about " + " ".join(rng.sample(words, 3)) + ".",
                }
            )
        qid = f"LaMP_2-{split}-{prefix}{u}"
        qs.append(
            {
                "id": qid,
                "user_id": f"{prefix}{u}",
                "profile": prof,
                "input": "Which tag does this movie relate to among the following tags? description: A film about "
                + " ".join(rng.sample(GENRES[fav].split(), 3)),
            }
        )
        golds.append({"id": qid, "output": fav})
    (d / f"{split}_questions.json").write_text(json.dumps(qs))
    (d / f"{split}_outputs.json").write_text(json.dumps({"task": "LaMP_2", "golds": golds}))
    return d


@pytest.fixture
def lamp_root(tmp_path) -> Path:
    root = tmp_path / "lamp"
    make_lamp2(root, "train", n_users=8, n_items=6, seed=1, prefix="t")
    make_lamp2(root, "dev", n_users=4, n_items=4, seed=2, prefix="d")
    return root


@pytest.fixture
def tiny():
    """A fresh tiny model per test: AdapterHost wraps (mutates) the model it is given."""
    from suite.models import ModelConfig, load_base

    return load_base(ModelConfig(name="tiny"))


def make_locomo(path: Path, n_sessions: int = 8, n_questions: int = 6, seed: int = 0) -> Path:
    """A LoCoMo-format file: each session talks about one topic; each question asks about one."""
    rng = random.Random(seed)
    topics = [
        "hiking trip mountains trail",
        "painting sunset canvas",
        "adopting puppy dog shelter",
        "cooking pasta recipe dinner",
        "guitar concert music band",
        "marathon running race",
        "moving new apartment city",
        "camping lake tent fishing",
    ]
    conv = {"speaker_a": "Ann", "speaker_b": "Bob"}
    for s in range(1, n_sessions + 1):
        words = topics[(s - 1) % len(topics)].split()
        conv[f"session_{s}_date_time"] = f"1:00 pm on {s} May, 2023"
        conv[f"session_{s}"] = [
            {
                "speaker": "Ann" if t % 2 == 0 else "Bob",
                "dia_id": f"D{s}:{t + 1}",
                "text": f"I love the {rng.choice(words)} and the {rng.choice(words)} {rng.choice(words)}.",
            }
            for t in range(6)
        ]
    qa = []
    for j in range(n_questions):
        s = j % n_sessions + 1
        words = topics[(s - 1) % len(topics)].split()
        qa.append(
            {
                "question": f"What about the {words[0]} {words[1]}?",
                "answer": words[2],
                "evidence": [f"D{s}:2"],
                "category": 1,
            }
        )
    qa.append({"question": "Adversarial?", "adversarial_answer": "no", "evidence": [], "category": 5})
    path.write_text(json.dumps([{"sample_id": "conv-x", "conversation": conv, "qa": qa}]))
    return path


@pytest.fixture(scope="module")
def ray_local():
    """A loopback-only local Ray per test module (started and shut down around the module)."""
    from suite.ray_local import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def tiny_lora(**kw):
    """The LoRA recipe the bank-training tests use (rank 2 on q/v, lr 1e-2, no warm-up)."""
    from mta.training import LoraTrainConfig

    base = dict(
        r=2,
        alpha=4,
        epochs=1,
        batch_size=2,
        micro_batch=1,
        max_samples=4,
        lr=1e-2,
        warmup_ratio=0.0,
        target_modules=["q_proj", "v_proj"],
    )
    return LoraTrainConfig(**{**base, **kw})


@pytest.fixture
def edited_code(tmp_path, monkeypatch):
    """A copy of the method code (mta/, memgas/, suite/) that code_version() reads instead of the
    checkout; call the returned function to append a line to one of its files (a real code edit)."""
    import shutil

    import suite.provenance as prov
    from suite.io import project_root

    root = tmp_path / "code"
    for d in prov.CODE_DIRS:
        shutil.copytree(project_root() / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(prov, "project_root", lambda: root)
    prov.code_version.cache_clear()

    def edit(rel: str) -> None:
        with open(root / rel, "a") as f:
            f.write("\n# an edit\n")
        prov.code_version.cache_clear()

    yield edit
    prov.code_version.cache_clear()


def free_port() -> int:
    """A loopback port nobody listens on now (for the apps the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
