"""The HTTP backend against a real OpenAI-compatible server on loopback answering with a local model."""

import threading

import pytest

from memgas.llm import HTTPChatLLM, LLMConfig, LLMError, LocalLLM
from memgas.serve import make_server


@pytest.fixture(scope="module")
def local():
    return LocalLLM("tiny", max_length=256)


def _serve(llm, faults=()):
    srv = make_server(llm, "127.0.0.1", 0, list(faults))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


def _client(url, sleeps, **kw):
    return HTTPChatLLM(LLMConfig(backend="http", url=url, **kw), sleep=sleeps.append)


def test_answers_like_the_local_model(local):
    srv, url = _serve(local)
    try:
        c = _client(url, [], timeout_s=30)
        assert c.complete("hello there", 8) == local.complete("hello there", 8)
    finally:
        srv.shutdown()


def test_retries_429_5xx_empty_malformed_then_succeeds(local):
    srv, url = _serve(local, ["429", "500", "empty", "malformed"])
    try:
        sleeps = []
        c = _client(url, sleeps, max_retries=5, backoff_s=0.5)
        assert isinstance(c.complete("hi", 4), str)
        assert srv.requests == 5 and c.retries == 4 and len(sleeps) == 4
        assert all(0 <= s <= 0.5 * 2**i for i, s in enumerate(sleeps))  # full-jitter exponential backoff
    finally:
        srv.shutdown()


def test_timeout_is_retried_and_exhaustion_raises(local):
    srv, url = _serve(local, ["sleep:1.5", "500", "500", "500"])
    try:
        c = _client(url, [], timeout_s=0.5, max_retries=1)
        with pytest.raises(LLMError, match="gave up after 2 attempt"):
            c.complete("hi", 4)  # timeout, then 500: budget of retries spent
        c2 = _client(url, [], max_retries=3)
        assert isinstance(c2.complete("hi", 4), str)  # the remaining 500s, then success
    finally:
        srv.shutdown()


def test_non_retryable_and_dead_server(local):
    srv, url = _serve(local)
    srv.shutdown()
    srv.server_close()
    with pytest.raises(LLMError, match="gave up"):
        _client(url, [], max_retries=2, timeout_s=1).complete("hi", 4)


def test_server_refuses_non_loopback(local):
    with pytest.raises(ValueError, match="loopback"):
        make_server(local, "0.0.0.0", 0)


# ------------------------------------------------------------------ reliability round 2: transport and server
import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from suite.config import ConfigError  # noqa: E402


def _raw_server(respond):
    """A loopback TCP server whose every connection is handled by `respond(conn)`; returns (url, seen)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    seen = []

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            seen.append(conn.recv(65536))
            try:
                respond(conn)
            except OSError:
                pass
            finally:
                conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.getsockname()[1]}/v1", seen


def test_a_dripping_server_is_cut_off_at_the_deadline():
    def drip(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(30):
            conn.sendall(b" ")
            time.sleep(0.2)

    srv, url, _ = _raw_server(drip)
    try:
        c = _client(url, [], timeout_s=0.8, max_retries=1)
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="TimeoutError"):
            c.complete("hi", 4)
        assert time.monotonic() - t0 < 3.0  # 2 attempts x 0.8 s, not 2 x 6 s of dripping
    finally:
        srv.close()


@pytest.mark.parametrize(
    "reply",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"choices": [',  # IncompleteRead
        b"GARBAGE\r\n\r\n",  # BadStatusLine
        b"",  # RemoteDisconnected
    ],
)
def test_torn_responses_are_retried_then_raise_llmerror(reply):
    srv, url, seen = _raw_server(lambda conn: conn.sendall(reply))
    try:
        c = _client(url, [], timeout_s=2, max_retries=2)
        with pytest.raises(LLMError, match="gave up after 3 attempt"):
            c.complete("hi", 4)
        assert len(seen) == 3
    finally:
        srv.close()


def test_redirects_are_not_followed_and_the_token_stays_home(monkeypatch):
    other, other_url, other_seen = _raw_server(
        lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    )
    redirect = f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {other_url}/chat/completions\r\nContent-Length: 0\r\n\r\n"
    srv, url, seen = _raw_server(lambda conn: conn.sendall(redirect.encode()))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    try:
        with pytest.raises(LLMError, match="redirects are not followed"):
            _client(url, []).complete("hi", 4)
        assert b"Bearer sk-test-secret" in seen[0]  # sent to the configured host only
        time.sleep(0.2)
        assert other_seen == []
    finally:
        srv.close()
        other.close()


def test_a_key_in_the_url_is_never_written(tmp_path, monkeypatch):
    from memgas.recipe import MemGASJobConfig
    from suite.config import load_config
    from suite.redact import redact_url
    from suite.tracking import redact

    url = "https://user:hunter2@llm.example.com/v1?api-key=sk-live-123&deployment=x"
    assert redact_url(url) == "https://***@llm.example.com/v1?api-key=***&deployment=x"
    cfg = load_config(MemGASJobConfig, None, [f"llm.url={url}", "llm.backend=http"])
    from dataclasses import asdict

    from suite.redact import redact_config

    for written in (json.dumps(redact_config(asdict(cfg))), json.dumps(redact(asdict(cfg)))):
        assert "hunter2" not in written and "sk-live-123" not in written
    c = HTTPChatLLM(LLMConfig(backend="http", url="http://k:sekrit@127.0.0.1:9/v1", timeout_s=0.2, max_retries=0))
    with pytest.raises(LLMError) as e:
        c.complete("hi", 2)
    assert "sekrit" not in str(e.value)


@pytest.mark.parametrize(
    "ov,field",
    [
        ("llm.timeout_s=0", "timeout_s"),
        ("llm.max_retries=-1", "max_retries"),
        ("llm.concurrency=0", "concurrency"),
        ("llm.backend=htp", "backend"),
        ("eval.ks=[]", "ks"),
    ],
)
def test_config_ranges_and_choices_fail_at_load(ov, field):
    from memgas.recipe import MemGASJobConfig
    from suite.config import load_config

    with pytest.raises(ConfigError, match=field):
        load_config(MemGASJobConfig, None, [ov])


def _post(port, body: bytes, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(
        "POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    r = c.getresponse()
    return r.status, r.read()


def _within(seconds: float, cond) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_server_answers_bad_requests_with_4xx_and_drops_stalled_clients(local):
    srv = make_server(local, "127.0.0.1", 0, max_body=2000, max_tokens_cap=64, read_timeout_s=0.5)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        assert _post(port, b"{not json")[0] == 400
        assert _post(port, json.dumps({"messages": []}).encode())[0] == 400
        ok = {"messages": [{"role": "user", "content": "hi"}]}
        assert _post(port, json.dumps({**ok, "max_tokens": 10_000}).encode())[0] == 400
        assert _post(port, json.dumps({**ok, "pad": "x" * 5000}).encode())[0] == 413
        assert _post(port, json.dumps({**ok, "max_tokens": 4}).encode())[0] == 200
        # half-sent requests: each thread is freed after the read timeout
        base = threading.active_count()
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            socks.append(s)
        # polled, not slept: on a loaded machine threads start and time out late, never not at all
        assert _within(5, lambda: threading.active_count() > base)  # handlers wait on the stalled bodies
        # ... and are freed by the read timeout while the clients still hold their sockets open
        assert _within(20, lambda: threading.active_count() <= base + 1)
        for s in socks:
            s.close()
        assert _post(port, json.dumps({**ok, "max_tokens": 4}).encode())[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def _raw(port: int, method: str, path: str, body: bytes = b"", headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body or None, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    return r.status, r.getheader("Content-Type"), r.read()


class _SlowLLM:
    """Answers after `seconds` (queue and cancellation tests need a request that stays busy)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def complete(self, prompt, max_tokens=64, temperature=0.0):
        time.sleep(self.seconds)
        return "slow answer"


def test_every_malformed_value_and_route_gets_a_4xx_with_a_json_body(local):
    srv = make_server(local, "127.0.0.1", 0, max_tokens_cap=64)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    msgs = '"messages": [{"role": "user", "content": "hi"}]'
    bad = [
        "{" + msgs + ", " + extra + "}"
        for extra in (
            '"max_tokens": Infinity',
            '"max_tokens": 1e400',
            '"max_tokens": ' + "9" * 5000,
            '"max_tokens": 4.5',
            '"temperature": NaN',
            '"stream": "yes"',
        )
    ] + [
        '{"messages": [{"role": "user", "content": "\\ud800 lone"}]}',
    ]
    try:
        for body in bad:
            code, ctype, payload = _raw(port, "POST", "/v1/chat/completions", body.encode())
            assert code == 400 and ctype == "application/json", body[:60]
            assert json.loads(payload)["error"]["code"] == 400
        code, _, payload = _raw(port, "POST", "/v1/anything", b"{}")
        assert code == 404 and json.loads(payload)["error"]["type"] == "not_found_error"
        assert _raw(port, "PUT", "/v1/chat/completions", b"{}")[0] == 405
        code, _, payload = _raw(port, "GET", "/v1/models")
        assert code == 200 and json.loads(payload)["data"][0]["object"] == "model"
        ok = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
        code, _, payload = _raw(port, "POST", "/v1/chat/completions", ok)
        assert code == 200 and json.loads(payload)["usage"]["total_tokens"] >= 1  # still up, usage filled
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_official_openai_client_works_unchanged_streaming_included(local):
    import openai

    srv = make_server(local, "127.0.0.1", 0, model_name="tiny")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", api_key="unused", max_retries=0)
    try:
        assert [m.id for m in client.models.list()] == ["tiny"]
        msgs = [{"role": "user", "content": "hello"}]
        full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8)
        text = full.choices[0].message.content
        assert isinstance(text, str) and full.usage.total_tokens >= 1
        chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: the same answer
        assert chunks[-1].choices[0].finish_reason == "stop"
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10_000)
    finally:
        srv.shutdown()
        srv.server_close()


def test_connection_and_queue_caps_answer_429_and_a_dripping_client_meets_the_deadline():
    srv = make_server(_SlowLLM(1.0), "127.0.0.1", 0, max_connections=2, max_queue=1, request_deadline_s=1.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    ok = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    try:
        # a client sending one byte at a time is cut at the request deadline, not per-byte timeouts
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        t0, closed = time.monotonic(), False
        while time.monotonic() - t0 < 6:
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        s.close()
        assert closed and time.monotonic() - t0 < 4
        # two busy requests fill the queue (1 waiting for the model, 1 refused with 429)
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(_raw(port, "POST", "/v1/chat/completions", ok)[0]))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join()
        assert sorted(results) == [200, 429]
        # connections beyond the cap get 429 at once, with a JSON body, while two are held open
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        assert _within(5, lambda: srv.slots._value == 0)
        code, _, payload = _raw(port, "GET", "/v1/models")
        assert code == 429 and json.loads(payload)["error"]["code"] == 429 and srv.refused >= 1
        for h in held:
            h.close()
        assert _within(5, lambda: _raw(port, "GET", "/v1/models")[0] == 200)
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_client_that_leaves_cancels_its_generation(local):
    from suite.models import generate

    # the stopping hook ends decoding at the next token
    steps = []
    out = generate(local.model, local.codec, "hello", 64, first_line=False, should_stop=lambda: steps.append(1) or True)
    assert len(steps) == 1 and len(local.codec.ids(out)) <= 2
    srv = make_server(_SlowLLM(0.8), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        s = socket.create_connection(("127.0.0.1", srv.server_address[1]))
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.2)
        s.close()  # gone before the answer
        assert _within(5, lambda: srv.cancelled == 1)
    finally:
        srv.shutdown()
        srv.server_close()
