import json

import pytest

from memgas.recipe import MemGASJobConfig, run
from suite.config import ConfigError, load_config
from suite.io import read_jsonl
from tests.conftest import make_locomo


def test_end_to_end_fixture_and_resume(tmp_path):
    data = make_locomo(tmp_path / "locomo.json", n_sessions=8, n_questions=6)
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [f"data={data}"])
    out = tmp_path / "run"
    res = run(cfg, out)["memgas"]["locomo"]
    assert res["n_questions"] == 7  # 6 with evidence + 1 adversarial without
    want = {
        "bm25_session",
        "bm25_turn",
        "dense_session",
        "dense_turn",
        "dense_turn_mean",
        "dense_summary",
        "dense_keywords",
        "no_graph",
        "memgas_paper",
        "memgas",
    }
    assert want <= set(res["methods"])
    for m in res["methods"].values():
        assert m["n_scored"] == 6 and 0 <= m["recall_all@5"] <= 1 and "ndcg_any@50" in m
    # each fixture session talks about one topic and each question names it: BM25 finds them all
    assert res["methods"]["bm25_session"]["recall_all@1"] == 1.0
    assert res["query_ms_p50"] > 0 and res["ingest_sessions_per_s"] > 0 and res["units"] == "extractive"
    # the routers are exercised: their weights vary across questions (a uniform router's would not)
    rw = res["router_weights"]
    assert {"memgas", "memgas_paper"} <= set(rw) and rw["memgas"]["questions"] == 7
    assert max(rw["memgas_paper"]["sd"].values()) > 1e-3
    for m, v in rw.items():
        assert abs(sum(v["mean"].values()) - 1) < 1e-6 and sum(v["top_share"].values()) <= 1 + 1e-9
        if "uniform" in m:  # equal weights: nothing varies and no granularity weighs most
            assert max(v["sd"].values()) < 1e-12 and sum(v["top_share"].values()) == 0
    assert json.loads((out / "summary.json").read_text())["memgas"]["locomo"]["n_questions"] == 7
    log = out / "per_question.jsonl"
    before = log.read_text()
    again = run(cfg, out)["memgas"]["locomo"]
    assert log.read_text() == before and again["methods"] == res["methods"]
    # nothing was re-ingested, yet the resumed summary reports the first pass's ingestion
    assert again["ingest_sessions_per_s"] == res["ingest_sessions_per_s"]
    assert again["ingest_vs_encoder"] > 0 and again["router_weights"] == res["router_weights"]
    assert len(read_jsonl(log)) == 7


def test_qa_path_with_a_local_llm(tmp_path):
    data = make_locomo(tmp_path / "locomo.json", n_sessions=6, n_questions=2)
    cfg = load_config(
        MemGASJobConfig,
        "ray_jobs/configs/memgas_tiny.yaml",
        [f"data={data}", "llm.backend=local", "llm.model=tiny", "eval.qa=true", "ablations=false"],
    )
    res = run(cfg, tmp_path / "qa")["memgas"]["locomo"]
    assert res["qa"]["n"] == 3 and set(res["qa"]) >= {"f1", "em", "bleu1", "rougeL"}
    assert res["units"] == "llm"  # summaries and keywords came from the LLM
    recs = read_jsonl(tmp_path / "qa" / "per_question.jsonl")
    assert all("answer" in r["qa"] for r in recs)


def test_endpoint_dies_mid_run_then_a_rerun_retries_only_failed_questions(tmp_path):
    """The HTTP endpoint stops answering after two questions: the run finishes with the rest marked
    failed; a rerun against a live endpoint redoes only those (and the memory they need)."""
    import threading

    from memgas.llm import LocalLLM
    from memgas.serve import make_server

    local = LocalLLM("tiny", max_length=256)

    def serve(faults):
        srv = make_server(local, "127.0.0.1", 0, faults)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"

    data = make_locomo(tmp_path / "locomo.json", n_sessions=4, n_questions=4)  # 5 questions
    fast = [
        "llm.backend=http",
        "llm.max_retries=2",
        "llm.backoff_s=0.01",
        "llm.timeout_s=10",
        "eval.qa=true",
        "ablations=false",
        f"data={data}",
    ]
    # 4 sessions x (summary, keywords) + 2 questions x (filter, answer) succeed, then the server dies
    srv, url = serve(["ok"] * 12 + ["die"])
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [*fast, f"llm.url={url}"])
    res = run(cfg, tmp_path / "qa")["memgas"]["locomo"]
    assert res["qa"]["n"] == 2 and len(res["qa_failed"]) == 3
    recs = read_jsonl(tmp_path / "qa" / "per_question.jsonl")
    failed = {r["qid"] for r in recs if "failed" in r["qa"]}
    assert len(recs) == 5 and failed == set(res["qa_failed"])
    assert all("LLMError" in r["qa"]["failed"] for r in recs if r["qid"] in failed)
    assert res["methods"]["memgas"]["n_scored"] == 4  # retrieval results of every question survive

    srv2, url2 = serve([])
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [*fast, f"llm.url={url2}"])
    res = run(cfg, tmp_path / "qa")["memgas"]["locomo"]
    srv2.shutdown()
    assert res["qa"]["n"] == 5 and "qa_failed" not in res and res["units"] == "llm"
    assert srv2.requests == 4 * 2 + 3 * 2  # memory rebuilt once, then only the 3 failed questions
    answered = [r for r in read_jsonl(tmp_path / "qa" / "per_question.jsonl") if "answer" in r.get("qa", {})]
    assert sorted(r["qid"] for r in answered) == sorted({r["qid"] for r in recs})


def _multi_locomo(tmp_path, n=3):
    """n LoCoMo conversations (copies of the fixture with their own ids)."""
    one = json.loads(make_locomo(tmp_path / "one.json", n_sessions=6, n_questions=4).read_text())[0]
    convs = [{**one, "sample_id": f"conv-{i}"} for i in range(n)]
    p = tmp_path / "multi.json"
    p.write_text(json.dumps(convs))
    return p


def test_splits_keep_dev_and_test_apart_and_are_recorded(tmp_path):
    data = _multi_locomo(tmp_path, 4)
    seen = {}
    for name in ("dev", "test"):
        cfg = load_config(
            MemGASJobConfig,
            "ray_jobs/configs/memgas_tiny.yaml",
            [f"data={data}", f"split.name={name}", "ablations=false"],
        )
        res = run(cfg, tmp_path / name)["memgas"]["locomo"]
        sp = res["data"]["split"]
        assert sp["name"] == name and sp["dev"] == ["conv-0", "conv-3"] and sp["test"] == ["conv-1", "conv-2"]
        seen[name] = {r["qid"] for r in read_jsonl(tmp_path / name / "per_question.jsonl")}
        assert {r["conv"] for r in read_jsonl(tmp_path / name / "per_question.jsonl")} == set(sp[name])
    assert seen["dev"] and seen["test"] and not seen["dev"] & seen["test"]


def test_changed_config_is_recomputed_not_reused(tmp_path):
    data = make_locomo(tmp_path / "locomo.json", n_sessions=6, n_questions=3)
    base = ["ablations=false", f"data={data}"]
    out = tmp_path / "run"
    run(load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", base), out)
    n0 = len(read_jsonl(out / "per_question.jsonl"))
    res = run(load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", base + ["best.num_seeds=3"]), out)
    recs = read_jsonl(out / "per_question.jsonl")
    assert len(recs) == 2 * n0 and len({r["key"] for r in recs}) == 2  # every question redone under the new key
    assert res["memgas"]["locomo"]["record_key"] == recs[-1]["key"]


def test_per_category_breakdown_and_reference_intervals():
    from memgas.evaluate import summarize

    def rec(cat, a, b):
        m = lambda v: {"recall_all@5": v, "recall_any@5": v, "ndcg_any@5": v, "recall_all@10": v}  # noqa: E731
        return {
            "qid": f"{cat}{a}{b}",
            "category": cat,
            "abstention": False,
            "metrics": {"memgas": m(a), "bm25": m(b)},
            "latency_ms": {},
        }

    recs = (
        [rec("1", 1.0, 0.0)] * 3
        + [rec("2", 0.0, 0.0)] * 2
        + [{"qid": "x_abs", "category": "2", "abstention": True, "metrics": {}, "latency_ms": {}}]
    )
    s = summarize(recs, ["memgas", "bm25"], ks=(5, 10), reference="memgas")
    assert s["by_category"]["1"]["n"] == 3 and s["by_category"]["1"]["memgas"]["recall_all@5"] == 1.0
    assert s["by_category"]["2"]["n"] == 2 and s["by_category"]["2"]["bm25"]["recall_all@5"] == 0.0
    assert s["n_excluded"]["abstention"] == 1
    d = s["vs_reference"]["methods"]["bm25"]
    # 3 of 5 questions worse: the interval excludes 0, yet the exact test cannot establish it (p = 0.25)
    assert d["diff"] == -0.6 and d["ci95"][1] < 0 and d["p"] == 0.25 and d["verdict"] == "n.s."


def test_association_pool_links_session_level_units_only(tmp_path):
    from memgas.data import load_locomo
    from memgas.store import MemGASConfig, MemoryStore
    from suite.encoders import load_encoder

    conv = load_locomo(make_locomo(tmp_path / "l.json", n_sessions=8, n_questions=2))[0]
    cfg = MemGASConfig(encoder="hashing")
    cfg.association.start_session = 1
    store = MemoryStore(cfg, encoder=load_encoder("hashing"))
    for s in conv.sessions:
        store.add(s, "u", s.session_id)
    mem = store.users["u"]
    assert mem.edges
    assert all(mem.node_gran[i] != "turn" and mem.node_gran[j] != "turn" for i, j in mem.edges)


def test_router_weight_stats_tell_a_choosing_router_from_a_uniform_one():
    from memgas.evaluate import router_weight_stats

    recs = [
        {"router": {"uni": {"a": 0.5, "b": 0.5}, "ent": {"a": 0.8, "b": 0.2}}},
        {"router": {"uni": {"a": 0.5, "b": 0.5}, "ent": {"a": 0.3, "b": 0.7}}},
        {"router": {"uni": {"a": 0.5, "b": 0.5}, "ent": {"a": 0.6, "b": 0.4}}},
        {},  # a question no routed method scored
    ]
    s = router_weight_stats(recs)
    assert s["uni"] == {
        "questions": 3,
        "mean": {"a": 0.5, "b": 0.5},
        "sd": {"a": 0.0, "b": 0.0},
        "top_share": {"a": 0.0, "b": 0.0},
    }
    assert s["ent"]["mean"]["a"] == pytest.approx(17 / 30) and s["ent"]["sd"]["a"] > 0.2
    assert s["ent"]["top_share"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}


def _best_file(path, best: dict, ids: list[str], extra: dict | None = None):
    import yaml

    doc = {
        "benchmark": "locomo",
        "memgas": {"encoder": "hashing", "association": {"start_session": 1, "mem_threshold": 10, "n_components": 3}},
        "best": best,
        "selected_on": {"split": "dev", "ids": ids, "data_sha256": "x"},
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_rows_are_named_for_what_they_compute_each_on_its_own_memory(tmp_path):
    """`memgas` must exercise graph and router; an unconstrained winner without them is reported as a
    baseline named for what it computes, on the memory it was selected with; the paper row runs on
    the authors' memory (2 components, k-means init, plain turn mean)."""
    from memgas.recipe import methods_for

    data = make_locomo(tmp_path / "locomo.json", n_sessions=8, n_questions=4)
    best = _best_file(tmp_path / "best.yaml", {"router": "corrected", "use_graph": True}, ["dev-only"])
    hybrid = _best_file(
        tmp_path / "hybrid.yaml",
        {"granularities": ["session", "turn"], "lexical": ["bm25_session"], "router": "uniform", "use_graph": False},
        ["dev-only"],
    )
    ov = [f"data={data}", f"best_from={best}", f"hybrid_from={hybrid}", "ablations=false"]
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", ov)
    res = run(cfg, tmp_path / "run")["memgas"]["locomo"]
    assert {"memgas", "memgas_paper", "hybrid_bm25_dense"} <= set(res["methods"])
    mem = res["configs"]["memories"]
    assert mem["memgas"]["association"]["n_components"] == 3 and mem["memgas"]["turn_mean"] == "normalised"
    assert mem["memgas_paper"]["association"]["n_components"] == 2 and mem["memgas_paper"]["turn_mean"] == "mean"
    assert mem["memgas_paper"]["association"]["init_params"] == "kmeans"
    assert res["configs"]["hybrid"]["name"] == "hybrid_bm25_dense"
    v = res["vs_reference"]["methods"]["hybrid_bm25_dense"]
    # one conversation is one independent unit: whatever the 4 questions say, nothing is established
    # (mutation caught: a per-question test over the conversation's questions)
    assert res["vs_reference"]["n_clusters"] == 1 and "cluster means" in v["test"]
    assert v["p"] == 1.0 and v["verdict"] == "n.s."
    # each row's mechanisms, measured: the hybrid has no graph, so the graph decides none of its places
    att = res["attribution"]
    assert att["hybrid_bm25_dense"]["graph_share"] == 0.0
    for m in ("memgas", "memgas_paper", "hybrid_bm25_dense"):
        assert sum(att[m]["decided_share"].values()) == pytest.approx(1.0)
        assert att[m]["questions"] == res["n_questions"]
    assert res["provenance"]["files"]["data"]["sha256"] and res["provenance"]["config"]["best_from"] == str(best)
    # a `memgas` row without the graph or the router is refused before any work
    flat = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [f"data={data}", "best.use_graph=false"])
    with pytest.raises(ConfigError, match="must use the association graph"):
        methods_for(flat)


def test_a_selection_is_never_reported_on_the_ids_it_was_chosen_on(tmp_path):
    data = make_locomo(tmp_path / "locomo.json", n_sessions=6, n_questions=3)
    best = _best_file(tmp_path / "best.yaml", {"router": "corrected"}, ["conv-x", "conv-y"])
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [f"data={data}", f"best_from={best}"])
    with pytest.raises(ConfigError, match="shares 1 of them"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "per_question.jsonl").exists()
    no_ids = _best_file(tmp_path / "old.yaml", {"router": "corrected"}, [], {"selected_on": {"split": "dev"}})
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [f"data={data}", f"best_from={no_ids}"])
    with pytest.raises(ConfigError, match="records no selection ids"):
        run(cfg, tmp_path / "run2")


def test_resume_key_covers_llm_units_and_code(edited_code):
    """Mutations caught: leaving the LLM, the unit builder, the memory config or the method code out
    of the resume key."""
    from memgas.evaluate import MemEvalConfig, run_key
    from memgas.retrieval import paper_config
    from memgas.store import MemGASConfig

    m, mem = {"memgas": paper_config()}, {"memgas": MemGASConfig()}
    qa = MemEvalConfig(qa=True)
    base = run_key(m, mem, qa, "sha", {"backend": "http", "model": "a"}, "llm")
    assert run_key(m, mem, qa, "sha", {"backend": "http", "model": "b"}, "llm") != base
    assert run_key(m, mem, qa, "sha", {"backend": "http", "model": "a"}, "extractive") != base
    assert (
        run_key(m, {"memgas": MemGASConfig(turn_mean="mean")}, qa, "sha", {"backend": "http", "model": "a"}, "llm")
        != base
    )
    edited_code("memgas/retrieval.py")
    assert run_key(m, mem, qa, "sha", {"backend": "http", "model": "a"}, "llm") != base


def test_qa_on_ray_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="eval.backend=ray"):
        load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", ["eval.qa=true", "eval.backend=ray"])


def test_an_out_of_range_record_is_reported_and_recomputed(tmp_path, capsys):
    """A resume record with the right key but `recall_all@5: 42` (or `metrics: "garbage"`, or a line
    holding `5`) is never averaged in: it is reported with file, line and field, and recomputed."""
    data = make_locomo(tmp_path / "locomo.json", n_sessions=6, n_questions=3)
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [f"data={data}", "ablations=false"])
    out = tmp_path / "run"
    first = run(cfg, out)["memgas"]["locomo"]["methods"]["memgas"]
    log = out / "per_question.jsonl"
    recs = read_jsonl(log)
    recs[0]["metrics"]["memgas"]["recall_all@5"] = 42
    recs[1]["metrics"] = "garbage"
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n5\n")
    again = run(cfg, out)["memgas"]["locomo"]["methods"]["memgas"]
    err = capsys.readouterr().err
    assert "per_question.jsonl: line 1: field metrics.memgas.recall_all@5: 42 is not in [0, 1]" in err
    assert "line 2: field metrics: missing or not a dict" in err and "not a JSON object" in err
    assert again == first  # the two bad records were recomputed, not averaged in


def test_when_no_memgas_proper_configuration_was_found_the_paper_row_is_the_reference(tmp_path):
    """`best_from=none` (the MemGAS-proper sweep accepted no trial): no row is called `memgas`, the
    authors' configuration is the reference and the summary says none was found. Mutation caught:
    the default `best` reported as `memgas` although nothing selected it."""
    data = make_locomo(tmp_path / "locomo.json", n_sessions=8, n_questions=4)
    cfg = load_config(MemGASJobConfig, "ray_jobs/configs/memgas_tiny.yaml", [f"data={data}", "best_from=none"])
    res = run(cfg, tmp_path / "run")["memgas"]["locomo"]
    assert "memgas" not in res["methods"] and not any(m.startswith("memgas_graph") for m in res["methods"])
    assert res["vs_reference"]["reference"] == "memgas_paper" and "memgas_paper" in res["methods"]
    assert res["configs"]["memgas"].startswith("not found") and res["configs"]["selected_on"] == "none found"
