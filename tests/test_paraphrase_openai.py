"""The OpenAI-compatible paraphraser against a small fake server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneguard.errors import TuneguardError
from tuneguard.paraphrase import PARAPHRASERS


class FakeChat:
    """A chat-completions server whose answers are scripted: a list of (status, body) served in order, then 200s."""

    def __init__(self, script: list[tuple[int, dict | str]] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, reply = fake.script.pop(0) if fake.script else (200, None)
                if reply is None:
                    prompt = body["messages"][-1]["content"]
                    reply = {"choices": [{"message": {"role": "assistant",
                                                      "content": "Here is the rewritten text:\n"
                                                                 + prompt.rsplit("\n", 1)[-1].upper()}}]}
                data = (reply if isinstance(reply, str) else json.dumps(reply)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeChat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def client(url: str, **kwargs):
    return PARAPHRASERS.make("openai", model="fake-model", base_url=url, backoff=0.01, progress=False, **kwargs)


def test_chat_completion_with_key_seed_and_cleaned_answer(monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    with FakeChat() as server:
        p = client(server.url, api_key_env="TEST_KEY", workers=2)
        out = p.paraphrase(["first text", "second text"])
        assert out == ["FIRST TEXT", "SECOND TEXT"]  # the preamble line is stripped
        req = server.requests[0]
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
        assert req["body"]["model"] == "fake-model" and isinstance(req["body"]["seed"], int)
        assert any("first text" in r["body"]["messages"][0]["content"] for r in server.requests)
        assert client(server.url).paraphrase(["first text"]) == ["FIRST TEXT"]  # cached: no new request
        assert len(server.requests) == 2


def test_no_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChat() as server:
        client(server.url, cache=False).paraphrase(["x"])
        assert server.requests[0]["auth"] is None


def test_server_errors_are_retried_with_backoff():
    with FakeChat([(503, {"error": "busy"}), (429, {"error": "slow down"})]) as server:
        p = client(server.url, cache=False)
        assert p.paraphrase(["retry me"]) == ["RETRY ME"]
        assert len(server.requests) == 3 and p.requests == 3


def test_gives_up_after_the_retry_cap():
    with FakeChat([(500, {"error": "down"})] * 10) as server:
        p = client(server.url, cache=False, max_retries=2)
        with pytest.raises(TuneguardError, match="failed 3 times .*HTTP 500"):
            p.paraphrase(["x"])
        assert len(server.requests) == 3


def test_bad_key_stops_at_once_with_a_hint():
    with FakeChat([(401, {"error": "invalid key"})]) as server:
        with pytest.raises(TuneguardError, match=r"HTTP 401 .*invalid key.*set \$OPENAI_API_KEY"):
            client(server.url, cache=False).paraphrase(["x"])
        assert len(server.requests) == 1


def test_non_chat_answer_is_a_clear_error():
    with FakeChat([(200, {"unexpected": True})]) as server:
        with pytest.raises(TuneguardError, match="no chat completion"):
            client(server.url, cache=False).paraphrase(["x"])


def test_unreachable_server_is_retried_then_reported():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = client(f"http://127.0.0.1:{port}/v1", cache=False, max_retries=1, timeout=2)
    with pytest.raises(TuneguardError, match="failed 2 times"):
        p.paraphrase(["x"])


def test_base_url_must_be_http():
    with pytest.raises(TuneguardError, match="must start with http"):
        PARAPHRASERS.make("openai", base_url="ftp://example")
