"""A minimal OpenAI-compatible chat server on loopback, answering with a local model.

    python -m memgas.serve --model smollm2 --port 8000     # then llm.backend=http llm.url=http://127.0.0.1:8000/v1

It exists so the HTTP backend is tested against a real server, and so a CPU machine can serve
SmolLM2 to several evaluation processes. `faults` injects failures for tests: a list of
"429", "500", "sleep:<s>", "empty", "malformed", "die" (the server stops for good, this request
unanswered) or "ok", consumed one per request.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from suite.ray_local import LOOPBACK


def make_server(llm, host: str = LOOPBACK, port: int = 0, faults: list[str] | None = None) -> ThreadingHTTPServer:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the test server binds loopback only")
    faults = list(faults or [])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code: int, payload: bytes):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with lock:
                fault = faults.pop(0) if faults else None
                self.server.requests += 1
            if fault == "die":
                self.close_connection = True
                threading.Thread(target=lambda: (self.server.shutdown(), self.server.server_close()), daemon=True).start()
                return
            if fault and fault.startswith("sleep:"):
                time.sleep(float(fault.split(":")[1]))
            elif fault in ("429", "500", "503"):
                return self._send(int(fault), b'{"error": "injected"}')
            elif fault == "empty":
                return self._send(200, json.dumps({"choices": [{"message": {"content": ""}}]}).encode())
            elif fault == "malformed":
                return self._send(200, b'{"nope": 1}')
            prompt = body["messages"][-1]["content"]
            text = llm.complete(prompt, int(body.get("max_tokens", 64)), float(body.get("temperature", 0.0)))
            self._send(200, json.dumps({"object": "chat.completion", "model": body.get("model", "local"),
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                     "finish_reason": "stop"}]}).encode())

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.requests = 0
    return srv


def main() -> None:
    from memgas.llm import LocalLLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    srv = make_server(LocalLLM(a.model), LOOPBACK, a.port)
    print(f"serving {a.model} on http://{LOOPBACK}:{srv.server_address[1]}/v1")
    srv.serve_forever()


if __name__ == "__main__":
    main()
