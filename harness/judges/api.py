"""A judge behind an OpenAI-compatible chat API (OpenAI itself, or vLLM serving an open judge).

One chat completion per pair: ``max_tokens=1``, ``logprobs=True``, ``top_logprobs=5`` (the config's
``completions_kwargs``), and the preference from the two choice tokens' logprobs (alpaca-eval's parser).

The client is the ``openai`` package's, with these rules:

- it talks only to the config's ``base_url`` (never ``$OPENAI_BASE_URL``; redirects are not followed);
- the API key comes only from the environment variable the config names (``api_key_env``); it is held
  by the client object and never written: not in counters, configs, caches, annotations or errors;
- the library retries 408/409/429/5xx, timeouts and dropped connections with exponential backoff and
  honours ``Retry-After`` (``max_retries``); on top of that, a response that cannot be read (truncated
  or invalid JSON) or carries no logprobs is asked again (``max_retries`` more times, backoff
  ``retry_backoff_s * 2^k``); after that the judge raises :class:`JudgeUnavailableError`, which
  carries the answers that did come in (the evaluation keeps them) and the pairs not yet sent are not
  tried (a server that is gone would make each wait through all its retries);
- ``counters`` count every HTTP request sent (``calls``), failed responses (``failed_calls``), tokens
  from the responses' ``usage``, and their cost at the config's prices.

Example::

    import os
    from harness.judges.base import JudgeItem
    from harness.judges.loading import load_judge
    os.environ["VLLM_API_KEY"] = "..."        # or leave unset for a server without --api-key
    judge = load_judge("weighted_vllm_multilingual", base_url="http://127.0.0.1:8000/v1")
    print(judge.preferences([JudgeItem("2+2?", "4", "5")]), judge.counters)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Sequence

from harness.judges.base import JudgeConfig, JudgeItem, Judgement, format_messages, new_counters, parse_preference
from xlpref.errors import InputError, ServiceUnavailableError

log = logging.getLogger(__name__)

#: Longest wait between two attempts at an unreadable answer (seconds).
MAX_BACKOFF_S = 60.0


class JudgeUnavailableError(ServiceUnavailableError):
    """The judge server gave no usable answer after all retries.

    ``finished`` holds the judgements of the items answered before it gave up (by position in the
    request), so the caller can keep what was paid for.
    """

    def __init__(self, message: str, finished: dict[int, Judgement] | None = None) -> None:
        super().__init__(message)
        self.finished = dict(finished or {})


class _MissingLogprobs(ValueError):
    pass


class OpenAICompatibleJudge:
    """AlpacaEval's weighted annotator through ``client.chat.completions`` with logprobs."""

    def __init__(self, config: JudgeConfig) -> None:
        if config.kind != "openai_compatible":
            raise InputError(f"judge config '{config.name}' is of kind {config.kind!r}; expected openai_compatible")
        self.config = config
        self.name = config.name
        self.config_hash = config.hash
        self.is_demo = bool(config.options["is_demo"])
        self.description = str(config.options["description"])
        self.base_url = str(config.options["base_url"])
        self.model = config.model
        self.counters = new_counters()
        self.chunk_size = 4 * int(config.options["max_concurrency"])
        self._lock = threading.Lock()
        self._client: Any = None
        self._key_env = str(config.options["api_key_env"])

    @classmethod
    def from_config(cls, config: JudgeConfig) -> OpenAICompatibleJudge:
        return cls(config)

    # -- the client ---------------------------------------------------------------------------------
    def _api_key(self) -> str:
        key = os.environ.get(self._key_env, "")
        if key:
            return key
        if self.config.options["is_api_key_required"]:
            raise InputError(f"environment variable {self._key_env} is not set; judge '{self.name}' reads its API key "
                             f"for {self.base_url} only from it")
        return "EMPTY"  # a server without authentication (vLLM without --api-key) accepts any key

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                http_client = openai.DefaultHttpxClient(
                    follow_redirects=False,
                    event_hooks={"request": [self._on_request], "response": [self._on_response]})
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=self._api_key(),
                    max_retries=int(self.config.options["max_retries"]),
                    timeout=float(self.config.options["timeout_s"]), http_client=http_client)
            return self._client

    def _on_request(self, request: Any) -> None:
        self._count(calls=1)

    def _on_response(self, response: Any) -> None:
        if response.status_code >= 400:
            self._count(failed_calls=1)

    def _count(self, **amounts: float) -> None:
        with self._lock:
            for key, amount in amounts.items():
                self.counters[key] += amount

    def _redact(self, text: str) -> str:
        key = os.environ.get(self._key_env, "")
        return text.replace(key, "***") if len(key) >= 4 else text

    # -- judging ------------------------------------------------------------------------------------
    def preferences(self, items: Sequence[JudgeItem]) -> list[float]:
        return [j.preference for j in self.judgements(items)]

    def judgements(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        """One chat completion per item (``max_concurrency`` in flight), in the order given.

        Raises:
            JudgeUnavailableError: an item failed after all retries; the items not yet started are not
                asked (the server is likely gone), the answers received are in its ``finished``.
        """
        if not items:
            return []
        client = self._get_client()
        messages = format_messages(self.config.prompt_template, items)
        workers = max(1, min(int(self.config.options["max_concurrency"]), len(items)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._judge_one, client, m) for m in messages]
            if wait(futures, return_when=FIRST_EXCEPTION).not_done:
                for future in futures:
                    future.cancel()  # only those not started; the running ones finish (and are kept)
        errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        if not errors:
            return [f.result() for f in futures]
        if isinstance(errors[0], JudgeUnavailableError):
            finished = {i: f.result() for i, f in enumerate(futures) if not f.cancelled() and f.exception() is None}
            raise JudgeUnavailableError(str(errors[0]), finished)
        raise errors[0]

    def _request_kwargs(self) -> dict:
        kwargs = {k: v for k, v in self.config.completions_kwargs.items() if k not in ("model_name", "batch_size")}
        return {"model": self.model, **kwargs}

    def _judge_one(self, client: Any, messages: list[dict]) -> Judgement:
        import openai
        import pydantic

        attempts = int(self.config.options["max_retries"]) + 1
        last_error = ""
        for attempt in range(attempts):
            try:
                response = client.chat.completions.create(messages=messages, **self._request_kwargs())
                choice = self._read(response)
                return Judgement(parse_preference(choice, self.config.parser_kwargs), choice)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise InputError(f"judge '{self.name}' at {self.base_url} refused the API key from ${self._key_env} "
                                 f"(HTTP {exc.status_code}); expected a valid key in that variable") from None
            except (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError) as exc:
                raise JudgeUnavailableError(f"judge '{self.name}' at {self.base_url} rejected the request (HTTP "
                                            f"{exc.status_code}): {self._redact(str(exc))[:300]}") from None
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                # Already retried by the client (429/5xx/timeouts, honouring Retry-After).
                raise JudgeUnavailableError(f"judge '{self.name}' at {self.base_url} unavailable after "
                                            f"{self.config.options['max_retries']} retries: "
                                            f"{type(exc).__name__}: {self._redact(str(exc))[:300]}") from None
            except (json.JSONDecodeError, pydantic.ValidationError, openai.APIResponseValidationError,
                    _MissingLogprobs) as exc:
                last_error = f"{type(exc).__name__}: {self._redact(str(exc))[:200]}"
                log.warning("judge %s: unusable answer (%s); attempt %d of %d", self.name, last_error, attempt + 1,
                            attempts)
            if attempt + 1 < attempts:
                time.sleep(min(float(self.config.options["retry_backoff_s"]) * 2 ** attempt, MAX_BACKOFF_S))
        raise JudgeUnavailableError(f"judge '{self.name}' at {self.base_url}: no usable answer after {attempts} "
                                    f"attempts ({last_error})")

    def _read(self, response: Any) -> dict:
        """The first choice as a plain dict (alpaca-eval's ``completions_all`` form); usage counted."""
        if isinstance(response, (str, bytes)):  # a body the client could not parse as a completion
            raise json.JSONDecodeError("response is not a chat completion", str(response)[:50], 0)
        usage = getattr(response, "usage", None)
        if usage is not None:
            prompt, completion = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
            options = self.config.options
            cost = (prompt * float(options["price_per_million_prompt_tokens"])
                    + completion * float(options["price_per_million_completion_tokens"])) / 1e6
            self._count(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost)
        if not getattr(response, "choices", None):
            raise _MissingLogprobs("response has no choices")
        choice = response.choices[0].model_dump()
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content or not content[0].get("top_logprobs"):
            raise _MissingLogprobs("response has no top_logprobs (does the server support logprobs?)")
        return choice
