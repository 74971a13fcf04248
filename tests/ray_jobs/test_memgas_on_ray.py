"""memgas_eval with eval.backend=ray: each conversation a Ray task on 2 local workers (loopback);
the driver alone writes the resume log; a rerun finds everything done."""

import json

from memgas.recipe import MemGASJobConfig, run
from suite.config import load_config
from suite.io import read_jsonl


def test_conversations_as_ray_tasks_match_the_local_run(ray_local, tmp_path):
    from tests.memgas.test_memgas_eval import _multi_locomo

    data = _multi_locomo(tmp_path, 2)
    base = [f"data={data}", "ablations=false"]
    local = run(load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", base), tmp_path / "local")
    remote = run(
        load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", base + ["eval.backend=ray", "eval.cpus=1"]),
        tmp_path / "ray",
    )
    a, b = local["memgas"]["locomo"]["methods"], remote["memgas"]["locomo"]["methods"]
    assert a.keys() == b.keys() and all(a[m]["recall_all@5"] == b[m]["recall_all@5"] for m in a)
    recs = read_jsonl(tmp_path / "ray" / "per_question.jsonl")
    assert len(recs) == len({r["qid"] for r in recs}) == local["memgas"]["locomo"]["n_questions"]
    assert not list((tmp_path / "ray").glob(".task-*"))  # the tasks' scratch logs are gone
    before = (tmp_path / "ray" / "per_question.jsonl").read_text()
    run(
        load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", base + ["eval.backend=ray"]), tmp_path / "ray"
    )
    assert (tmp_path / "ray" / "per_question.jsonl").read_text() == before
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["memgas"]["locomo"]["record_key"]
