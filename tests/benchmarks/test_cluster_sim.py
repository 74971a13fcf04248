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
    assert d["head_resources"] == {"CPU": 0} and d["auth_mode"] == "token" and d["logger_level"] == "warning"
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
    from benchmarks.cluster_work import redone

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


def test_the_node_killed_is_the_one_training_a_checkpointed_anchor():
    """Mutation caught: killing the newest node whatever it trains (its anchor may have no
    checkpoint yet: the restore then starts from scratch and reads nothing from storage), or taking
    an anchor's first start line rather than its newest (after a restart it trains elsewhere)."""
    from benchmarks.cluster_sim import node_to_kill

    logs = "\n".join(
        [
            "(RayTrainWorker pid=11) [bank] trainer 0 started on node n1: anchors ['a'], resuming None",
            "(RayTrainWorker pid=12) [bank] trainer 1 started on node n2: anchors ['b'], resuming None",
            "(RayTrainWorker pid=13) [bank] trainer 2 started on node n3: anchors ['c'], resuming None",
            "(RayTrainWorker pid=14) [bank] trainer 1 started on node n4: anchors ['b'], resuming b",
        ]
    )
    ck = ["anchor-0001-a-1234abcd", "anchor-0001-a-1234abcd-step00002", "anchor-0001-b-5678abcd-step00002"]
    assert node_to_kill(["n4", "n1", "n2", "n3"], ck, logs) == "n4"  # a is finished; b is on n4 now
    assert node_to_kill(["n1", "n3"], ck, logs) == "n3"  # b's node is gone: the newest


def test_s3_lists_checkpoints_and_files_are_searched_for_the_secret(tmp_path):
    """Only checkpoints Ray Train has registered count (the full simulation's S3 kill came after
    the upload and before the registration, and the restarted trainer read nothing). Mutation
    caught: counting uploaded checkpoint folders, a listing that ignores the prefix (another
    scenario's checkpoints would trigger the kill), a secret search that skips nested folders, or a
    context that repeats the secret."""
    pytest.importorskip("moto")
    import json
    import os

    from benchmarks.fake_s3 import BUCKET, S3, SNAPSHOT, files_holding, redacted_contexts, registered_under

    before = os.environ.get("AWS_SECRET_ACCESS_KEY")
    s3 = S3()
    try:
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3.secret
        for key in ("x/simbank/anchor-0001-a-1234abcd-step00002/model.safetensors",
                    "x/simbank/anchor-0001-a-1234abcd-step00002/progress.json",
                    "x/simbank/anchor-0001-a-1234abcd/model.safetensors",
                    "x/simbank/driver_state.json", "y/simbank/anchor-0001-b-5678abcd-step00002/p.json"):  # fmt: skip
            s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"1")
        assert s3.checkpoints("x") == []  # uploaded, but Ray Train has registered none yet
        snap = {"checkpoint_results": [{"checkpoint_dir_name": "anchor-0001-a-1234abcd-step00002"}]}
        s3.client.put_object(Bucket=BUCKET, Key=f"x/simbank/{SNAPSHOT}", Body=json.dumps(snap).encode())
        other = {"checkpoint_results": [{"checkpoint_dir_name": "anchor-0001-b-5678abcd-step00002"}]}
        s3.client.put_object(Bucket=BUCKET, Key=f"y/simbank/{SNAPSHOT}", Body=json.dumps(other).encode())
        assert s3.checkpoints("x") == ["anchor-0001-a-1234abcd-step00002"]
        (tmp_path / "st" / "simbank" / "anchor-0001-a-1234abcd-step00004").mkdir(parents=True)
        assert registered_under(tmp_path / "st") == []
        (tmp_path / "st" / "simbank" / SNAPSHOT).write_text(json.dumps(snap))
        assert registered_under(tmp_path / "st") == ["anchor-0001-a-1234abcd-step00002"]
        assert "endpoint_override=" + s3.endpoint in s3.uri("x") and s3.uri("x").startswith(f"s3://{BUCKET}/x?")
        (tmp_path / "a" / "b").mkdir(parents=True)
        (tmp_path / "a" / "b" / "log.txt").write_text("key " + s3.secret)
        (tmp_path / "clean.txt").write_text("nothing")
        assert files_holding(s3.secret, tmp_path) == [str(tmp_path / "a" / "b" / "log.txt")]
        where = redacted_contexts(s3.secret, [str(tmp_path / "a" / "b" / "log.txt")])
        assert where == {str(tmp_path / "a" / "b" / "log.txt"): "key <secret>"}  # says where, never what
    finally:
        s3.stop()
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") == before  # the environment is given back


@pytest.mark.cluster
def test_the_simulated_cluster_autoscales_and_survives_a_node_and_a_driver(tmp_path):
    """The whole simulation (`make cluster-sim` runs the same): the bank from zero workers on an
    autoscaled fake GPU cluster, then with a worker node killed, then with its driver killed and the
    command resubmitted, then with its checkpoints in S3 and a node killed; every bank equals the
    uninterrupted one; a sweep and two evaluations each lose a node and end as their uninterrupted
    runs; no credential reaches a file; nothing is left running.
    Mutation caught: Ray Train without `FailureConfig` (the node-kill job fails), resubmission
    retraining finished anchors from scratch under another run name (different tensors, or none), or
    Tune without `FailureConfig` (the trial on the dead node errors: another best, or a failed job),
    or a kill on a checkpoint uploaded but not yet registered (the S3 run of b432c9e redid 2 steps)."""
    from benchmarks.cluster_sim import SCENARIOS, simulate
    from benchmarks.fake_s3 import BUCKET

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
    k = s["s3_node_kill"]  # the same with checkpoints in S3: restored from the bucket, no credential in a file
    assert k["jobs"][0]["status"] == "SUCCEEDED" and k["max_abs_diff_vs_uninterrupted"] <= 1e-6
    # restored from the bucket: pyarrow's S3 paths are `<bucket>/<key>`, without the scheme
    assert any(f"from checkpoint {BUCKET}/s3_node_kill/" in x for x in k["restores"]), k["restores"]
    assert res["s3"]["secret_found_in"] == []
    for r in (n, d, k):  # each restarted anchor resumed from the newest checkpoint registered at the failure
        assert r["redone_steps"] and all(v["steps_redone"] == 0 for v in r["redone_steps"].values()), r["redone_steps"]
    for kind in ("sweep", "mta_eval", "memgas_eval"):  # a node dies while trials / tasks run: same outcome
        k = s[f"{kind}_node_kill"]
        assert s[kind]["jobs"][0]["status"] == k["jobs"][0]["status"] == "SUCCEEDED" and k["events"]
        assert k["equal_to_uninterrupted"] is True
    for kind in ("mta_eval", "memgas_eval"):
        assert s[f"{kind}_node_kill"]["outcome"]["duplicate_records"] == 0
    assert res["teardown"]["left"] == 0 and not res["teardown"]["temp_left"]


def test_a_retried_trial_is_counted_with_the_steps_it_reported_twice(tmp_path):
    """From a Tune experiment state where one trial failed once and restarted from its start: that
    trial, its failure and the step it reported again; the trial that never failed is not listed.
    Mutation caught: listing every trial, or counting reported steps instead of repeated ones."""
    import json

    from benchmarks.cluster_work import eval_work, sweep_work

    exp = tmp_path / "tune" / "s"
    exp.mkdir(parents=True)
    state = {"trial_data": [[json.dumps({"trial_id": t}), json.dumps({"num_failures": f})] for t, f in
                            [("aa", 0), ("bb", 1)]]}  # fmt: skip
    (exp / "experiment_state-1.json").write_text(json.dumps(state))
    for t, steps in [("aa", [1, 2]), ("bb", [1, 1, 2])]:
        (exp / f"trial_001_{t}").mkdir()
        lines = "".join(json.dumps({"training_iteration": i}) + "\n" for i in steps)
        (exp / f"trial_001_{t}" / "result.json").write_text(lines)
    assert sweep_work(tmp_path) == {"bb": {"failures": 1, "steps_reported": 3, "steps_repeated": 1}}
    assert eval_work([{"processes": 3}]) == {"tasks_in_flight_at_most": 2} and eval_work([]) == {}
