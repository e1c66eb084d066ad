"""``openai``: paraphrase through any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama).

HTTP goes through ``httpx2`` (the maintained httpx, already required by the Hugging Face hub client), on one event
loop per batch. Each request has a total deadline (``timeout``: connecting, headers and body together), because
httpx's own timeouts bound each read, which a server trickling one byte at a time never trips. Rate limits, server
errors, network failures and malformed answers (a broken status line, a body shorter than announced, bytes that
are not UTF-8) are retried with capped exponential backoff (honouring ``Retry-After``); any other refusal (bad key,
unknown model) stops at once with one line. Ctrl-C stops at once too: the loop cancels every request and backoff
wait in flight, and ``KeyboardInterrupt`` propagates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Coroutine, Sequence, TypeVar

import httpx2

from tuneguard.errors import TuneguardError
from tuneguard.paraphrase.base import InstructedParams, Paraphraser, clean_output
from tuneguard.params import param

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

T = TypeVar("T")


class _Malformed(Exception):
    """An answer that arrived broken (retried like a network failure)."""


@dataclass
class OpenAIParams(InstructedParams):
    model: str = param("gpt-4o-mini", "the endpoint's model name")
    base_url: str | None = param(None, "the endpoint (default $OPENAI_BASE_URL, else OpenAI's)")
    api_key_env: str = param("OPENAI_API_KEY", "environment variable holding the key (not sent when unset)")
    temperature: float = param(0.7, "sampling temperature", ge=0)
    max_tokens: int = param(1024, "most tokens per answer", ge=1)
    timeout: float = param(60.0, "seconds one request may take in all (connect, wait, read the answer)", gt=0)
    max_retries: int = param(5, "retries of a rate-limited or failed request", ge=0)
    backoff: float = param(1.0, "first wait between retries, doubled each time (seconds)", ge=0)
    max_backoff: float = param(30.0, "longest wait between retries (seconds)", ge=0)
    workers: int = param(4, "requests in flight at once", ge=1)


class OpenAIParaphraser(Paraphraser):
    """Ask a chat model for each paraphrase (``workers`` requests in flight at once).

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, else OpenAI's; the key is read from the environment variable
    named by ``api_key_env`` (not sent when unset, for local servers that need none). The attempt seed is sent as
    ``seed``, which endpoints that support it use for reproducible sampling.
    """

    name = "openai"
    summary = "any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama) with the SOFT prompt"
    Params = OpenAIParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = (self.params.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise TuneguardError(f"base URL {self.base_url!r} must start with http:// or https://")
        self.requests = 0  # HTTP requests sent, retries included

    def settings(self) -> dict:
        p = self.params
        return {"model": p.model, "base_url": self.base_url, "temperature": p.temperature, "max_tokens": p.max_tokens}

    def rewrite_batch(self, texts: Sequence[str], prompts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        return _run(self._complete_all(prompts, seeds))

    async def _complete_all(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        headers = {}
        key = os.environ.get(self.params.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        slots = asyncio.Semaphore(self.params.workers)
        # timeout=None: the total deadline in _post bounds every phase of a request.
        async with httpx2.AsyncClient(headers=headers, timeout=None) as http:
            async def one(prompt: str, seed: int) -> str | None:
                async with slots:
                    return await self._complete(http, prompt, seed)

            try:
                async with asyncio.TaskGroup() as group:  # the first failure cancels the other requests
                    tasks = [group.create_task(one(p, s)) for p, s in zip(prompts, seeds, strict=True)]
            except ExceptionGroup as failed:
                raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _complete(self, http: httpx2.AsyncClient, prompt: str, seed: int) -> str | None:
        """One chat completion of ``prompt`` (the cleaned answer, or ``None`` when it is empty)."""
        p = self.params
        body = {"model": p.model, "messages": [{"role": "user", "content": prompt}], "temperature": p.temperature,
                "max_tokens": p.max_tokens, "seed": seed % 2**31}
        reply = await self._post(http, "/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TuneguardError(f"{self.base_url} returned no chat completion (got {str(reply)[:200]!r}); "
                                 "is it an OpenAI-compatible endpoint?") from None
        return clean_output(content) if isinstance(content, str) else None

    async def _post(self, http: httpx2.AsyncClient, path: str, body: dict) -> Any:
        p = self.params
        url = self.base_url + path
        for attempt in range(p.max_retries + 1):
            self.requests += 1
            wait = min(p.max_backoff, p.backoff * 2**attempt)
            try:
                async with asyncio.timeout(p.timeout):
                    response = await http.post(url, json=body)
                if response.is_success:
                    return _json(response.content, url)
                detail = response.content.decode("utf-8", "replace")[:200].replace("\n", " ")
                if response.status_code not in RETRY_STATUS:
                    hint = f" (set ${p.api_key_env})" if response.status_code in (401, 403) else ""
                    raise TuneguardError(f"{url} refused the request: HTTP {response.status_code} {detail}{hint}")
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = min(p.max_backoff, float(retry_after))
            except TimeoutError:
                problem = f"no complete answer within {p.timeout:g} s"
            except httpx2.RequestError as exc:  # connection, protocol (bad status line, short body), decoding
                problem = _first_line(exc)
            except _Malformed as exc:
                problem = str(exc)
            if attempt < p.max_retries:
                log.warning("%s: %s; retrying in %.1f s", url, problem, wait)
                await asyncio.sleep(wait)
        raise TuneguardError(f"{url} failed {p.max_retries + 1} times (last: {problem}); check the server and "
                             "--base-url, or try again later")


def _json(data: bytes, url: str) -> Any:
    """A successful answer's JSON; bytes that are not UTF-8 are a broken answer, text that is not JSON is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed(f"the answer is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise TuneguardError(f"{url} did not answer with JSON; is it an OpenAI-compatible endpoint?") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, also when called from inside a running event loop (a notebook): then on a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
