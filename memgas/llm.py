"""LLM backends behind one interface, `complete(prompt, max_tokens, temperature) -> str`:

- `http`: any OpenAI-compatible chat endpoint (vLLM, TGI, a hosted API). Key from the environment
  variable named by `api_key_env`, never from a file or config. Each attempt has one deadline,
  `timeout_s`, covering connect, headers and body (a server dripping bytes is cut off at it); retries
  with exponential backoff and full jitter on 429, 5xx, timeouts, broken connections and torn
  responses, within `max_retries` and `retry_budget_s`; every transport failure ends as `LLMError`.
  Redirects are never followed (the bearer token must not reach another host). A concurrency limit
  is shared by all threads; empty or malformed completions are retried. URLs in messages are redacted.
- `local`: a transformers causal LM (SmolLM2 by default) with its chat template, greedy at T=0.
- `none`: no LLM (`build_llm` returns None; units fall back to extractive text).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import urlsplit

from suite.config import ConfigError, opt
from suite.device import current
from suite.models import ModelConfig, generate, load_base
from suite.redact import redact_text, redact_url


@dataclass
class LLMConfig:
    backend: Literal["none", "http", "local"] = opt("none", "none | http | local")
    url: str = opt("http://127.0.0.1:8000/v1", "OpenAI-compatible base URL (http backend)")
    model: str = opt("smollm2", "model name sent to the endpoint / local model (smollm2, tiny, hub id, path)")
    api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the endpoint key")
    timeout_s: float = opt(60.0, "deadline of one attempt: connect + headers + body", lo=0, lo_open=True, hi=86400)
    max_retries: int = opt(5, "retries after the first attempt")
    backoff_s: float = opt(1.0, "base of the exponential backoff")
    max_backoff_s: float = opt(30.0, "cap of one backoff sleep", hi=86400)
    retry_budget_s: float = opt(300.0, "total time one call may spend retrying", lo=0, lo_open=True, hi=86400)
    concurrency: int = opt(8, "requests in flight at once (all threads)", lo=1)

    def __post_init__(self):
        for name, ok, rule in (
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("max_retries", self.max_retries >= 0, ">= 0"),
            ("backoff_s", self.backoff_s >= 0, ">= 0"),
            ("max_backoff_s", self.max_backoff_s >= 0, ">= 0"),
            ("retry_budget_s", self.retry_budget_s > 0, "> 0"),
            ("concurrency", self.concurrency >= 1, ">= 1"),
        ):
            if not ok:
                raise ConfigError(f"llm.{name}: {getattr(self, name)!r} must be {rule}")
        if urlsplit(self.url).scheme not in ("http", "https") or not urlsplit(self.url).hostname:
            raise ConfigError(f"llm.url: {redact_url(self.url)!r} must be an http:// or https:// URL")


class LLMError(RuntimeError):
    """The endpoint failed for good (retries or budget exhausted, or a non-retryable error). Its
    message is redacted: a transport error may quote the URL with its credentials."""

    def __init__(self, message: str):
        super().__init__(redact_text(str(message)))


class _HTTPStatus(Exception):
    def __init__(self, code: int):
        self.code = code


RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RESPONSE = 16 << 20  # a chat completion is never this large


def post_json(url: str, body: bytes, headers: dict, timeout_s: float) -> dict:
    """POST and parse JSON within one deadline for the whole exchange: a timer shuts the socket
    at the deadline, so no sequence of slow reads can outlast it. 3xx is an error, not followed."""
    u = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port, timeout=timeout_s)
    expired = threading.Event()

    def cut():
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout_s, cut)
    timer.daemon = True
    timer.start()
    try:
        conn.request("POST", (u.path or "/") + (f"?{u.query}" if u.query else ""), body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise _HTTPStatus(resp.status)
        data = resp.read(MAX_RESPONSE + 1)
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {timeout_s:g}s")
        if resp.length:  # fewer bytes than Content-Length: the answer was cut
            raise http.client.IncompleteRead(data, resp.length)
        if len(data) > MAX_RESPONSE:
            raise ValueError("response too large")
        return json.loads(data.decode("utf-8"))
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {timeout_s:g}s") from None
        raise
    finally:
        timer.cancel()
        conn.close()


class HTTPChatLLM:
    def __init__(self, cfg: LLMConfig, sleep=time.sleep):
        self.cfg, self._sleep = cfg, sleep
        self._sem = threading.BoundedSemaphore(max(1, cfg.concurrency))
        self.calls = self.retries = 0

    def _request(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        u = urlsplit(self.cfg.url)
        url = u._replace(path=u.path.rstrip("/") + "/chat/completions").geturl()
        return post_json(url, body, headers, self.cfg.timeout_s)

    def complete(self, prompt: str, max_tokens: int = 500, temperature: float = 0.0) -> str:
        body = json.dumps(
            {
                "model": self.cfg.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
        ).encode()
        start, last, where = time.monotonic(), "no attempt", redact_url(self.cfg.url)
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
                delay = random.uniform(0, min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** (attempt - 1)))
                if time.monotonic() - start + delay > self.cfg.retry_budget_s:
                    break
                self._sleep(delay)
            try:
                with self._sem:
                    self.calls += 1
                    data = self._request(body)
                text = data["choices"][0]["message"]["content"]
                if not isinstance(text, str) or not text.strip():
                    last = "empty completion"
                    continue
                return text.strip()
            except _HTTPStatus as e:
                last = f"HTTP {e.code}"
                if e.code not in RETRYABLE:
                    why = "redirects are not followed" if 300 <= e.code < 400 else "not retried"
                    raise LLMError(f"{where}: {last} ({why})") from None
            except (TimeoutError, OSError, http.client.HTTPException) as e:  # IncompleteRead, BadStatusLine, ...
                last = f"{type(e).__name__}: {e}"
            except (KeyError, IndexError, TypeError, ValueError) as e:
                last = f"malformed response ({type(e).__name__})"
            except Exception as e:  # noqa: BLE001 - whatever else the transport raises ends as LLMError
                raise LLMError(f"{where}: {type(e).__name__}: {e}") from None
        raise LLMError(f"{where}: gave up after {attempt + 1} attempt(s): {last}")


class LocalLLM:
    """A transformers causal LM in this process (greedy decoding; temperature is ignored: T=0)."""

    def __init__(self, model_name: str = "smollm2", max_length: int = 2048, tiny_seed: int = 0, device: str = ""):
        self.model, self.codec = load_base(
            ModelConfig(name=model_name, max_length=max_length, tiny_seed=tiny_seed, device=device or str(current()))
        )
        self._lock = threading.Lock()

    def complete(self, prompt: str, max_tokens: int = 500, temperature: float = 0.0, should_stop=None) -> str:
        with self._lock:  # one forward at a time: torch already uses every core
            if should_stop is not None and should_stop():  # the caller left while this request queued
                return ""
            # `max_length` bounds the prompt here; the answer comes on top of it
            codec = replace(self.codec, max_length=self.codec.max_length + max_tokens)
            return generate(self.model, codec, prompt, max_tokens, first_line=False, should_stop=should_stop)


def build_llm(cfg: LLMConfig):
    if cfg.backend == "none":
        return None
    if cfg.backend == "http":
        return HTTPChatLLM(cfg)
    if cfg.backend == "local":
        return LocalLLM(cfg.model)
    raise ValueError(f"unknown LLM backend {cfg.backend!r}: none | http | local")
