"""LLM backends behind one interface, `complete(prompt, max_tokens, temperature) -> str`:

- `http`: any OpenAI-compatible chat endpoint (vLLM, TGI, a hosted API). Key from the environment
  variable named by `api_key_env`, never from a file or config. Timeouts; retries with exponential
  backoff and full jitter on 429, 5xx, timeouts and broken connections, within `max_retries` and
  `retry_budget_s`; a concurrency limit shared by all threads; empty or malformed completions are
  retried and finally raise `LLMError`.
- `local`: a transformers causal LM (SmolLM2 by default) with its chat template, greedy at T=0.
- `none`: no LLM (`build_llm` returns None; units fall back to extractive text).
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from suite.config import opt


@dataclass
class LLMConfig:
    backend: str = opt("none", "none | http | local")
    url: str = opt("http://127.0.0.1:8000/v1", "OpenAI-compatible base URL (http backend)")
    model: str = opt("smollm2", "model name sent to the endpoint / local model (smollm2, tiny, hub id, path)")
    api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the endpoint key")
    timeout_s: float = opt(60.0, "per-request timeout")
    max_retries: int = opt(5, "retries after the first attempt")
    backoff_s: float = opt(1.0, "base of the exponential backoff")
    max_backoff_s: float = opt(30.0, "cap of one backoff sleep")
    retry_budget_s: float = opt(300.0, "total time one call may spend retrying")
    concurrency: int = opt(8, "requests in flight at once (all threads)")


class LLMError(RuntimeError):
    """The endpoint failed for good (retries or budget exhausted, or a non-retryable error)."""


RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


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
        req = urllib.request.Request(self.cfg.url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:
            return json.loads(r.read().decode("utf-8"))

    def complete(self, prompt: str, max_tokens: int = 500, temperature: float = 0.0) -> str:
        body = json.dumps({"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_tokens, "temperature": temperature}).encode()
        start, last = time.monotonic(), "no attempt"
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
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code not in RETRYABLE:
                    raise LLMError(f"{self.cfg.url}: {last} (not retried)") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (KeyError, IndexError, TypeError, ValueError) as e:
                last = f"malformed response ({type(e).__name__})"
        raise LLMError(f"{self.cfg.url}: gave up after {attempt + 1} attempt(s): {last}")


class LocalLLM:
    """A transformers causal LM in this process (greedy decoding; temperature is ignored: T=0)."""

    def __init__(self, model_name: str = "smollm2", max_length: int = 2048, tiny_seed: int = 0, device: str = ""):
        from mta.models import ModelConfig, load_base
        from suite.device import current

        self.model, self.tok = load_base(ModelConfig(name=model_name, max_length=max_length, tiny_seed=tiny_seed,
                                                     device=device or str(current())))
        self.max_length = max_length
        self._lock = threading.Lock()

    def complete(self, prompt: str, max_tokens: int = 500, temperature: float = 0.0) -> str:
        from mta.evaluate import generate

        with self._lock:  # one forward at a time: torch already uses every core
            return generate(self.model, self.tok, prompt, max_tokens, True, self.max_length + max_tokens, first_line=False)


def build_llm(cfg: LLMConfig):
    if cfg.backend == "none":
        return None
    if cfg.backend == "http":
        return HTTPChatLLM(cfg)
    if cfg.backend == "local":
        return LocalLLM(cfg.model)
    raise ValueError(f"unknown LLM backend {cfg.backend!r}: none | http | local")
