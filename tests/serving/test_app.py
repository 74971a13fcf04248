"""The Ray Serve app on loopback with the tiny model: the official openai client (chat, completions,
streaming, models), users answered with their own adapters, and 400/404/413/429 as JSON."""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest

from mta.recipe import MTAJobConfig, adapt, build_bank
from serving.composer import ServeConfig
from suite.config import load_config
from suite.encoders import load_encoder
from tests.test_listeners import Sampler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    from ray import serve

    from ray_jobs.serve import start
    from tests.conftest import make_lamp2

    tmp = tmp_path_factory.mktemp("app")
    make_lamp2(tmp / "lamp", "train", n_users=8, n_items=6, seed=1, prefix="t")
    make_lamp2(tmp / "lamp", "dev", n_users=4, n_items=4, seed=2, prefix="d")
    ov = [f"data.root={tmp / 'lamp'}", f"bank_cache={tmp / 'banks'}", f"users_dir={tmp / 'users'}"]
    job = load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov)
    build_bank(job, tmp, load_encoder(job.encoder), log=lambda *a: None)
    for u in ("d0", "d1"):
        adapt(job, tmp / "adapters" / u, user_id=u)
    cfg = ServeConfig(job=job, port=_free_port(), max_queue=2, max_body=4000, max_tokens_cap=16, test_delay_s=0.0)
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
    assert set(stats["installed"]) == {"d0", "d1", "d2"} and stats["misses"] == 3 and stats["hits"] >= 3
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
