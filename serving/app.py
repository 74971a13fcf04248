"""The OpenAI-compatible Ray Serve app answering each user with their MTA adapter (issue #20).

    python -m ray_jobs.serve --config ray_jobs/configs/serve_tiny.yaml --port 8011
    serve run serving.app:build config=ray_jobs/configs/serve_tiny.yaml     # the same app under `serve run`

Two deployments: `Gateway` (FastAPI ingress: routes, validation, limits, auth, streaming) and
`Generator` (the model, the composer, the decoding loop). A request names its user as
`model="<base>:<user_id>"` (Ray Serve LLM's convention; `model="<base>"` is the base model). The
gateway forwards it with `multiplexed_model_id=<user_id>`, so Ray routes a user back to a replica
that already holds their adapter (`@serve.multiplexed`); inside a replica, requests of different
users share every forward pass: the bank as one shared LoRA basis (`serving.shared_basis`), each
request carrying its own immutable `RowAdapter` into the batch. Scheduling is per step
(`serving.continuous`, iteration-level batching): a request that arrives while others decode is
prefilled and joins them at the next step, a finished row leaves at once, and a client that goes
away leaves at the next step. Streams are made by that loop, one token at a time.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream: true` as
server-sent events), `GET /v1/models` (the base model and every user with a stored record) and
`GET /v1/stats` (token required when one is set). Every refusal is JSON: 400 bad body, 401 bad
token, 404 unknown user or route, 413 oversized body (read to the end first, up to 64 MB, so the
client gets the answer instead of a reset), 429 full, 500 without internals. `/docs` and
`/openapi.json` are off.
"""

import asyncio
import json
import os
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from ray import serve
from starlette.responses import JSONResponse, StreamingResponse

from serving.composer import BasisComposer, ServeConfig, UnknownUser
from serving.continuous import ContinuousDecoder, Row
from serving.decode import PromptTooLong
from serving.http import Refused, authorized, error, json_errors, read_body
from suite.config import from_dict, load_config
from suite.openai_params import check_prompt, generation_params, strict_json
from suite.ray_local import LOOPBACK


def _text(content) -> str:
    """A message's content: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ValueError("content parts: only {type: text, text: ...} parts are supported")
        content = "".join(p["text"] for p in content)
    return check_prompt(content)


def parse_body(raw: bytes, chat: bool, max_tokens_cap: int, base: str) -> dict:
    """The validated request: {prompt (the whole messages list for chat), user, max_tokens, stream,
    model}, or Refused(400/404)."""
    try:
        body = strict_json(raw)
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise ValueError("messages: expected a non-empty list of {role, content}")
            prompt = []
            for i, m in enumerate(msgs):
                if m.get("role") not in ("system", "user", "assistant"):
                    raise ValueError(f"messages[{i}].role: expected system, user or assistant")
                prompt.append({"role": m["role"], "content": _text(m.get("content"))})
        else:
            prompt = check_prompt(body.get("prompt"))
        mt, _, stream = generation_params(body, max_tokens_cap, 32)  # temperature checked; answers are greedy
        n = body.get("n", 1)
        if n != 1 or isinstance(n, bool):
            raise ValueError("n: only n=1 is supported (answers are greedy: every choice would be the same)")
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
    """The model, its composer and the batch loop (one per replica)."""

    def __init__(self, cfg: dict):
        self.cfg = from_dict(ServeConfig, cfg, "serve config")
        if self.cfg.engine != "shared_basis":  # peft slots can be refilled while a request waits
            raise ValueError("the Serve app runs engine=shared_basis; engine=peft is the benchmark's baseline")
        self.composer = BasisComposer(self.cfg)
        self.memory = None
        if self.cfg.memory:
            from memgas.store import MemoryStore
            from suite.encoders import load_encoder

            self.memory = MemoryStore.open(self.cfg.memory, encoder=load_encoder(self.cfg.memory_encoder))
        self.pending: queue.Queue = queue.Queue()  # rows waiting to join the batch
        self.thread: threading.Thread | None = None

    @serve.multiplexed(max_num_models_per_replica=64)
    async def load_user(self, user_id: str) -> str:
        # tells Ray this replica holds the user (routing); the composer's own LRU, keyed by the
        # record's content hash, decides what stays cached and catches changed records
        return user_id

    def _decode_loop(self, loop) -> None:
        """The replica's one decoding thread (`serving.continuous`): a request waiting in `pending`
        joins the batch at the next step, up to `max_batch` rows at once; each step's tokens go
        to each row's queue. When idle, the first request waits `batch_wait_s` for company, so
        requests that arrive together are prefilled together."""
        comp = self.composer
        dec = ContinuousDecoder(comp.model, comp.basis, comp.codec.eos_id, comp.codec.pad_id)
        while True:
            new = []
            if not dec.rows:
                new.append(self.pending.get())  # idle: block until a request comes
                time.sleep(self.cfg.batch_wait_s)
            while len(dec.rows) + len(new) < self.cfg.max_batch:
                try:
                    new.append(self.pending.get_nowait())
                except queue.Empty:
                    break
            rows = [self._row(r, loop) for r in new]
            with comp.forward:
                try:
                    dec.admit(rows)
                except Exception as e:  # noqa: BLE001 - the joining rows learn of it; the batch goes on
                    for r in rows:
                        r.emit(e)
                try:
                    if dec.rows:
                        dec.step()
                except Exception as e:  # noqa: BLE001 - every row of the batch learns of the failure
                    dec.fail(e)
            if self.cfg.test_step_delay_s:
                time.sleep(self.cfg.test_step_delay_s)

    @staticmethod
    def _row(r: dict, loop) -> Row:
        ids, adapter, max_new = r["item"]
        return Row(ids, adapter, max_new, lambda t: loop.call_soon_threadsafe(r["out"].put_nowait, t),
                   cancelled=lambda: r["cancelled"])  # fmt: skip

    async def _enqueue(self, req: dict):
        """Resolve the user's adapter, build the prompt, queue the row; returns (row, prompt ids,
        compose ms) or an error dict."""
        user = req["user"]
        t0 = time.perf_counter()
        try:
            if user:
                await self.load_user(serve.get_multiplexed_model_id() or user)
                adapter = await asyncio.to_thread(self.composer.adapter_for, user)
            else:
                adapter = None
        except UnknownUser:
            return {"error": 404, "message": f"unknown user {user!r}: no record and no profile"}
        compose_ms = (time.perf_counter() - t0) * 1000
        prompt = req["prompt"]
        if self.memory is not None and user and req["chat"]:
            prompt = await asyncio.to_thread(self._with_memory, prompt, user)
        try:
            ids = self.composer.prompt_ids(prompt, req["chat"], req["max_tokens"])
        except PromptTooLong as e:
            return {"error": 400, "message": str(e)}
        if self.cfg.test_delay_s:
            await asyncio.sleep(self.cfg.test_delay_s)
        row = {"item": (ids, adapter, req["max_tokens"]), "out": asyncio.Queue(), "cancelled": False}
        if self.thread is None:
            loop = asyncio.get_running_loop()
            self.thread = threading.Thread(target=self._decode_loop, args=(loop,), daemon=True, name="decode")
            self.thread.start()
        self.pending.put(row)
        return row, ids, compose_ms

    def _with_memory(self, messages: list[dict], user: str) -> list[dict]:
        """The user's own top sessions (their scoped memory only) as a system message first."""
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        hits = self.memory.search(query, user_id=user, limit=self.cfg.memory_top_k)["results"]
        if not hits:
            return messages
        text = "\n\n".join(f"[{h['date'] or h['session_id']}] {h['text']}" for h in hits)
        return [{"role": "system", "content": "What you remember of this user:\n" + text}, *messages]

    async def _tokens(self, row: dict):
        while True:
            t = await row["out"].get()
            if t is None:
                return
            if isinstance(t, Exception):
                raise t
            yield t

    async def complete(self, req: dict) -> dict:
        got = await self._enqueue(req)
        if isinstance(got, dict):
            return got
        row, ids, compose_ms = got
        toks = [t async for t in self._tokens(row)]
        return {
            "text": self.composer.codec.decode(toks),  # unstripped: the same text a stream concatenates to
            "prompt_tokens": len(ids),
            "completion_tokens": len(toks),
            "finish_reason": "length" if len(toks) >= req["max_tokens"] else "stop",
            "compose_ms": compose_ms,
        }

    async def stream(self, req: dict):
        """Text deltas as the decoding loop makes them, then a final {"finish_reason", usage}."""
        got = await self._enqueue(req)
        if isinstance(got, dict):
            yield got
            return
        row, ids, _ = got
        toks, sent = [], ""
        try:
            async for t in self._tokens(row):
                toks.append(t)
                text = self.composer.codec.decode(toks)
                if len(text) > len(sent) and not text.endswith("\ufffd"):  # whole characters only
                    yield {"delta": text[len(sent) :]}
                    sent = text
            text = self.composer.codec.decode(toks)  # what was held back (a partial character) at the end
            if len(text) > len(sent):
                yield {"delta": text[len(sent) :]}
        finally:
            row["cancelled"] = True  # a client that went away: the row leaves the batch at the next step
        yield {
            "finish_reason": "length" if len(toks) >= req["max_tokens"] else "stop",
            "prompt_tokens": len(ids),
            "completion_tokens": len(toks),
        }

    async def users(self) -> list[str]:
        return self.composer.users_with_record()

    async def stats(self) -> dict:
        st = self.composer.stats
        return {**{k: v for k, v in st.items() if not k.startswith("cold_")}, "cold_ms_n": len(st["cold_ms"]),
                "cached": len(self.composer.lru)}  # fmt: skip


def make_gateway(cfg: ServeConfig):
    api = FastAPI(title="MTA users, OpenAI-compatible", docs_url=None, redoc_url=None, openapi_url=None)
    base = cfg.job.model.name

    json_errors(api)

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
            if not authorized(request.headers.get("authorization"), self.token):
                raise Refused(401, "missing or wrong bearer token")

        async def _read(self, request: Request) -> bytes:
            return await read_body(request, self.cfg.max_body)

        async def _answer(self, request: Request, chat: bool):
            try:
                self._auth(request)
                req = parse_body(await self._read(request), chat, self.cfg.max_tokens_cap, base)
                if self.inflight >= self.cfg.max_queue:
                    raise Refused(429, f"{self.cfg.max_queue} requests in flight; retry later")
            except Refused as e:
                return error(e.code, e.msg)
            req["chat"] = chat
            h = self.gen.options(multiplexed_model_id=req["user"] or "")
            if req["stream"]:
                return await self._stream(h, req)
            self.inflight += 1
            try:
                out = await h.complete.remote(req)
            finally:
                self.inflight -= 1
            if "error" in out:
                return error(out["error"], out["message"])
            return self._format(req, out, chat)

        def _head(self, req: dict, chat: bool) -> dict:
            obj = "chat.completion.chunk" if chat else "text_completion"
            return {"id": f"cmpl-{time.time_ns()}", "object": obj, "created": int(time.time()), "model": req["model"]}

        async def _stream(self, h, req: dict):
            chat = req["chat"]
            gen = h.options(stream=True).stream.remote(req)
            self.inflight += 1
            try:
                first = await gen.__anext__()
            except BaseException:
                self.inflight -= 1
                raise
            if "error" in first:
                self.inflight -= 1
                return error(first["error"], first["message"])
            head = self._head(req, chat)

            def chunk(delta: str | None, finish: str | None, usage: dict | None = None) -> str:
                c = dict(head)
                if chat:
                    d = {} if delta is None else {"content": delta}
                    c["choices"] = [{"index": 0, "delta": d, "finish_reason": finish}]
                else:
                    c["choices"] = [{"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}]
                if usage:
                    c["usage"] = usage
                return f"data: {json.dumps(c)}\n\n"

            async def events():
                try:
                    if chat:  # the role first, as OpenAI does
                        c = dict(head, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}])  # fmt: skip
                        yield f"data: {json.dumps(c)}\n\n"
                    msg = first
                    while True:
                        if "delta" in msg:
                            yield chunk(msg["delta"], None)
                        else:
                            usage = {
                                "prompt_tokens": msg["prompt_tokens"],
                                "completion_tokens": msg["completion_tokens"],
                                "total_tokens": msg["prompt_tokens"] + msg["completion_tokens"],
                            }
                            yield chunk(None, msg["finish_reason"], usage)
                            break
                        msg = await gen.__anext__()
                    yield "data: [DONE]\n\n"
                finally:
                    gen.cancel()  # a client that went away: Ray cancels the generator, the row leaves
                    self.inflight -= 1

            return StreamingResponse(events(), media_type="text/event-stream")

        def _format(self, req: dict, out: dict, chat: bool):
            ident, created = f"cmpl-{time.time_ns()}", int(time.time())
            usage = {
                "prompt_tokens": out["prompt_tokens"],
                "completion_tokens": out["completion_tokens"],
                "total_tokens": out["prompt_tokens"] + out["completion_tokens"],
            }
            obj = "chat.completion" if chat else "text_completion"
            fin = out["finish_reason"]
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": out["text"]}, "finish_reason": fin}
                if chat
                else {"index": 0, "text": out["text"], "finish_reason": fin, "logprobs": None}
            )
            body = {"id": ident, "object": obj, "created": created, "model": req["model"], "choices": [choice]}
            return JSONResponse({**body, "usage": usage})

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
        async def stats(self, request: Request):
            try:
                self._auth(request)
                if self.token is None and self.cfg.host not in (LOOPBACK, "localhost", "::1"):
                    raise Refused(401, "stats need a bearer token")
            except Refused as e:
                return error(e.code, e.msg)
            return JSONResponse(await self.gen.stats.remote())

    return Gateway


def app_for(cfg: ServeConfig):
    """The bound application: Gateway -> Generator (replicas: `cfg.replicas`)."""
    d = asdict(cfg)
    gen = Generator.options(
        num_replicas=cfg.replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
    ).bind(d)
    # the gateway admits up to max_queue requests at once and answers the next one 429 itself
    gw = make_gateway(cfg).options(max_ongoing_requests=cfg.max_queue + 8, max_queued_requests=cfg.max_queued_requests)
    return gw.bind(gen, d)


def build(args: dict):
    """`serve run serving.app:build config=PATH [key=value ...]`."""
    args = dict(args)
    path = args.pop("config", None)
    cfg = load_config(ServeConfig, Path(path) if path else None, [f"{k}={v}" for k, v in args.items()])
    return app_for(cfg)
