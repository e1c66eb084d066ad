"""``openai``: paraphrase through any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama).

Standard library only (urllib). Rate limits, server errors and network failures are retried with capped exponential
backoff (honouring ``Retry-After``); any other refusal (bad key, unknown model) stops at once with one line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from tuneguard.errors import TuneguardError
from tuneguard.paraphrase.base import InstructedParams, Paraphraser, clean_output
from tuneguard.params import param

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass
class OpenAIParams(InstructedParams):
    model: str = param("gpt-4o-mini", "the endpoint's model name")
    base_url: str | None = param(None, "the endpoint (default $OPENAI_BASE_URL, else OpenAI's)")
    api_key_env: str = param("OPENAI_API_KEY", "environment variable holding the key (not sent when unset)")
    temperature: float = param(0.7, "sampling temperature", ge=0)
    max_tokens: int = param(1024, "most tokens per answer", ge=1)
    timeout: float = param(60.0, "seconds to wait for one answer", gt=0)
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
        with ThreadPoolExecutor(max_workers=min(self.params.workers, len(prompts))) as pool:
            return list(pool.map(self.complete, prompts, seeds))

    def complete(self, prompt: str, seed: int) -> str | None:
        """One chat completion of ``prompt`` (the cleaned answer, or ``None`` when it is empty)."""
        p = self.params
        body = {"model": p.model, "messages": [{"role": "user", "content": prompt}], "temperature": p.temperature,
                "max_tokens": p.max_tokens, "seed": seed % 2**31}
        reply = self._post("/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TuneguardError(f"{self.base_url} returned no chat completion (got {str(reply)[:200]!r}); "
                                 "is it an OpenAI-compatible endpoint?") from None
        return clean_output(content) if isinstance(content, str) else None

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        p = self.params
        key = os.environ.get(p.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode("utf-8")
        url = self.base_url + path
        for attempt in range(p.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            self.requests += 1
            wait = min(p.max_backoff, p.backoff * 2**attempt)
            try:
                with urllib.request.urlopen(request, timeout=p.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200].replace("\n", " ")
                if exc.code not in RETRY_STATUS:
                    hint = f" (set ${p.api_key_env})" if exc.code in (401, 403) else ""
                    raise TuneguardError(f"{url} refused the request: HTTP {exc.code} {detail}{hint}") from None
                problem = f"HTTP {exc.code}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(p.max_backoff, float(retry_after))
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                problem = str(getattr(exc, "reason", exc))
            except json.JSONDecodeError:
                raise TuneguardError(f"{url} did not answer with JSON; is it an OpenAI-compatible endpoint?") from None
            if attempt < p.max_retries:
                log.warning("%s: %s; retrying in %.1f s", url, problem, wait)
                time.sleep(wait)
        raise TuneguardError(f"{url} failed {p.max_retries + 1} times (last: {problem}); check the server and "
                             "--base-url, or try again later")
