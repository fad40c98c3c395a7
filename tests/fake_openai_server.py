"""A fake OpenAI-compatible chat server on 127.0.0.1 for judge tests (http.server in a thread).

It answers ``POST /v1/chat/completions`` with one-token completions carrying logprobs. The judge's
choice is scripted from the prompt: the output shown second (identifier ``M``) gets probability
``p_good`` when it contains ``GOOD`` and ``1 - p_good`` otherwise, so a test knows the expected
preference for any order the evaluation shows. ``faults`` queues misbehaviours served first
(``500``, ``429``, ``401``, ``invalid_json``, ``no_logprobs``); after ``fail_after`` answers it only
returns 500 (a server that died). Every request is recorded.

Example::

    with FakeOpenAIServer() as server:
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=server.base_url)
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHOWN_SECOND = '"model_identifier": "M"'


class FakeOpenAIServer:
    """Serve fake chat completions until the ``with`` block ends (port chosen by the OS)."""

    def __init__(self, *, p_good: float = 0.9, logprobs: dict[str, float] | None = None,
                 faults: list[str] | None = None, fail_after: int | None = None) -> None:
        self.p_good = p_good
        self.fail_after = fail_after
        self.n_answered = 0
        self.fixed_logprobs = logprobs
        self.faults = list(faults or [])
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    fault = server.faults.pop(0) if server.faults else None
                    if server.fail_after is not None and server.n_answered >= server.fail_after:
                        fault = "500"
                    elif fault is None:
                        server.n_answered += 1
                server._respond(self, body, fault)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def hits(self) -> int:
        return len(self.requests)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def choice_logprobs(self, body: dict) -> dict[str, float]:
        if self.fixed_logprobs is not None:
            return self.fixed_logprobs
        prompt = body["messages"][-1]["content"]
        second = prompt.split(SHOWN_SECOND, 1)[1].split("## Task", 1)[0]
        p_second = self.p_good if "GOOD" in second else 1 - self.p_good
        return {"M": math.log(p_second), "m": math.log(1 - p_second)}

    def _respond(self, handler: BaseHTTPRequestHandler, body: dict, fault: str | None) -> None:
        if fault in ("500", "429", "401"):
            payload = json.dumps({"error": {"message": f"fake {fault} for key {handler.headers.get('Authorization')}",
                                            "type": "fake"}}).encode()
            handler.send_response(int(fault))
            handler.send_header("Content-Type", "application/json")
            if fault == "429":
                handler.send_header("Retry-After", "0.01")
                handler.send_header("retry-after-ms", "10")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        logprobs = self.choice_logprobs(body)
        best = max(logprobs, key=logprobs.get)
        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in
               sorted(logprobs.items(), key=lambda kv: -kv[1])]
        choice = {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": best},
                  "logprobs": {"content": [{"token": best, "logprob": logprobs[best], "bytes": list(best.encode()),
                                            "top_logprobs": top}]}}
        if fault == "no_logprobs":
            choice["logprobs"] = None
        completion = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [choice], "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}}
        payload = json.dumps(completion).encode()
        if fault == "invalid_json":
            payload = payload[: len(payload) // 2]  # a body cut in half: not valid JSON
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
