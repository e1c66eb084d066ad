"""The OpenAI-compatible paraphraser against a small fake server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

from tuneguard.errors import TuneguardError
from tuneguard.paraphrase import PARAPHRASERS


class FakeChat:
    """A chat-completions server whose answers are scripted, in order, then 200s: (status, body) pairs, or a
    function that writes the whole raw response itself (to break HTTP in ways http.server would not)."""

    def __init__(self, script: list[tuple[int, dict | str | bytes] | Callable] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                step = fake.script.pop(0) if fake.script else (200, None)
                if callable(step):
                    try:
                        step(self.wfile)
                    except OSError:  # the client gave up on a trickled answer
                        pass
                    return
                status, reply = step
                if reply is None:
                    prompt = body["messages"][-1]["content"]
                    reply = {"choices": [{"message": {"role": "assistant",
                                                      "content": "Here is the rewritten text:\n"
                                                                 + prompt.rsplit("\n", 1)[-1].upper()}}]}
                data = reply if isinstance(reply, bytes) else (reply if isinstance(reply, str)
                                                               else json.dumps(reply)).encode()
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
    return PARAPHRASERS.make("openai", **{"model": "fake-model", "base_url": url, "backoff": 0.01, "progress": False,
                                          **kwargs})


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


def bad_status_line(wfile):
    wfile.write(b"HTTP/1.1 two hundred\r\n\r\n")


def short_body(wfile):  # announces 500 bytes, sends 12, hangs up
    wfile.write(b'HTTP/1.0 200 OK\r\nContent-Length: 500\r\n\r\n{"choices": ')


@pytest.mark.parametrize("broken, problem", [
    ((200, b'\xff\xfe{"choices": []}'), r"the answer is not UTF-8 text \(byte 0\)"),
    (bad_status_line, "illegal status line"),
    (short_body, "peer closed connection without sending complete message body"),
])
def test_a_broken_answer_is_retried_then_one_line(broken, problem):
    with FakeChat([broken, broken]) as server:
        with pytest.raises(TuneguardError, match=rf"failed 2 times \(last: {problem}") as info:
            client(server.url, cache=False, max_retries=1).paraphrase(["x"])
        assert "\n" not in str(info.value) and len(server.requests) == 2
    with FakeChat([broken]) as server:  # a good answer after a broken one is used
        assert client(server.url, cache=False, max_retries=1).paraphrase(["x"]) == ["X"]


def trickle(wfile):
    """A valid answer, one byte every half second: no single read ever waits long enough to time out."""
    for byte in b'HTTP/1.0 200 OK\r\nContent-Length: 40\r\n\r\n{"choices": [{"message": {"content": "x"}}]}':
        wfile.write(bytes([byte]))
        time.sleep(0.5)


def test_a_trickling_server_is_cut_at_the_total_deadline():
    with FakeChat([trickle, trickle]) as server:
        start = time.monotonic()
        with pytest.raises(TuneguardError, match=r"failed 2 times \(last: no complete answer within 1 s\)"):
            client(server.url, cache=False, max_retries=1, timeout=1).paraphrase(["x"])
        assert time.monotonic() - start < 3.0 and len(server.requests) == 2


def test_ctrl_c_during_the_backoff_stops_every_request_at_once():
    def busy_then_ctrl_c(wfile):
        wfile.write(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        # Ctrl-C, once both requests are waiting out their backoff (a real SIGINT: it also wakes the event loop).
        threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()

    with FakeChat([busy_then_ctrl_c, (503, {"error": "busy"})]) as server:
        p = client(server.url, cache=False, workers=2, backoff=30, max_retries=3)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            p.paraphrase(["first", "second"])
        assert time.monotonic() - start < 3.0  # not after the 30 s backoff
        time.sleep(0.3)
        assert len(server.requests) == 2 and p.requests == 2  # no further attempt, now or later


def test_it_also_works_from_inside_a_running_event_loop():
    async def notebook_cell():
        return client(server.url, cache=False).paraphrase(["from a notebook"])

    with FakeChat() as server:
        assert asyncio.run(notebook_cell()) == ["FROM A NOTEBOOK"]
