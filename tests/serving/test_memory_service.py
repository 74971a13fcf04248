"""The sharded memory service (serving.memory_service) on loopback with 2 shards: mem0's verbs over
HTTP, every user on exactly one shard, bad input as JSON 4xx, and a shard replica killed while adds
stream in: Serve restarts it and no add that was answered 200 is lost."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time

import pytest

from serving.memory_service import MemoryServiceConfig, shard_of
from tests.conftest import free_port


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    from ray import serve

    from ray_jobs.serve_memory import start

    cfg = MemoryServiceConfig(dir=str(tmp_path_factory.mktemp("mem")), shards=2, port=free_port(), max_body=20_000)
    start(cfg, blocking=False)
    yield cfg
    serve.shutdown()


def _call(cfg, method, path, body=None, raw: bytes | None = None):
    c = http.client.HTTPConnection("127.0.0.1", cfg.port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.read()
    return r.status, json.loads(out) if out else None


def _users_on(cfg, k: int) -> set[str]:
    with sqlite3.connect(f"{cfg.dir}/shard_{k:03d}.sqlite") as con:
        return {u for (u,) in con.execute("SELECT DISTINCT user_id FROM sessions")}


def test_mem0_verbs_over_http_and_each_user_on_its_own_shard(service):
    """Mutation caught: routing by anything but the stable hash (e.g. every user to shard 0): the
    shard files then hold users `shard_of` does not give them."""
    users = [f"user{i}" for i in range(6)]
    for u in users:
        for j in range(2):
            msgs = [{"role": "user", "content": f"{u} hiked {j}"}]
            body = {"messages": msgs, "user_id": u, "session_id": f"{u}-{j}", "metadata": {"n": j}}
            st, out = _call(service, "POST", "/v1/memories", body)
            assert st == 200 and out == {"id": f"{u}-{j}"}
    for k in (0, 1):
        assert _users_on(service, k) == {u for u in users if shard_of(u, 2) == k}
    assert {shard_of(u, 2) for u in users} == {0, 1}  # both shards in use
    st, out = _call(service, "POST", "/v1/memories/search", {"query": "hiked", "user_id": "user3", "limit": 5,
                                                              "filters": {"n": {"gte": 1}}})  # fmt: skip
    assert st == 200 and [r["session_id"] for r in out["results"]] == ["user3-1"]
    st, out = _call(service, "GET", "/v1/memories/user3-0?user_id=user3")
    assert st == 200 and out["metadata"] == {"n": 0}
    assert (
        _call(service, "PUT", "/v1/memories/user3-0", {"user_id": "user3", "metadata": {"n": None, "k": "v"}})[0] == 200
    )
    assert _call(service, "GET", "/v1/memories/user3-0?user_id=user3")[1]["metadata"] == {"k": "v"}
    assert _call(service, "GET", "/v1/memories/user3-0?user_id=user4")[0] == 404  # another user's id
    assert _call(service, "DELETE", "/v1/memories/user3-0?user_id=user3") == (200, {"deleted": True})
    assert _call(service, "DELETE", "/v1/memories/user3-0?user_id=user3")[0] == 404
    st, out = _call(service, "GET", "/v1/memories/user3-0/history?user_id=user3")
    assert [e["event"] for e in out["results"]] == ["add", "update", "delete"]
    assert [m["session_id"] for m in _call(service, "GET", "/v1/memories?user_id=user3")[1]["results"]] == ["user3-1"]
    assert _call(service, "DELETE", "/v1/memories?user_id=user5") == (200, {"deleted": 2})


@pytest.mark.parametrize(
    "method,path,body,code,words",
    [
        ("POST", "/v1/memories", b"{not json", 400, "JSON"),
        ("POST", "/v1/memories", b"[1, 2]", 400, "object"),
        ("POST", "/v1/memories", b'{"text": "hi"}', 400, "user_id"),
        ("POST", "/v1/memories", b'{"user_id": "u"}', 400, "messages"),
        (
            "POST",
            "/v1/memories/search",
            b'{"query": "x", "user_id": "u", "filters": {"n": {"like": 1}}}',
            400,
            "filters.n.like",
        ),  # fmt: skip
        ("POST", "/v1/memories/search", b'{"query": 3, "user_id": "u"}', 400, "query"),
        ("POST", "/v1/memories", b'{"user_id": "u", "text": "' + b"x" * 30_000 + b'"}', 413, "body over"),
        ("GET", "/v1/nowhere", b"", 404, "nowhere"),
        ("PATCH", "/v1/memories", b"", 405, "PATCH"),
    ],
)
def test_bad_requests_get_a_json_4xx_naming_the_problem(service, method, path, body, code, words):
    """Mutation caught: letting a shard's DataError escape (a 500 instead of the 400 naming the part)."""
    st, out = _call(service, method, path, raw=body)
    assert st == code and words in out["error"]["message"]


def test_a_killed_shard_replica_restarts_and_loses_no_acknowledged_add(service):
    """Adds stream into one user's shard while its replica is killed: every add answered 200 is in
    the store afterwards, served by a new replica process. Mutation caught: answering the add before
    it commits (an acknowledged add dies with the replica)."""
    import ray

    def shard1_replicas():  # named actors of the connected cluster (the state API may find other clusters)
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "MemoryShard001" in a["name"]]

    user = next(u for u in (f"stream{i}" for i in range(100)) if shard_of(u, 2) == 1)
    acked, errors, stop = [], [], threading.Event()

    def writer():
        i = 0
        while not stop.is_set() and i < 400:
            try:
                st, out = _call(
                    service, "POST", "/v1/memories", {"text": f"note {i}", "user_id": user, "session_id": f"n{i}"}
                )
                (acked if st == 200 else errors).append(f"n{i}" if st == 200 else st)
            except OSError as e:  # the gateway may drop a request whose replica died
                errors.append(repr(e))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    while len(acked) < 20:
        time.sleep(0.05)
    (victim,) = shard1_replicas()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed_at = len(acked)
    deadline = time.time() + 120
    while len(acked) < killed_at + 20 and time.time() < deadline:  # the restarted replica takes adds again
        time.sleep(0.2)
    stop.set()
    t.join(60)
    assert len(acked) >= killed_at + 20, f"no recovery: {errors[-3:]}"
    st, out = _call(service, "GET", f"/v1/memories?user_id={user}")
    have = {m["session_id"] for m in out["results"]}
    assert set(acked) <= have
    assert shard1_replicas() and victim not in shard1_replicas()  # a new replica process serves the shard


def test_binding_beyond_loopback_needs_a_token(monkeypatch):
    """Mutation caught: `check_bind` accepting any host (the store would listen on every interface
    with no token)."""
    from ray_jobs.cli import check_bind
    from suite.config import ConfigError

    env = MemoryServiceConfig().token_env
    monkeypatch.delenv(env, raising=False)
    check_bind(MemoryServiceConfig().host, env)  # loopback: fine without a token
    with pytest.raises(ConfigError, match=env):
        check_bind("0.0.0.0", env)  # noqa: S104 - the refusal under test
    monkeypatch.setenv(env, "s3cret")
    check_bind("0.0.0.0", env)  # noqa: S104
