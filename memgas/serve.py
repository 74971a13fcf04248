"""A minimal OpenAI-compatible chat server on loopback, answering with a local base model.

    python -m memgas.serve --model smollm2 --port 8000     # then llm.backend=http llm.url=http://127.0.0.1:8000/v1

It exists so the HTTP backend is tested against a real server, and so a CPU machine can serve
SmolLM2 to several evaluation processes (it serves the base model only: no per-user adapter). `faults`
injects failures for tests: a list of "429", "500", "sleep:<s>", "empty", "malformed", "die" (the
server stops for good, this request unanswered) or "ok", consumed one per request.

Hardened like a real endpoint; every refusal is a 4xx with a JSON body `{"error": {"message", "type",
"code"}}`, never a dropped connection:
- routes: `POST /v1/chat/completions` (with `stream: true` as server-sent events), `GET /v1/models`;
  any other path 404, another method 405;
- bodies over `max_body` bytes 413, bad JSON 400; `max_tokens` must be an integer in
  [1, max_tokens_cap] and `temperature` a finite number in [0, 2] (`Infinity`, `NaN`, `1e400`, a
  5,000-digit integer: 400); a prompt holding a lone surrogate 400;
- at most `max_connections` connections at once and `max_queue` requests waiting for the model:
  beyond, 429 at once;
- one deadline per request (`request_deadline_s`) for receiving it, however slowly the client
  drips bytes; a client that leaves during generation stops it at the next token (`srv.cancelled`).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from memgas.llm import LocalLLM
from suite.openai_params import check_prompt, generation_params, strict_json
from suite.ray_local import LOOPBACK

MAX_BODY = 1 << 20
MAX_TOKENS_CAP = 2048


class BadRequest(Exception):
    def __init__(self, code: int, msg: str):
        self.code, self.msg = code, msg


def error_body(code: int, msg: str) -> bytes:
    kind = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}
    return json.dumps(
        {"error": {"message": msg, "type": kind.get(code, "invalid_request_error"), "code": code}}
    ).encode()


def parse_request(headers, rfile, max_body: int, max_tokens_cap: int) -> dict:
    """{prompt, max_tokens, temperature, model, stream} from a chat request, or BadRequest."""
    raw_len = headers.get("Content-Length")
    if raw_len is None:
        raise BadRequest(411, "Content-Length required")
    if not raw_len.strip().isdigit() or len(raw_len.strip()) > 12:
        raise BadRequest(400, "bad Content-Length")
    n = int(raw_len)
    if n > max_body:
        raise BadRequest(413, f"body over {max_body} bytes")
    try:
        body = strict_json(rfile.read(n))
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
            raise ValueError("messages: expected a non-empty list of {role, content}")
        prompt = check_prompt(msgs[-1].get("content"))
        max_tokens, temperature, stream = generation_params(body, max_tokens_cap, 64)
    except ValueError as e:
        raise BadRequest(400, str(e)) from None
    model = body.get("model", "local")
    if not isinstance(model, str) or len(model) > 256:
        raise BadRequest(400, "model must be a string")
    return {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "model": model,
        "stream": stream,
    }


def _client_gone(sock: socket.socket) -> bool:
    """True once the peer closed its side (readable with no data)."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        return bool(r) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def make_server(
    llm,
    host: str = LOOPBACK,
    port: int = 0,
    faults: list[str] | None = None,
    max_body: int = MAX_BODY,
    max_tokens_cap: int = MAX_TOKENS_CAP,
    read_timeout_s: float = 10.0,
    request_deadline_s: float = 30.0,
    max_connections: int = 64,
    max_queue: int = 16,
    model_name: str = "local",
) -> ThreadingHTTPServer:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the test server binds loopback only")
    faults = list(faults or [])
    lock = threading.Lock()
    queue = threading.BoundedSemaphore(max_queue)

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout_s  # socket timeout: a silent client frees its thread
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def setup(self):
            super().setup()
            # one deadline for the whole request, however slowly it drips in
            self._deadline = threading.Timer(request_deadline_s, self._expire)
            self._deadline.daemon = True
            self._deadline.start()

        def _expire(self):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self):
            self._deadline.cancel()
            try:
                super().finish()
            except OSError:
                pass

        def _send(self, code: int, payload: bytes, ctype: str = "application/json"):
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client left
                self.close_connection = True

        def _error(self, code: int, msg: str):
            self.close_connection = True
            self._send(code, error_body(code, msg))

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                data = [{"id": model_name, "object": "model", "owned_by": "local"}]
                return self._send(200, json.dumps({"object": "list", "data": data}).encode())
            self._error(404, f"no route {self.path[:100]}")

        def _method_not_allowed(self):
            self._error(405, f"{self.command} is not supported")

        do_PUT = do_DELETE = do_PATCH = _method_not_allowed

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path[:100]}")
            try:
                req = parse_request(self.headers, self.rfile, max_body, max_tokens_cap)
            except BadRequest as e:
                return self._error(e.code, e.msg)
            except (TimeoutError, OSError):  # the client stopped sending, or the deadline passed
                self.close_connection = True
                return
            self._deadline.cancel()  # received: generation has its own limit (max_tokens)
            with lock:
                fault = faults.pop(0) if faults else None
                self.server.requests += 1
            if fault == "die":
                self.close_connection = True
                threading.Thread(
                    target=lambda: (self.server.shutdown(), self.server.server_close()), daemon=True
                ).start()
                return
            if fault and fault.startswith("sleep:"):
                time.sleep(float(fault.split(":")[1]))
            elif fault in ("429", "500", "503"):
                return self._send(int(fault), error_body(int(fault), "injected"))
            elif fault == "empty":
                return self._send(200, json.dumps({"choices": [{"message": {"content": ""}}]}).encode())
            elif fault == "malformed":
                return self._send(200, b'{"nope": 1}')
            if not queue.acquire(blocking=False):
                return self._error(429, f"more than {max_queue} requests are waiting for the model")
            try:
                gone = lambda: _client_gone(self.connection)  # noqa: E731
                if isinstance(llm, LocalLLM):
                    text = llm.complete(req["prompt"], req["max_tokens"], req["temperature"], should_stop=gone)
                else:
                    text = llm.complete(req["prompt"], req["max_tokens"], req["temperature"])
            finally:
                queue.release()
            if gone():
                self.server.cancelled += 1
                self.close_connection = True
                return
            ident, created = f"chatcmpl-{self.server.requests}", int(time.time())
            if req["stream"]:
                return self._stream(ident, created, req["model"], text)
            n_prompt, n_out = len(req["prompt"].split()), len(text.split())
            self._send(
                200,
                json.dumps(
                    {
                        "id": ident,
                        "object": "chat.completion",
                        "created": created,
                        "model": req["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {
                            "prompt_tokens": n_prompt,
                            "completion_tokens": n_out,
                            "total_tokens": n_prompt + n_out,
                        },
                    }
                ).encode(),
            )

        def _stream(self, ident: str, created: int, model: str, text: str):
            """Server-sent events as OpenAI streams them: role, content pieces, finish, [DONE]."""

            def chunk(delta: dict, finish=None) -> bytes:
                c = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
                c["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
                return b"data: " + json.dumps(c).encode() + b"\n\n"

            pieces = [w + " " for w in text.split(" ")] if text else []
            if pieces:
                pieces[-1] = pieces[-1][:-1]
            events = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces]
            events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for e in events:
                    self.wfile.write(e)
                    self.wfile.flush()
            except OSError:
                self.server.cancelled += 1

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.slots = threading.BoundedSemaphore(max_connections)
            self.requests = self.cancelled = self.refused = 0

        def process_request(self, request, client_address):
            if not self.slots.acquire(blocking=False):  # full: answer 429 at once, hold no thread
                self.refused += 1
                body = error_body(429, f"more than {max_connections} connections")
                try:
                    request.settimeout(1.0)
                    request.sendall(
                        b"HTTP/1.0 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                        + body
                    )
                except OSError:
                    pass
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return Server((host, port), Handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    srv = make_server(LocalLLM(a.model), LOOPBACK, a.port, model_name=a.model)
    print(f"serving {a.model} on http://{LOOPBACK}:{srv.server_address[1]}/v1")
    srv.serve_forever()


if __name__ == "__main__":
    main()
