"""Crash consistency: writers of a bank, a memory store and results files are SIGKILLed at every
line of their write path (tests/crash.py); every reload must see the old or the new state, never a
mix, verification must pass, and a rerun must finish the job with each item exactly once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memgas.association import AssociationConfig
from memgas.store import MemGASConfig, MemoryStore, StoreError
from mta.bank import Bank, BankError
from suite import io as sio
from suite.encoders import HashingEncoder
from suite.io import append_jsonl, atomic_write_json, read_json, read_jsonl
from tests.crash import WRITE_PATH, crash_at, line_count

CONF = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "peft_type": "LORA"}
IDS = ["a", "b"]


def _sd(v: float) -> dict[str, torch.Tensor]:
    return {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.full((2, 8), v),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.full((8, 2), -v),
    }


def _points(total: int, cap: int = 160) -> list[int]:
    step = max(1, total // cap)
    return sorted(set(range(1, total + 1, step)) | {total})


# ------------------------------------------------------------------------------------------- bank
def _train_bank(path, version: float = 1.0):
    """What pretrain_bank does: plan (or reopen) the bank, install each missing anchor."""
    bank = Bank.create(path, IDS, np.eye(2, 3), {"task": "LaMP_2"}, [3, 3])
    for aid in bank.missing_ids():
        bank.add_anchor(aid, state_dict=_sd(version + IDS.index(aid)), lora_config=CONF)


def _check_bank(path, allowed: dict[str, set[float]]) -> list[str]:
    """The bank on disk is a consistent state: verified, done anchors hold one allowed version."""
    if not (path / "manifest.json").exists():
        with pytest.raises(BankError, match="no bank here"):
            Bank(path)
        return []
    bank = Bank(path)
    bank.verify()  # a checksum mismatch here would be a torn state
    done = bank.done_ids()
    assert done == IDS[: len(done)]  # anchors land in order, each complete
    if done:
        loaded = bank.load(require_complete=False)
        for aid, sd in zip(loaded.ids, loaded.adapters):
            a = sd["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
            assert float(a[0, 0]) in allowed[aid] and torch.all(a == a[0, 0])
    return done


def test_bank_killed_at_every_line_of_a_build_then_resumed(tmp_path):
    files = WRITE_PATH + ("mta/bank.py",)
    _train_bank(tmp_path / "warm")  # first calls run one-time init lines (tempfile, imports)
    total = line_count(lambda: _train_bank(tmp_path / "count"), files)
    assert total > 50
    seen = set()
    for n in _points(total):
        path = tmp_path / f"b{n}"
        assert crash_at(lambda: _train_bank(path), n, files)
        seen.add(tuple(_check_bank(path, {"a": {1.0}, "b": {2.0}})))
        _train_bank(path)  # rerun: trains what is missing
        loaded = Bank(path).load()
        assert loaded.ids == IDS
        # every anchor exactly once: one folder each, stale temp folders collected on reopen
        Bank.create(path, IDS, np.eye(2, 3), {})
        assert sorted(p.name.rsplit("-", 2)[0] for p in (path / "anchors").iterdir()) == IDS
    assert {(), ("a",), ("a", "b")} <= seen  # the kills landed before, between and after installs


def test_bank_killed_while_replacing_an_anchor(tmp_path):
    files = WRITE_PATH + ("mta/bank.py",)
    base = tmp_path / "base"
    _train_bank(base)

    def replace(path):
        Bank(path).add_anchor("a", state_dict=_sd(9.0), lora_config=CONF)

    import shutil

    shutil.copytree(base, tmp_path / "count")
    shutil.copytree(base, tmp_path / "warm")
    replace(tmp_path / "warm")
    total = line_count(lambda: replace(tmp_path / "count"), files)
    versions = set()
    for n in _points(total):
        path = tmp_path / f"r{n}"
        shutil.copytree(base, path)
        assert crash_at(lambda: replace(path), n, files)
        assert _check_bank(path, {"a": {1.0, 9.0}, "b": {2.0}}) == IDS
        versions.add(
            float(Bank(path).load().adapters[0]["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"][0, 0])
        )
    assert versions == {1.0, 9.0}


def test_corrupted_anchor_is_reported_by_checksum(tmp_path):
    _train_bank(tmp_path / "b")
    bank = Bank(tmp_path / "b")
    f = bank.path / bank.manifest["anchors"][0]["dir"] / "adapter_model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(
        BankError, match=r"adapter_model.safetensors: checksum mismatch for anchor 'a' \(bank corrupted\)"
    ):
        Bank(tmp_path / "b").load()


# ------------------------------------------------------------------------------------------ store
def _store(n_sessions: int) -> MemoryStore:
    st = MemoryStore(
        MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1)), encoder=HashingEncoder(dim=64)
    )
    topics = ["hiking trail", "guitar band", "pasta dinner", "puppy shelter"]
    for i in range(n_sessions):
        st.add([{"role": "user", "content": f"we talked about {topics[i % 4]} number {i}"}], "ann", f"s{i}")
    return st


def _signature(st: MemoryStore):
    return [r["session_id"] for r in st.search("guitar band", "ann", 10)["results"]]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_store_killed_at_every_line_of_a_save(tmp_path, monkeypatch, exchange):
    if not exchange:  # the fallback for kernels/filesystems without RENAME_EXCHANGE
        monkeypatch.setattr(sio, "_exchange_ok", False)
    elif not sio.exchange_paths(*(lambda a, b: (a.mkdir(), b.mkdir(), a, b)[2:])(tmp_path / "x", tmp_path / "y")):
        pytest.skip("renameat2(RENAME_EXCHANGE) unsupported here")
    old, new = _store(3), _store(4)
    expected = {3: _signature(old), 4: _signature(new)}
    old.save(tmp_path / "count")
    files = WRITE_PATH + ("memgas/folder.py",)  # where a folder snapshot is written
    old.save(tmp_path / "warm")
    new.save(tmp_path / "warm", overwrite=True)  # `new` was not loaded from there: replacing is on purpose
    total = line_count(lambda: new.save(tmp_path / "count", overwrite=True), files)
    seen = set()
    for n in _points(total, cap=120):
        path = tmp_path / f"m{n}"
        old.save(path, overwrite=True)
        assert crash_at(lambda: new.save(path, overwrite=True), n, files)
        back = MemoryStore.load(path, encoder=HashingEncoder(dim=64))  # never StoreError: old or new
        k = len(back.users["ann"].sessions)
        assert _signature(back) == expected[k]
        seen.add(k)
    assert seen == {3, 4}


def test_first_store_save_killed_leaves_nothing_or_everything(tmp_path):
    st = _store(2)
    files = WRITE_PATH + ("memgas/folder.py",)  # where a folder snapshot is written
    st.save(tmp_path / "warm")
    total = line_count(lambda: st.save(tmp_path / "count"), files)
    for n in _points(total, cap=60):
        path = tmp_path / f"f{n}"
        assert crash_at(lambda: st.save(path), n, files)
        try:
            back = MemoryStore.load(path, encoder=HashingEncoder(dim=64))
        except StoreError as e:
            assert "no memory store here" in str(e)
        else:
            assert _signature(back) == _signature(st)


# ---------------------------------------------------------------------------------------- results
def test_results_files_killed_mid_write(tmp_path):
    """summary.json (atomic replace) and per_question.jsonl (append + fsync, torn tail dropped)."""
    files = WRITE_PATH + ("suite/io.py",)
    old = {"methods": {"bm25": {"recall": 0.5}}}
    new = {"methods": {"bm25": {"recall": 0.5}, "memgas": {"recall": 0.7}}, "pad": "x" * 100_000}

    def write(d):
        atomic_write_json(d / "summary.json", new)
        append_jsonl(d / "log.jsonl", {"qid": "q3", "pad": "y" * 100_000})

    d0 = tmp_path / "count"
    d0.mkdir()
    (tmp_path / "warm").mkdir()
    write(tmp_path / "warm")
    total = line_count(lambda: write(d0), files)
    for n in _points(total):
        d = tmp_path / f"r{n}"
        d.mkdir()
        atomic_write_json(d / "summary.json", old)
        for q in ("q1", "q2"):
            append_jsonl(d / "log.jsonl", {"qid": q})
        assert crash_at(lambda: write(d), n, files)
        assert read_json(d / "summary.json") in (old, json.loads(json.dumps(new)))
        assert [r["qid"] for r in read_jsonl(d / "log.jsonl")] in (["q1", "q2"], ["q1", "q2", "q3"])
        append_jsonl(d / "log.jsonl", {"qid": "q4"})  # the resumed run appends after a torn tail
        assert [r["qid"] for r in read_jsonl(d / "log.jsonl")][-1] == "q4"


def test_torn_jsonl_tail_is_dropped_and_rewritten(tmp_path):
    p = tmp_path / "log.jsonl"
    append_jsonl(p, {"qid": "q1"})
    with open(p, "a") as f:
        f.write('{"qid": "q2", "metr')  # what a kill mid-line leaves
    assert [r["qid"] for r in read_jsonl(p)] == ["q1"]
    append_jsonl(p, {"qid": "q2"})
    assert [r["qid"] for r in read_jsonl(p)] == ["q1", "q2"]
