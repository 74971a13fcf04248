import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mta import data as D
from suite.io import DataError


def _write(p, obj):
    p.write_text(json.dumps(obj))
    return p


def test_load_groups_by_user_and_attaches_golds(lamp_root):
    users = D.load_task_split("LaMP_2", "dev", str(lamp_root), download=False)
    assert len(users) == 4 and all(len(u.queries) == 1 and u.queries[0].gold for u in users)
    assert users[0].profile[0]["tag"] in D.TASKS["LaMP_2"]["labels"]


@pytest.mark.parametrize(
    "mutate,record,field",
    [
        (lambda q: q[1].pop("input"), "Q1", "input"),
        (lambda q: q[1].__setitem__("profile", []), "Q1", "profile"),
        (lambda q: q[1]["profile"][0].pop("description"), "Q1 profile[0]", "description"),
        (lambda q: q[1]["profile"][0].__setitem__("tag", "western"), "Q1 profile[0]", "tag"),
        (lambda q: q[1]["profile"][0].__setitem__("description", 5), "Q1 profile[0]", "description"),
        (lambda q: q[1].__setitem__("id", "Q0"), "Q0", "id"),
    ],
)
def test_bad_records_name_file_record_field(tmp_path, mutate, record, field):
    item = {"id": "p0", "description": "d", "tag": "comedy"}
    qs = [{"id": f"Q{i}", "input": "x", "profile": [dict(item)]} for i in range(2)]
    mutate(qs)
    f = _write(tmp_path / "dev_questions.json", qs)
    with pytest.raises(DataError) as e:
        D.load_lamp(f, None, "LaMP_2")
    assert e.value.file == str(f) and e.value.record == record and e.value.field == field
    assert "dev_questions.json" in str(e.value) and field in str(e.value)


def test_outputs_errors(tmp_path):
    q = _write(tmp_path / "q.json", [{"id": "Q0", "input": "x", "profile": [{"id": "p", "text": "t", "score": 5}]}])
    o = _write(tmp_path / "o.json", {"task": "LaMP_2", "golds": [{"id": "Q0", "output": "4"}]})
    with pytest.raises(DataError, match="field 'task'"):
        D.load_lamp(q, o, "LaMP_3")
    _write(o, {"task": "LaMP_3", "golds": []})
    with pytest.raises(DataError, match="record Q0, field 'golds'"):
        D.load_lamp(q, o, "LaMP_3")
    _write(o, {"task": "LaMP_3", "golds": [{"id": "Q0"}]})
    with pytest.raises(DataError, match="record Q0, field 'output'"):
        D.load_lamp(q, o, "LaMP_3")


def test_numeric_scores_are_accepted_as_text(tmp_path):
    q = _write(tmp_path / "q.json", [{"id": "Q0", "input": "x", "profile": [{"id": "p", "text": "t", "score": 5}]}])
    assert D.load_lamp(q, None, "LaMP_3")[0].profile[0]["score"] == "5"


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'LaMP_9'"):
        D.task_info("LaMP_9")


def test_per_user_shape(tmp_path):
    f = _write(
        tmp_path / "u.json",
        [
            {
                "user_id": "a",
                "profile": [{"id": "1", "text": "t", "title": "h"}],
                "query": [{"id": "q1", "input": "Generate a headline: x", "gold": "y"}],
            }
        ],
    )
    u = D.load_per_user(f, "LaMP_4")[0]
    assert (u.user_id, u.queries[0].gold) == ("a", "y")
    _write(f, [{"user_id": "a", "profile": [{"id": "1", "text": "t", "title": "h"}], "query": []}])
    with pytest.raises(DataError, match="record a, field 'query'"):
        D.load_per_user(f, "LaMP_4")


def test_time_split_uses_newest_item_as_query():
    u = D.User(
        "u",
        [
            {"id": "a", "description": "old", "tag": "comedy", "date": 1},
            {"id": "b", "description": "new", "tag": "action", "date": 9},
            {"id": "c", "description": "mid", "tag": "romance", "date": 5},
        ],
    )
    s = D.time_split(u, "LaMP_2")
    assert [it["id"] for it in s.profile] == ["a", "c"] and s.queries[0].gold == "action"
    assert "description: new" in s.queries[0].input


def test_user_split_disjoint_and_deterministic():
    users = [D.User(str(i), [{}]) for i in range(10)]
    a, b = D.user_split(users, 0.3, seed=1)
    assert len(a) == 3 and not {u.user_id for u in a} & {u.user_id for u in b}
    assert [u.user_id for u in D.user_split(users, 0.3, seed=1)[0]] == [u.user_id for u in a]


@pytest.mark.parametrize("task", sorted(D.TASKS))
def test_prompt_builders_for_every_task(task):
    fields = {f: "1" if f == "score" else f"{f} text" for f in D.TASKS[task]["fields"]}
    if task == "LaMP_2":
        fields["tag"] = "comedy"
    rendered = D.render_item(task, fields)
    assert rendered and "{" not in rendered
    p = D.build_prompt("QUERY", [rendered])
    assert p.startswith("### User History:\n") and p.endswith("\n\nQUERY")
    if D.ITEM_AS_QUERY[task] is not None:
        inp, target = D.item_query(task, fields)
        assert target == fields[D.TASKS[task]["output_field"]] and "{" not in inp


def test_download_from_loopback_server_with_cache(tmp_path, lamp_root):
    # Serve fixture files in the official layout: /LaMP_2/dev/dev_questions.json
    site = tmp_path / "site" / "LaMP_2" / "dev"
    site.mkdir(parents=True)
    for n in ("dev_questions.json", "dev_outputs.json"):
        (site / n).write_bytes((lamp_root / "LaMP_2" / n).read_bytes())
    hits = []

    class H(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            hits.append(self.path)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(H, directory=str(tmp_path / "site")))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        cache = tmp_path / "cache"
        d = D.download_lamp("LaMP_2", "dev", cache, base_url=base)
        assert len(D.load_lamp(d / "dev_questions.json", d / "dev_outputs.json", "LaMP_2")) == 4
        n = len(hits)
        D.download_lamp("LaMP_2", "dev", cache, base_url=base)  # cached: no new request
        assert len(hits) == n == 2
        with pytest.raises(DataError, match="HTTP 404"):
            D.download_lamp("LaMP_5", "dev", cache, base_url=base)
        assert not (cache / "user" / "LaMP_5" / "dev_questions.json").exists()
    finally:
        srv.shutdown()


def test_resolve_prefers_explicit_root(lamp_root, tmp_path):
    assert D.resolve_task_dir("LaMP_2", "dev", str(lamp_root)) == lamp_root / "LaMP_2"
    with pytest.raises(DataError, match="no LaMP_2/dev_questions.json"):
        D.resolve_task_dir("LaMP_2", "dev", str(tmp_path / "nothing"))
