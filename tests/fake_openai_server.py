"""A fake OpenAI-compatible chat server on 127.0.0.1 for judge tests (http.server in a thread).

It answers ``POST /v1/chat/completions`` with one-token completions carrying logprobs. The judge's
choice is scripted from the prompt: the output shown second (identifier ``M``) gets probability
``p_good`` when it contains ``GOOD`` and ``1 - p_good`` otherwise, so a test knows the expected
preference for any order the evaluation shows. ``faults`` queues misbehaviours served first
(``500``, ``429``, ``401``, ``invalid_json``, ``no_logprobs``, ``timeout``); after ``fail_after`` answers
it only returns 500 (a server that died). Every request is recorded, with its time and what it got.

Random faults: with ``fault_rate`` > 0 a seeded RNG picks, per request, a fault among ``fault_kinds``
(``timeout`` = no answer for ``hang_s`` seconds, then the connection is closed). ``stop_after_answers``
stops the server for good after that many usable answers (connections are then refused). Bounded:
the server stops itself after ``max_requests`` requests or ``lifetime_s`` seconds, whichever comes first.
``served`` counts what was sent (per outcome, and the ``usage`` tokens of every complete completion).

Example::

    with FakeOpenAIServer() as server:
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=server.base_url)
    with FakeOpenAIServer(fault_rate=0.3, fault_seed=1, retry_after_headers={"Retry-After": "1"}) as flaky:
        ...
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHOWN_SECOND = '"model_identifier": "M"'
FAULT_KINDS = ("500", "429", "timeout", "invalid_json", "no_logprobs")


class FakeOpenAIServer:
    """Serve fake chat completions until the ``with`` block ends (port chosen by the OS)."""

    def __init__(self, *, p_good: float = 0.9, logprobs: dict[str, float] | None = None,
                 faults: list[str] | None = None, fail_after: int | None = None, fault_rate: float = 0.0,
                 fault_seed: int = 0, fault_kinds: tuple[str, ...] = FAULT_KINDS,
                 retry_after_headers: dict[str, str] | None = None, hang_s: float = 1.0,
                 prompt_tokens: int | None = 100, stop_after_answers: int | None = None,
                 max_requests: int = 1000, lifetime_s: float = 120.0) -> None:
        self.p_good = p_good
        self.fail_after = fail_after
        self.n_answered = 0
        self.fixed_logprobs = logprobs
        self.faults = list(faults or [])
        self.fault_rate, self.fault_kinds = fault_rate, tuple(fault_kinds)
        self._rng = random.Random(fault_seed)
        self.retry_after_headers = retry_after_headers or {"Retry-After": "0.01", "retry-after-ms": "10"}
        self.hang_s = hang_s
        self.prompt_tokens = prompt_tokens  # None: the prompt's word count, so every request's usage differs
        self.stop_after_answers = stop_after_answers
        self.max_requests, self.lifetime_s = max_requests, lifetime_s
        self.requests: list[dict[str, Any]] = []
        self.served: Counter = Counter()  # outcome -> count, plus prompt_tokens / completion_tokens delivered
        self.stopped_because: str | None = None
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server._lock:
                    if len(server.requests) >= server.max_requests:
                        server.stop_in_background(f"max_requests={server.max_requests} reached")
                        return  # the connection closes without an answer
                    fault = server.faults.pop(0) if server.faults else None
                    if fault is None and server.fault_rate and server._rng.random() < server.fault_rate:
                        fault = server._rng.choice(server.fault_kinds)
                    if server.fail_after is not None and server.n_answered >= server.fail_after:
                        fault = "500"
                    elif fault is None:
                        server.n_answered += 1
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                            "time": time.monotonic(), "fault": fault})
                server._respond(self, body, fault)
                with server._lock:
                    server.served[fault or "ok"] += 1
                    if fault is None and server.n_answered == server.stop_after_answers:
                        server.stop_in_background(f"stop_after_answers={server.stop_after_answers}")

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
        self._timer = threading.Timer(self.lifetime_s, self.stop, args=(f"lifetime_s={self.lifetime_s}",))
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, reason: str | None = None) -> None:
        """Stop serving and close the port (later connections are refused); idempotent."""
        with self._stop_lock:
            if self._timer is not None:
                self._timer.cancel()
            if self.stopped_because is None:
                self.stopped_because = reason or "stopped"
                self._httpd.shutdown()
                self._httpd.server_close()
                self._thread.join(timeout=5)

    def stop_in_background(self, reason: str) -> None:
        """:meth:`stop` from a request handler (which must not wait for the serving loop itself)."""
        threading.Thread(target=self.stop, args=(reason,), daemon=True).start()

    def choice_logprobs(self, body: dict) -> dict[str, float]:
        if self.fixed_logprobs is not None:
            return self.fixed_logprobs
        prompt = body["messages"][-1]["content"]
        second = prompt.split(SHOWN_SECOND, 1)[1].split("## Task", 1)[0]
        p_second = self.p_good if "GOOD" in second else 1 - self.p_good
        return {"M": math.log(p_second), "m": math.log(1 - p_second)}

    def _respond(self, handler: BaseHTTPRequestHandler, body: dict, fault: str | None) -> None:
        if fault == "timeout":
            time.sleep(self.hang_s)  # longer than the client's timeout; then the connection just closes
            return
        if fault in ("500", "429", "401"):
            payload = json.dumps({"error": {"message": f"fake {fault} for key {handler.headers.get('Authorization')}",
                                            "type": "fake"}}).encode()
            handler.send_response(int(fault))
            handler.send_header("Content-Type", "application/json")
            if fault == "429":
                for name, value in self.retry_after_headers.items():
                    handler.send_header(name, value)
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
        prompt_tokens = self.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = sum(len(str(m["content"]).split()) for m in body["messages"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}
        completion = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [choice], "usage": usage}
        payload = json.dumps(completion).encode()
        if fault == "invalid_json":
            payload = payload[: len(payload) // 2]  # a body cut in half: not valid JSON
        else:  # a complete body: its usage reaches the client
            with self._lock:
                self.served["prompt_tokens"] += usage["prompt_tokens"]
                self.served["completion_tokens"] += usage["completion_tokens"]
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
