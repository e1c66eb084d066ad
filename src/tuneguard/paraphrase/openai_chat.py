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
from typing import Sequence

from tuneguard.errors import TuneguardError
from tuneguard.paraphrase.base import Paraphraser
from tuneguard.paraphrase.local import clean_output

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIParaphraser(Paraphraser):
    """Ask a chat model for each paraphrase (``workers`` requests in flight at once).

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, else OpenAI's; the key is read from the environment variable
    named by ``api_key_env`` (not sent when unset, for local servers that need none). The attempt seed is sent as
    ``seed``, which endpoints that support it use for reproducible sampling.
    """

    name = "openai"

    def __init__(self, model: str = "gpt-4o-mini", *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.7, max_tokens: int = 1024, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 30.0, workers: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise TuneguardError(f"base URL {self.base_url!r} must start with http:// or https://")
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.workers = max(1, workers)
        self.requests = 0  # HTTP requests sent, retries included

    def settings(self) -> dict:
        return {"model": self.model, "base_url": self.base_url, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def rewrite_batch(self, texts: Sequence[str], prompts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=min(self.workers, len(prompts))) as pool:
            return list(pool.map(self.complete, prompts, seeds))

    def complete(self, prompt: str, seed: int) -> str | None:
        """One chat completion of ``prompt`` (the cleaned answer, or ``None`` when it is empty)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": seed % 2**31}
        reply = self._post("/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TuneguardError(f"{self.base_url} returned no chat completion (got {str(reply)[:200]!r}); "
                                 "is it an OpenAI-compatible endpoint?") from None
        return clean_output(content) if isinstance(content, str) else None

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode("utf-8")
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            self.requests += 1
            wait = min(self.max_backoff, self.backoff * 2**attempt)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200].replace("\n", " ")
                if exc.code not in RETRY_STATUS:
                    hint = f" (set ${self.api_key_env})" if exc.code in (401, 403) else ""
                    raise TuneguardError(f"{url} refused the request: HTTP {exc.code} {detail}{hint}") from None
                problem = f"HTTP {exc.code}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(self.max_backoff, float(retry_after))
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                problem = str(getattr(exc, "reason", exc))
            except json.JSONDecodeError:
                raise TuneguardError(f"{url} did not answer with JSON; is it an OpenAI-compatible endpoint?") from None
            if attempt < self.max_retries:
                log.warning("%s: %s; retrying in %.1f s", url, problem, wait)
                time.sleep(wait)
        raise TuneguardError(f"{url} failed {self.max_retries + 1} times (last: {problem}); check the server and "
                             "--base-url, or try again later")
