"""The fake cluster's configuration is derived from cluster.yaml (the cheap check of issue #33)."""

import yaml

from benchmarks.cluster_sim import derive


def test_the_fake_cluster_follows_cluster_yaml(tmp_path):
    """Mutation caught: a hand-written fake config (a change to cluster.yaml would not reach it)."""
    d = derive("cluster.yaml")
    w = d["worker_node_types"]
    assert set(w) == {"worker.gpu.a10g", "worker.gpu.a100"}
    assert w["worker.gpu.a10g"]["resources"]["GPU"] == 4 and w["worker.gpu.a100"]["resources"]["GPU"] == 8
    assert w["worker.gpu.a10g"]["min_workers"] == 0 and w["worker.gpu.a10g"]["max_workers"] == 6
    assert d["head_resources"] == {"CPU": 0} and d["auth_mode"] == "token"
    assert "provider" in d["not_carried"] and "docker" in d["not_carried"]
    # a change to cluster.yaml is what the simulation sees
    c = yaml.safe_load(open("cluster.yaml"))
    c["available_node_types"]["worker.gpu.a100"]["max_workers"] = 5
    c["idle_timeout_minutes"] = 3
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(c))
    d2 = derive(p)
    assert d2["worker_node_types"]["worker.gpu.a100"]["max_workers"] == 5 and d2["config"]["idle_timeout_minutes"] == 3
