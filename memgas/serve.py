"""A minimal OpenAI-compatible chat server on loopback, answering with a local model.

    python -m memgas.serve --model smollm2 --port 8000     # then llm.backend=http llm.url=http://127.0.0.1:8000/v1

It exists so the HTTP backend is tested against a real server, and so a CPU machine can serve
SmolLM2 to several evaluation processes. `faults` injects failures for tests: a list of
"429", "500", "sleep:<s>", "empty", "malformed", "die" (the server stops for good, this request
unanswered) or "ok", consumed one per request.

Hardened like a real endpoint: request bodies over `max_body` bytes get 413, bad JSON or a request
without messages gets 400 (the connection is answered, not dropped), `max_tokens` above
`max_tokens_cap` gets 400, and a client that stops sending is dropped after `read_timeout_s`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from memgas.llm import LocalLLM
from suite.ray_local import LOOPBACK

MAX_BODY = 1 << 20
MAX_TOKENS_CAP = 2048


class BadRequest(Exception):
    def __init__(self, code: int, msg: str):
        self.code, self.msg = code, msg


def parse_request(headers, rfile, max_body: int, max_tokens_cap: int) -> tuple[str, int, float, str]:
    """(prompt, max_tokens, temperature, model) from a chat request, or BadRequest."""
    raw_len = headers.get("Content-Length")
    if raw_len is None:
        raise BadRequest(411, "Content-Length required")
    try:
        n = int(raw_len)
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if n < 0 or n > max_body:
        raise BadRequest(413, f"body over {max_body} bytes")
    try:
        body = json.loads(rfile.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest(400, "body is not valid JSON") from None
    msgs = body.get("messages") if isinstance(body, dict) else None
    if (
        not isinstance(msgs, list)
        or not msgs
        or not isinstance(msgs[-1], dict)
        or not isinstance(msgs[-1].get("content"), str)
    ):
        raise BadRequest(400, "messages: expected a non-empty list of {role, content}")
    try:
        max_tokens, temperature = int(body.get("max_tokens", 64)), float(body.get("temperature", 0.0))
    except (TypeError, ValueError):
        raise BadRequest(400, "max_tokens and temperature must be numbers") from None
    if not 1 <= max_tokens <= max_tokens_cap:
        raise BadRequest(400, f"max_tokens must be in [1, {max_tokens_cap}]")
    return msgs[-1]["content"], max_tokens, temperature, str(body.get("model", "local"))


def make_server(
    llm,
    host: str = LOOPBACK,
    port: int = 0,
    faults: list[str] | None = None,
    max_body: int = MAX_BODY,
    max_tokens_cap: int = MAX_TOKENS_CAP,
    read_timeout_s: float = 10.0,
) -> ThreadingHTTPServer:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the test server binds loopback only")
    faults = list(faults or [])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout_s  # socket timeout: a half-sent request frees its thread

        def log_message(self, *a):
            pass

        def _send(self, code: int, payload: bytes):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            try:
                prompt, max_tokens, temperature, model = parse_request(
                    self.headers, self.rfile, max_body, max_tokens_cap
                )
            except BadRequest as e:
                self.close_connection = True
                return self._send(e.code, json.dumps({"error": e.msg}).encode())
            except (TimeoutError, OSError):  # the client stopped sending
                self.close_connection = True
                return
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
                return self._send(int(fault), b'{"error": "injected"}')
            elif fault == "empty":
                return self._send(200, json.dumps({"choices": [{"message": {"content": ""}}]}).encode())
            elif fault == "malformed":
                return self._send(200, b'{"nope": 1}')
            text = llm.complete(prompt, max_tokens, temperature)
            self._send(
                200,
                json.dumps(
                    {
                        "object": "chat.completion",
                        "model": model,
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                    }
                ).encode(),
            )

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    srv.requests = 0
    return srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    srv = make_server(LocalLLM(a.model), LOOPBACK, a.port)
    print(f"serving {a.model} on http://{LOOPBACK}:{srv.server_address[1]}/v1")
    srv.serve_forever()


if __name__ == "__main__":
    main()
