"""ZeRO-3 partitions the LoRA tensors: saved without a gather they would be 0-element placeholders.
`gathered_state_dict` is what the bank saves; here checked on CPU (gloo, one process) with every
parameter partitioned. The same check on GPU is in tests/gpu."""

import json
import socket
import subprocess
import sys


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_zero3(device: str, out) -> dict:
    p = subprocess.run(
        [sys.executable, "tests/mta/zero3_gather.py", device, str(_port()), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_zero3_adapter_is_gathered_before_save(tmp_path):
    r = run_zero3("cpu", tmp_path / "adapter")
    assert r["steps"] == 2
    assert r["raw_numel"] == [0]  # the trap is real: un-gathered LoRA tensors are empty
    assert 0 not in r["gathered_numel"] and r["saved_equal"] and r["b_nonzero"]
