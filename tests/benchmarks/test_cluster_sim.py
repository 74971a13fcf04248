"""The fake cluster's configuration is derived from cluster.yaml (the cheap check of issue #33)."""

import pytest
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


def test_the_autoscaler_config_names_the_head_as_the_fake_provider_tags_it():
    """Mutation caught: a head type of our own name ("head.fake"): the autoscaler, not finding the
    running head's type, launches a "head" worker whose shutdown deletes the working dir every fake
    node shares (seen: jobs failing with FileNotFoundError)."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    from benchmarks.fake_cluster import PROVIDER, autoscaler_config

    d = derive("cluster.yaml")
    cfg = autoscaler_config(d, "127.0.0.1:1", idle_timeout_minutes=1.0)
    assert cfg["head_node_type"] == FAKE_HEAD_NODE_TYPE
    assert cfg["available_node_types"][FAKE_HEAD_NODE_TYPE]["max_workers"] == 0
    assert {k: v for k, v in cfg["available_node_types"].items() if k != FAKE_HEAD_NODE_TYPE} == d["worker_node_types"]
    assert cfg["provider"]["module"] == PROVIDER and cfg["provider"]["gcs_address"] == "127.0.0.1:1"
    assert cfg["max_workers"] == d["config"]["max_workers"] and cfg["idle_timeout_minutes"] == 1.0


def test_work_redone_counts_only_the_trainers_that_started_again():
    """Mutation caught: counting every unfinished anchor as interrupted (an anchor whose trainer ran
    on a surviving node would be reported as redone from scratch), or counting start lines rather
    than the worker processes that printed them (Ray echoes a worker's line several times)."""
    from benchmarks.cluster_sim import redone

    events = [{"checkpoints_then": ["anchor-0001-a-1234abcd-step00002", "anchor-0001-a-1234abcd-step00004",
                                    "anchor-0001-b-5678abcd-step00006", "anchor-0001-c-9abcabcd"]}]  # fmt: skip
    logs = "\n".join(
        [
            "(RayTrainWorker pid=11) [bank] trainer 0 started on node n1: anchors ['a'], resuming None",
            "(RayTrainWorker pid=11) [bank] trainer 0 started on node n1: anchors ['a'], resuming None",  # echoed
            "(RayTrainWorker pid=12) [bank] trainer 1 started on node n2: anchors ['b'], resuming None",
            "(RayTrainWorker pid=12) [bank] trainer 1 started on node n2: anchors ['b'], resuming None",
            "(RayTrainWorker pid=13) [bank] trainer 2 started on node n2: anchors ['c'], resuming None",
            "(RayTrainWorker pid=14) [bank] trainer 0 started on node n3: anchors ['a'], resuming a",
            "[bank] resuming: 0 anchor(s) done, in progress: a at step 2",
        ]
    )
    assert redone(events, logs) == {"a": {"checkpointed_step_on_disk": 4, "resumed_from_step": 2, "steps_redone": 2}}


@pytest.mark.cluster
def test_the_simulated_cluster_autoscales_and_survives_a_node_and_a_driver(tmp_path):
    """The whole simulation (`make cluster-sim` runs the same): the bank from zero workers on an
    autoscaled fake GPU cluster, then with a worker node killed, then with its driver killed and the
    command resubmitted; both banks equal the uninterrupted one; a sweep and an evaluation each lose
    a node and end as their uninterrupted runs; nothing is left running.
    Mutation caught: Ray Train without `FailureConfig` (the node-kill job fails), resubmission
    retraining finished anchors from scratch under another run name (different tensors, or none), or
    Tune without `FailureConfig` (the trial on the dead node errors: another best, or a failed job)."""
    from benchmarks.cluster_sim import SCENARIOS, simulate

    res = simulate(tmp_path / "sim", list(SCENARIOS))
    s = res["scenarios"]
    a = s["autoscale"]
    assert a["jobs"][0]["status"] == "SUCCEEDED" and a["max_worker_nodes"] >= 2 and a["released_after_s"] is not None
    assert len(a["placement"]) == 4 and len(set(a["placement"].values())) >= 2  # anchors across nodes
    n = s["node_kill"]
    assert n["jobs"][0]["status"] == "SUCCEEDED" and n["events"] and n["events"][0]["killed"] == "node"
    assert n["max_abs_diff_vs_uninterrupted"] <= 1e-6 and n["anchors"] == 4
    d = s["driver_kill"]
    assert d["jobs"][-1]["status"] == "SUCCEEDED" and d["max_abs_diff_vs_uninterrupted"] <= 1e-6
    for kind in ("sweep", "eval"):  # a node dies while trials / evaluation tasks run: retried, same outcome
        k = s[f"{kind}_node_kill"]
        assert s[kind]["jobs"][0]["status"] == k["jobs"][0]["status"] == "SUCCEEDED" and k["events"]
        assert k["equal_to_uninterrupted"] is True
    assert s["eval_node_kill"]["outcome"]["duplicate_records"] == 0
    assert res["teardown"]["left"] == 0 and not res["teardown"]["temp_left"]
