"""The OpenAI-compatible Ray Serve app answering each user with their MTA adapter (issue #20).

    python -m ray_jobs.serve --config ray_jobs/configs/serve_tiny.yaml --port 8011
    serve run serving.app:build config=ray_jobs/configs/serve_tiny.yaml     # the same app under `serve run`

Two deployments: `Gateway` (FastAPI ingress: routes, validation, limits, auth, streaming) and
`Generator` (the model, the composer, a mixed-batch loop). A request names its user as
`model="<base>:<user_id>"` (Ray Serve LLM's convention; `model="<base>"` is the base model). The
gateway forwards it with `multiplexed_model_id=<user_id>`, so Ray routes a user back to a replica
that already holds their adapter (`@serve.multiplexed`); inside a replica, requests of different
users wait at most `batch_wait_s` and share one forward pass (`Composer.generate`).

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream: true` as
server-sent events), `GET /v1/models` (the base model and every user with a stored record). Every
refusal is JSON: 400 bad body, 401 bad token, 404 unknown user or route, 413 oversized body, 429
full queue.
"""

import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.exceptions import RequestValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, StreamingResponse

from serving.composer import Composer, ServeConfig, UnknownUser
from suite.config import from_dict, load_config
from suite.openai_params import check_prompt, generation_params, strict_json
from suite.ray_local import LOOPBACK


class Refused(Exception):
    def __init__(self, code: int, msg: str):
        self.code, self.msg = code, msg


KINDS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


def error(code: int, msg: str):
    kind = KINDS.get(code, "invalid_request_error")
    return JSONResponse({"error": {"message": msg, "type": kind, "code": code}}, status_code=code)


def parse_body(raw: bytes, chat: bool, max_tokens_cap: int, base: str) -> dict:
    """The validated request: {prompt, user, max_tokens, stream, model}, or Refused(400/404)."""
    try:
        body = strict_json(raw)
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise ValueError("messages: expected a non-empty list of {role, content}")
            prompt = check_prompt(msgs[-1].get("content"))
        else:
            prompt = check_prompt(body.get("prompt"))
        mt, _, stream = generation_params(body, max_tokens_cap, 32)  # temperature checked; answers are greedy
    except ValueError as e:
        raise Refused(400, str(e)) from None
    model = body.get("model", base)
    if not isinstance(model, str) or not model or len(model) > 512:
        raise Refused(400, "model must be '<base>' or '<base>:<user_id>'")
    head, _, user = model.partition(":")
    if head != base:
        raise Refused(404, f"unknown model {head!r}; this server serves {base!r}")
    return {"prompt": prompt, "user": user or None, "max_tokens": mt, "stream": stream, "model": model}


@serve.deployment
class Generator:
    """The model, its composer and the mixed-batch loop (one per replica)."""

    def __init__(self, cfg: dict):
        self.cfg = from_dict(ServeConfig, cfg, "serve config")
        self.composer = Composer(self.cfg)
        self.queue: list = []
        self.wakeup = asyncio.Event()
        self.loop_task = None

    @serve.multiplexed(max_num_models_per_replica=64)
    async def load_user(self, user_id: str) -> str:
        # tells Ray this replica holds the user (routing); the composer's own LRU, keyed by the
        # record's content hash, decides what stays installed and catches changed records
        return user_id

    async def _batches(self):
        while True:
            await self.wakeup.wait()
            await asyncio.sleep(self.cfg.batch_wait_s)  # let concurrent requests join the batch
            batch, self.queue = self.queue[: self.cfg.max_batch], self.queue[self.cfg.max_batch :]
            if not self.queue:
                self.wakeup.clear()
            try:
                outs = await asyncio.to_thread(self.composer.generate, [b[0] for b in batch])
                for (_, fut), out in zip(batch, outs):
                    if not fut.done():
                        fut.set_result(out)
            except Exception as e:  # noqa: BLE001 - every waiting request learns of the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)

    async def complete(self, req: dict) -> dict:
        user = req["user"]
        t0 = time.perf_counter()
        try:
            if user:
                await self.load_user(serve.get_multiplexed_model_id() or user)
                name = await asyncio.to_thread(self.composer.adapter_for, user)
            else:
                name = None
        except UnknownUser:
            return {"error": 404, "message": f"unknown user {user!r}: no record and no profile"}
        compose_ms = (time.perf_counter() - t0) * 1000
        if self.cfg.test_delay_s:
            await asyncio.sleep(self.cfg.test_delay_s)
        ids = self.composer.prompt_ids(req["prompt"], req["chat"], req["max_tokens"])
        fut = asyncio.get_running_loop().create_future()
        self.queue.append(((ids, name, req["max_tokens"]), fut))
        if self.loop_task is None:
            self.loop_task = asyncio.create_task(self._batches())
        self.wakeup.set()
        text, n_new = await fut
        return {"text": text, "prompt_tokens": len(ids), "completion_tokens": n_new, "compose_ms": compose_ms}

    async def users(self) -> list[str]:
        return self.composer.users_with_record()

    async def stats(self) -> dict:
        return {**self.composer.stats, "installed": list(self.composer.lru)}


def make_gateway(cfg: ServeConfig):
    api = FastAPI(title="MTA users, OpenAI-compatible")
    base = cfg.job.model.name

    @api.exception_handler(StarletteHTTPException)  # unknown routes and methods: JSON like every refusal
    async def http_error(request, exc):
        return error(exc.status_code, f"{request.method} {request.url.path[:100]}: {exc.detail}")

    @api.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return error(400, "invalid request")

    @serve.deployment
    @serve.ingress(api)
    class Gateway:
        def __init__(self, generator, cfg_dict: dict):
            self.gen, self.cfg = generator, from_dict(ServeConfig, cfg_dict, "serve config")
            self.inflight = 0
            self.token = os.environ.get(self.cfg.token_env) or None
            if self.cfg.host not in (LOOPBACK, "localhost", "::1") and not self.token:
                raise RuntimeError(f"bound to {self.cfg.host}: set {self.cfg.token_env} (bearer token) first")

        def _auth(self, request: Request) -> None:
            if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                raise Refused(401, "missing or wrong bearer token")

        async def _read(self, request: Request) -> bytes:
            n = request.headers.get("content-length")
            if n is not None and (not n.isdigit() or int(n) > self.cfg.max_body):
                raise Refused(413, f"body over {self.cfg.max_body} bytes")
            raw = b""
            async for part in request.stream():
                raw += part
                if len(raw) > self.cfg.max_body:
                    raise Refused(413, f"body over {self.cfg.max_body} bytes")
            return raw

        async def _answer(self, request: Request, chat: bool):
            try:
                self._auth(request)
                req = parse_body(await self._read(request), chat, self.cfg.max_tokens_cap, base)
                if self.inflight >= self.cfg.max_queue:
                    raise Refused(429, f"{self.cfg.max_queue} requests in flight; retry later")
            except Refused as e:
                return error(e.code, e.msg)
            self.inflight += 1
            try:
                h = self.gen.options(multiplexed_model_id=req["user"] or "")
                out = await h.complete.remote({**req, "chat": chat})
            finally:
                self.inflight -= 1
            if "error" in out:
                return error(out["error"], out["message"])
            return self._format(req, out, chat)

        def _format(self, req: dict, out: dict, chat: bool):
            ident, created = f"cmpl-{time.time_ns()}", int(time.time())
            usage = {
                "prompt_tokens": out["prompt_tokens"],
                "completion_tokens": out["completion_tokens"],
                "total_tokens": out["prompt_tokens"] + out["completion_tokens"],
            }
            obj = "chat.completion" if chat else "text_completion"
            if not req["stream"]:
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": out["text"]}, "finish_reason": "stop"}
                    if chat
                    else {"index": 0, "text": out["text"], "finish_reason": "stop", "logprobs": None}
                )
                body = {"id": ident, "object": obj, "created": created, "model": req["model"], "choices": [choice]}
                return JSONResponse({**body, "usage": usage})

            def events():
                words = out["text"].split(" ") if out["text"] else []
                pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
                head = {"id": ident, "created": created, "model": req["model"]}
                if chat:
                    first = [{"role": "assistant", "content": ""}]
                    deltas = first + [{"content": p} for p in pieces]
                    for d in deltas:
                        c = {**head, "object": "chat.completion.chunk"}
                        c["choices"] = [{"index": 0, "delta": d, "finish_reason": None}]
                        yield f"data: {json.dumps(c)}\n\n"
                    last = {**head, "object": "chat.completion.chunk", "usage": usage}
                    last["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
                else:
                    for p in pieces:
                        c = {**head, "object": "text_completion"}
                        c["choices"] = [{"index": 0, "text": p, "finish_reason": None, "logprobs": None}]
                        yield f"data: {json.dumps(c)}\n\n"
                    last = {**head, "object": "text_completion", "usage": usage}
                    last["choices"] = [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        @api.post("/v1/chat/completions")
        async def chat(self, request: Request):
            return await self._answer(request, True)

        @api.post("/v1/completions")
        async def completions(self, request: Request):
            return await self._answer(request, False)

        @api.get("/v1/models")
        async def models(self, request: Request):
            try:
                self._auth(request)
            except Refused as e:
                return error(e.code, e.msg)
            users = await self.gen.users.remote()
            data = [{"id": base, "object": "model", "owned_by": "suite"}]
            data += [{"id": f"{base}:{u}", "object": "model", "owned_by": "suite", "parent": base} for u in users]
            return JSONResponse({"object": "list", "data": data})

        @api.get("/v1/stats")
        async def stats(self):
            return JSONResponse(await self.gen.stats.remote())

    return Gateway


def app_for(cfg: ServeConfig):
    """The bound application: Gateway -> Generator (replicas: `cfg.replicas`)."""
    d = asdict(cfg)
    gen = Generator.options(num_replicas=cfg.replicas).bind(d)
    return make_gateway(cfg).bind(gen, d)


def build(args: dict):
    """`serve run serving.app:build config=PATH [key=value ...]`."""
    args = dict(args)
    path = args.pop("config", None)
    cfg = load_config(ServeConfig, Path(path) if path else None, [f"{k}={v}" for k, v in args.items()])
    return app_for(cfg)
