"""The durable MemGAS store as a Ray Serve service, for users who outgrow one process: `shards`
deployments of one replica each, every one owning a disjoint set of users in its own SQLite file
(`dir/shard_NNN.sqlite`), behind a gateway with mem0's paths and JSON bodies.

    python -m ray_jobs.serve_memory --config ray_jobs/configs/serve_memory.yaml
    serve run serving.memory_service:build config=ray_jobs/configs/serve_memory.yaml

A user always lands on shard `sha256(user_id) mod shards` (stable across processes, restarts and
machines, unlike Python's `hash`). A shard is one replica because SQLite wants one writing process
per file on one host; a replica that dies is restarted by Serve and reopens its file, so every add
that was answered 200 is there (each add commits before it answers). Changing `shards` moves users:
it is part of the store's identity (`dir/shards.json`), and a mismatch is refused at start.

Routes (every refusal JSON, 4xx for the client's mistakes):
- `POST /v1/memories` {messages | text, user_id, session_id?, agent_id?, run_id?, metadata?, date?} → {id}
- `POST /v1/memories/search` {query, user_id, limit?, agent_id?, run_id?, filters?} → {results, router_weights}
- `GET /v1/memories?user_id=` → {results}; `DELETE /v1/memories?user_id=` → {deleted: n}
- `GET|PUT|DELETE /v1/memories/{id}?user_id=` (PUT body: {user_id, messages?, metadata?})
- `GET /v1/memories/{id}/history?user_id=` → {results}: that session's events
Binds loopback unless `host` says otherwise, and then needs the bearer token in `token_env`.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from ray import serve
from starlette.responses import JSONResponse

from memgas.memory import MemGASConfig
from serving.http import Refused, authorized, error, json_errors, read_body
from suite.config import ConfigError, from_dict, load_config, opt
from suite.ray_local import LOOPBACK


@dataclass
class MemoryServiceConfig:
    dir: str = opt("runs/memory_service", "folder of the shard files (shard_NNN.sqlite) and shards.json")
    shards: int = opt(2, "shard deployments (one replica each, one SQLite file each)", lo=1, hi=4096)
    memgas: MemGASConfig = field(default_factory=lambda: MemGASConfig(encoder="hashing"))
    host: str = opt(LOOPBACK, "address the HTTP server binds (loopback unless you mean otherwise)")
    port: int = opt(8020, "HTTP port", hi=65535)
    token_env: str = opt("SUITE_MEMORY_TOKEN", "environment variable holding the bearer token (required off loopback)")
    max_body: int = opt(1 << 20, "largest request body in bytes (413 beyond)", lo=1)
    max_users_in_memory: int = opt(1024, "per shard: users held in memory (LRU, memgas.tenants)", lo=1)
    shard_cpus: float = opt(
        0.5, "CPUs each shard replica reserves (Ray's default, 1, would need a core per shard)", lo=0
    )
    gateway_cpus: float = opt(0.0, "CPUs the gateway reserves (it only parses and forwards)", lo=0)


def shard_of(user_id: str, shards: int) -> int:
    """The shard owning `user_id`: a stable hash, the same in every process and on every machine."""
    return int.from_bytes(hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).digest()[:8], "big") % shards


def check_layout(cfg: MemoryServiceConfig) -> None:
    """Write `dir/shards.json` on first start; refuse a start whose shard count would move users."""
    d = Path(cfg.dir)
    d.mkdir(parents=True, exist_ok=True)
    f = d / "shards.json"
    if f.exists():
        have = json.loads(f.read_text(encoding="utf-8")).get("shards")
        if have != cfg.shards:
            raise ConfigError(f"{f}: the store has {have} shards, the config asks for {cfg.shards} (users would move)")
    else:
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps({"shards": cfg.shards, "hash": "sha256[:8] mod shards"}), encoding="utf-8")
        tmp.replace(f)


@serve.deployment(max_ongoing_requests=64)
class MemoryShard:
    """One shard: one durable store file, opened by this replica (and reopened by its successor)."""

    VERBS = ("add", "search", "get", "get_all", "update", "delete", "delete_all", "history")

    def __init__(self, cfg_dict: dict, k: int):
        from memgas.store import MemoryStore
        from suite.encoders import load_encoder

        cfg = from_dict(MemoryServiceConfig, cfg_dict, "memory service config")
        self.path = Path(cfg.dir) / f"shard_{k:03d}.sqlite"
        self.store = MemoryStore.open(
            self.path, cfg.memgas, encoder=load_encoder(cfg.memgas.encoder), max_users=cfg.max_users_in_memory
        )

    def call(self, verb: str, kwargs: dict) -> dict:
        """{"ok": result} or {"error": status, "message": ...}; never raises into the gateway."""
        from memgas.memory import ForgettingPending, StoreError
        from suite.io import DataError

        if verb not in self.VERBS:
            return {"error": 404, "message": f"unknown verb {verb!r}"}
        try:  # numpy scalars (scores, router weights) as plain JSON numbers
            return {"ok": json.loads(json.dumps(getattr(self.store, verb)(**kwargs), default=float))}
        except ForgettingPending as e:
            return {"error": 503, "message": str(e).split(": ", 1)[-1]}
        except (DataError, ValueError, TypeError) as e:
            return {"error": 400, "message": str(e)}
        except StoreError:
            return {"error": 500, "message": "store error"}

    def pid(self) -> int:
        return os.getpid()


def make_gateway(cfg: MemoryServiceConfig):
    api = json_errors(FastAPI(title="MemGAS memories", docs_url=None, redoc_url=None, openapi_url=None))

    @serve.deployment(max_ongoing_requests=256)
    @serve.ingress(api)
    class MemoryGateway:
        def __init__(self, shards: list, cfg_dict: dict):
            self.shards, self.cfg = shards, from_dict(MemoryServiceConfig, cfg_dict, "memory service config")
            self.token = os.environ.get(self.cfg.token_env) or None
            if self.cfg.host not in (LOOPBACK, "localhost", "::1") and not self.token:
                raise RuntimeError(f"bound to {self.cfg.host}: set {self.cfg.token_env} (bearer token) first")

        async def _body(self, request: Request) -> dict:
            if not authorized(request.headers.get("authorization"), self.token):
                raise Refused(401, "missing or wrong bearer token")
            raw = await read_body(request, self.cfg.max_body)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise Refused(400, "body is not JSON") from None
            if not isinstance(body, dict):
                raise Refused(400, "body must be a JSON object")
            return body

        def _user(self, value) -> str:
            if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
                raise Refused(400, "user_id: expected a non-empty string or integer")
            return str(value)

        async def _run(self, user_id: str, verb: str, kwargs: dict, wrap=None):
            out = await self.shards[shard_of(user_id, len(self.shards))].call.remote(
                verb, {**kwargs, "user_id": user_id}
            )
            if "error" in out:
                return error(out["error"], out["message"])
            return JSONResponse(wrap(out["ok"]) if wrap else out["ok"])

        async def _guard(self, fn):
            try:
                return await fn()
            except Refused as e:
                return error(e.code, e.msg)

        @api.post("/v1/memories")
        async def add(self, request: Request):
            async def go():
                b = await self._body(request)
                msgs = b.get("messages", b.get("text"))
                if msgs is None:
                    raise Refused(400, "messages (or text): required")
                kw = {k: b[k] for k in ("session_id", "agent_id", "run_id", "metadata", "date") if k in b}
                return await self._run(
                    self._user(b.get("user_id")), "add", {"messages": msgs, **kw}, lambda r: {"id": r}
                )

            return await self._guard(go)

        @api.post("/v1/memories/search")
        async def search(self, request: Request):
            async def go():
                b = await self._body(request)
                kw = {k: b[k] for k in ("limit", "agent_id", "run_id", "filters") if k in b}
                return await self._run(self._user(b.get("user_id")), "search", {"query": b.get("query"), **kw})

            return await self._guard(go)

        @api.get("/v1/memories")
        async def get_all(self, request: Request, user_id: str | None = None):
            async def go():
                await self._body(request)
                return await self._run(self._user(user_id), "get_all", {}, lambda r: {"results": r})

            return await self._guard(go)

        @api.delete("/v1/memories")
        async def delete_all(self, request: Request, user_id: str | None = None):
            async def go():
                await self._body(request)
                return await self._run(self._user(user_id), "delete_all", {}, lambda n: {"deleted": n})

            return await self._guard(go)

        @api.get("/v1/memories/{memory_id}")
        async def get(self, request: Request, memory_id: str, user_id: str | None = None):
            async def go():
                await self._body(request)
                r = await self._run(self._user(user_id), "get", {"session_id": memory_id})
                if r.status_code == 200 and r.body == b"null":
                    return error(404, f"no memory {memory_id[:100]!r} for this user")
                return r

            return await self._guard(go)

        @api.put("/v1/memories/{memory_id}")
        async def update(self, request: Request, memory_id: str):
            async def go():
                b = await self._body(request)
                kw = {k: b[k] for k in ("messages", "metadata") if k in b}
                r = await self._run(self._user(b.get("user_id")), "update", {"session_id": memory_id, **kw})
                return r if r.body != b"false" else error(404, f"no memory {memory_id[:100]!r} for this user")

            return await self._guard(go)

        @api.delete("/v1/memories/{memory_id}")
        async def delete(self, request: Request, memory_id: str, user_id: str | None = None):
            async def go():
                await self._body(request)
                r = await self._run(self._user(user_id), "delete", {"session_id": memory_id})
                if r.body == b"false":
                    return error(404, f"no memory {memory_id[:100]!r} for this user")
                return JSONResponse({"deleted": True}) if r.status_code == 200 else r

            return await self._guard(go)

        @api.get("/v1/memories/{memory_id}/history")
        async def history(self, request: Request, memory_id: str, user_id: str | None = None):
            async def go():
                await self._body(request)
                return await self._run(
                    self._user(user_id),
                    "history",
                    {},
                    lambda ev: {"results": [e for e in ev if e.get("session_id") == memory_id]},
                )

            return await self._guard(go)

    return MemoryGateway


def app_for(cfg: MemoryServiceConfig):
    check_layout(cfg)
    d = asdict(cfg)
    shards = [
        MemoryShard.options(
            name=f"MemoryShard{k:03d}", num_replicas=1, ray_actor_options={"num_cpus": cfg.shard_cpus}
        ).bind(d, k)
        for k in range(cfg.shards)
    ]
    return make_gateway(cfg).options(ray_actor_options={"num_cpus": cfg.gateway_cpus}).bind(shards, d)


def build(args: dict):
    """`serve run serving.memory_service:build config=PATH [key=value ...]`."""
    args = dict(args)
    path = args.pop("config", None)
    return app_for(
        load_config(MemoryServiceConfig, Path(path) if path else None, [f"{k}={v}" for k, v in args.items()])
    )
