"""The Ray Serve app on loopback with the tiny model: the official openai client (chat, completions,
streaming, models), users answered with their own adapters, and 400/404/413/429 as JSON."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from mta.recipe import MTAJobConfig, adapt, build_bank
from serving.composer import ServeConfig
from suite.config import load_config
from suite.encoders import load_encoder
from tests.conftest import free_port
from tests.test_listeners import Sampler


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    from ray import serve

    from ray_jobs.serve import start
    from tests.conftest import make_lamp2

    tmp = tmp_path_factory.mktemp("app")
    make_lamp2(tmp / "lamp", "train", n_users=8, n_items=6, seed=1, prefix="t")
    make_lamp2(tmp / "lamp", "dev", n_users=16, n_items=4, seed=2, prefix="d")
    ov = [f"data.root={tmp / 'lamp'}", f"bank_cache={tmp / 'banks'}", f"users_dir={tmp / 'users'}"]
    job = load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov)
    build_bank(job, tmp, load_encoder(job.encoder), log=lambda *a: None)
    for u in ("d0", "d1"):
        adapt(job, tmp / "adapters" / u, user_id=u)
    cfg = ServeConfig(
        job=job, port=free_port(), max_queue=32, max_body=4000, max_tokens_cap=16, max_adapters=2, max_batch=8
    )
    sampler = Sampler().__enter__()  # every socket the app opens, machine-wide, while the tests run
    start(cfg, blocking=False)
    cfg.sampler = sampler
    yield cfg
    serve.shutdown()
    sampler.__exit__(None, None, None)


def _post(port, path, body: bytes, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    return r.status, r.read()


def test_the_official_openai_client_against_the_app(server):
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny", "tiny:d0", "tiny:d1"]  # the base model and the users with a record
    msgs = [{"role": "user", "content": "which tag fits a film about robots in space"}]
    answers = {}
    for model in ("tiny", "tiny:d0", "tiny:d1", "tiny:d2"):  # d2: no record, fused on demand
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12)
        answers[model] = r.choices[0].message.content
        assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 1
        streamed = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == answers[model]
    # each user was answered with their own adapter, composed on the replica (logits: test_composer)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    c.request("GET", "/v1/stats")
    stats = json.loads(c.getresponse().read())
    assert stats["cached"] <= 2 and stats["misses"] >= 3 and "installed" not in stats  # counts, no user ids
    comp = client.completions.create(model="tiny:d0", prompt="The movie is about", max_tokens=8)
    assert isinstance(comp.choices[0].text, str) and comp.usage.total_tokens >= 1
    chunks = list(client.completions.create(model="tiny:d0", prompt="The movie is about", max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == comp.choices[0].text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny:nobody", messages=msgs, max_tokens=4)


def test_refusals_are_json_and_the_app_stays_up(server):
    port = server.port
    ok = json.dumps({"model": "tiny:d0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    cases = [
        (b"{not json", 400),
        (json.dumps({"model": "tiny", "messages": []}).encode(), 400),
        (ok.replace('"max_tokens": 4', '"max_tokens": 1e400').encode(), 400),
        (ok.replace('"max_tokens": 4', '"max_tokens": 999').encode(), 400),
        (ok.replace("tiny:d0", "tiny:nobody").encode(), 404),
        (ok.replace("tiny:d0", "other:d0").encode(), 404),
        (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413),
    ]
    for body, code in cases:
        status, payload = _post(port, "/v1/chat/completions", body)
        assert status == code and json.loads(payload)["error"]["code"] == code, (code, payload[:200])
    status, payload = _post(port, "/v1/nowhere", b"{}")
    assert status == 404 and "error" in json.loads(payload)
    assert _post(port, "/v1/chat/completions", ok.encode())[0] == 200


def _chat(port, user, text, max_tokens=6, **extra):
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    msgs = text if isinstance(text, list) else [{"role": "user", "content": text}]
    return client.chat.completions.create(model=f"tiny:{user}", messages=msgs, max_tokens=max_tokens, **extra)


def test_sixteen_users_in_flight_each_get_their_own_answer_with_a_cache_of_two(server):
    """16 distinct users at once through the official client, a cache of 2 and batches of 8: every
    answer equals that user's answer alone. Mutation caught: a batch row taking another row's
    adapter (e.g. every row of a batch decoded with the first row's RowAdapter)."""
    import torch

    from mta.users import latest_record, write_record

    template = latest_record(server.job.users_dir, "d0")
    g = torch.Generator().manual_seed(0)
    for i in range(4, 16):  # users whose stacks move the tiny model's greedy answers for sure
        stack = {k: 40 * torch.randn(v.shape, generator=g) for k, v in template.stack.items()}
        write_record(server.job.users_dir, f"d{i}", template.bank_signature, template.anchors, template.weights,
                     stack, template.stack_r, template.stack_alpha)  # fmt: skip
    users = [f"d{i}" for i in range(16)]
    alone = {u: _chat(server.port, u, "a film about robots").choices[0].message.content for u in users}
    assert len(set(alone.values())) >= 8  # the users' adapters really answer differently
    got, threads = {}, []
    for u in users:
        threads.append(
            threading.Thread(target=lambda u=u: got.__setitem__(u, _chat(server.port, u, "a film about robots")))
        )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {u: r.choices[0].message.content for u, r in got.items()} == alone


def test_limits_hold_and_refusals_are_json(server):
    """Mutations caught: answering 413 before reading the body (the client sees a reset), n > 1
    silently answered once, finish_reason always "stop", text parts refused, docs left open."""
    port = server.port
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (20 << 20)}]}).encode()
    status, payload = _post(port, "/v1/chat/completions", big)
    assert status == 413 and json.loads(payload)["error"]["code"] == 413
    ok = {"model": "tiny:d0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status, payload = _post(port, "/v1/chat/completions", json.dumps({**ok, "n": 2}).encode())
    assert status == 400 and "n=1" in json.loads(payload)["error"]["message"]
    parts = {**ok, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    status, payload = _post(port, "/v1/chat/completions", json.dumps(parts).encode())
    assert status == 200
    r = _chat(port, "d0", "tell me everything about films", max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    for path in ("/docs", "/openapi.json"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", path)
        resp = c.getresponse()
        assert resp.status == 404 and "error" in json.loads(resp.read())


def test_a_whole_conversation_reaches_the_model(server):
    """An earlier user turn (and the system prompt) change the prompt the model sees. Mutation
    caught: only the last message reaching the model."""
    last = [{"role": "user", "content": "and now?"}]
    turns = [
        {"role": "system", "content": "You tag films."},
        {"role": "user", "content": "I love long slow science fiction epics about space"},
        {"role": "assistant", "content": "noted"},
    ] + last
    a, b = _chat(server.port, "d0", last), _chat(server.port, "d0", turns)
    assert b.usage.prompt_tokens > a.usage.prompt_tokens + 10


def test_streams_come_from_the_decoding_loop_requests_join_mid_decode_and_a_disconnect_frees_the_row(server):
    """With 0.25 s per decoding step and room for 2 rows: the first chunk arrives long before the
    last and the chunks concatenate to the non-streamed answer; a request sent while a 16-step
    stream decodes joins it at the next step and is answered before that stream ends
    (iteration-level batching); a client that disconnects after its first chunk leaves the batch at
    the next step, so with the long stream still holding the other row a new request gets the
    freed one. Mutations caught: generating the whole answer before streaming it; admitting new
    rows only when the batch is empty (per-batch scheduling); never cancelling the row."""
    import time

    from ray import serve

    from serving.app import app_for

    fields = {k: v for k, v in server.__dict__.items() if k != "sampler"}
    slow = ServeConfig(**{**fields, "test_step_delay_s": 0.25, "max_batch": 2})
    serve.run(app_for(slow), name="mta_users", route_prefix="/", blocking=False)
    try:
        t0, times, text = time.perf_counter(), [], ""
        for c in _chat(server.port, "d1", "robots", max_tokens=8, stream=True):
            if c.choices and c.choices[0].delta.content:
                times.append(time.perf_counter() - t0)
                text += c.choices[0].delta.content
        assert len(times) >= 2 and times[0] < times[-1] - 0.5
        assert text == _chat(server.port, "d1", "robots", max_tokens=8).choices[0].message.content
        # a long stream in the background (16 steps = 4 s), holding one of the two rows
        first, long_done, long_n = threading.Event(), [], []

        def long_stream():
            for c in _chat(server.port, "d0", "a long answer", max_tokens=16, stream=True):
                if c.choices and c.choices[0].delta.content:
                    long_n.append(1)
                    first.set()
            long_done.append(time.perf_counter())

        th = threading.Thread(target=long_stream)
        th.start()
        assert first.wait(10)
        t1 = time.perf_counter()
        _chat(server.port, "d1", "hi", max_tokens=1)  # joins the long stream's batch at the next step
        joined = time.perf_counter()
        assert joined - t1 < 1.5 and not long_done
        body = json.dumps({"model": "tiny:d1", "messages": [{"role": "user", "content": "robots"}],
                           "max_tokens": 16, "stream": True}).encode()  # fmt: skip
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.fp.readline()  # the first event
        c.close()  # the client goes away; its row had 15 more steps; the batch is full until it leaves
        t2 = time.perf_counter()
        _chat(server.port, "d0", "hi", max_tokens=1)
        assert time.perf_counter() - t2 < 1.5 and not long_done
        th.join(30)
        assert long_done and long_n  # it ran on after both short requests were answered
    finally:
        serve.run(app_for(ServeConfig(**fields)), name="mta_users", route_prefix="/", blocking=False)


def test_the_token_is_checked_in_constant_time_and_stats_need_it():
    from serving.app import authorized

    assert authorized(None, None) and authorized("Bearer s3", "s3")
    assert not authorized(None, "s3") and not authorized("Bearer s4", "s3") and not authorized("s3", "s3")


def test_the_memory_option_puts_the_users_own_sessions_in_the_prompt(tmp_path):
    """Alice's chat gets Alice's session and never Bob's. Mutation caught: searching without the
    user scope (Bob's marker reaches Alice's prompt)."""
    from types import SimpleNamespace

    from memgas.store import MemGASConfig, MemoryStore
    from serving.app import Generator
    from suite.encoders import load_encoder

    store = MemoryStore.open(tmp_path / "m.sqlite", MemGASConfig(), encoder=load_encoder("hashing"))
    store.add([{"role": "user", "content": "my cat Quillon loves sci-fi films"}], user_id="alice")
    store.add([{"role": "user", "content": "my dog Brambleton loves sci-fi films"}], user_id="bob")
    me = SimpleNamespace(memory=store, cfg=SimpleNamespace(memory_top_k=2))
    msgs = Generator.func_or_class._with_memory(me, [{"role": "user", "content": "which sci-fi films?"}], "alice")
    assert msgs[0]["role"] == "system" and "Quillon" in msgs[0]["content"] and "Brambleton" not in msgs[0]["content"]
    assert msgs[-1]["content"] == "which sci-fi films?"
    store.close()


def test_a_full_queue_answers_429(server):
    from ray import serve

    from serving.app import app_for

    fields = {k: v for k, v in server.__dict__.items() if k != "sampler"}
    slow = ServeConfig(**{**fields, "test_delay_s": 1.5, "max_queue": 1})
    serve.run(app_for(slow), name="mta_users", route_prefix="/", blocking=False)
    body = json.dumps({"model": "tiny:d0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    codes = []
    threads = [
        threading.Thread(target=lambda: codes.append(_post(server.port, "/v1/chat/completions", body)[0]))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 429 in codes and 200 in codes


def test_the_app_listens_on_loopback_only(server):
    """The HTTP proxy and every replica's inter-deployment gRPC server (Ray binds `[::]:0` unless
    `suite.ray_local.loopback_worker_setup` narrows it) listen on loopback."""
    assert server.sampler.seen and server.sampler.exposed() == []
