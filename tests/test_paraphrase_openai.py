"""The OpenAI-compatible paraphraser against a small fake server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from helpers import FakeChat
from tuneguard.errors import TuneguardError
from tuneguard.paraphrase import PARAPHRASERS


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


TRICKLED = b'HTTP/1.0 200 OK\r\nContent-Length: 40\r\n\r\n{"choices": [{"message": {"content": "x"}}]}'


def test_a_trickling_server_is_cut_at_the_total_deadline():
    """A valid answer sent one byte every 50 ms, so no single read waits long, but the whole answer takes 4 s: the
    0.3 s deadline on the request as a whole must cut it (a per-read timeout never would)."""
    cut_short = threading.Event()  # set once the test is over: the trickles still running stop there
    sent: list[int] = []  # bytes of each trickled answer sent before the client hung up

    def trickle(wfile):
        n = 0
        try:
            for byte in TRICKLED:
                if cut_short.wait(0.05):
                    break
                wfile.write(bytes([byte]))
                n += 1
        finally:
            sent.append(n)

    with FakeChat([trickle, trickle]) as server:
        with pytest.raises(TuneguardError, match=r"failed 2 times \(last: no complete answer within 0.3 s\)"):
            client(server.url, cache=False, max_retries=1, timeout=0.3).paraphrase(["x"])
        cut_short.set()
        assert len(server.requests) == 2
    # No answer was complete when the client gave up (the whole trickle takes 80 waits of 50 ms).
    assert len(sent) <= 2 and all(n < len(TRICKLED) for n in sent)


def test_ctrl_c_during_the_backoff_stops_every_request_at_once(monkeypatch, request):
    # Ctrl-C (a real SIGINT: it also wakes the event loop) as soon as both requests wait out their 30 s backoff,
    # seen through asyncio.sleep. The wait itself is a mocked clock: a backoff that was not cancelled ends after 5 s,
    # not 30, and is counted.
    real_sleep = asyncio.sleep
    backoffs: list[float] = []
    finished: list[float] = []

    async def backoff(delay, *args, **kwargs):
        if delay < 30:  # not a backoff (the HTTP client's own zero-length sleeps)
            return await real_sleep(delay, *args, **kwargs)
        backoffs.append(delay)
        if len(backoffs) == 2:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        await real_sleep(5)
        finished.append(delay)

    monkeypatch.setattr(asyncio, "sleep", backoff)
    # Python's own Ctrl-C handler, as in a user's process (asyncio.run cancels on SIGINT only over it): a library an
    # earlier test loaded may have left another in the suite's process.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with FakeChat([(503, {"error": "busy"}), (503, {"error": "busy"})]) as server:
        p = client(server.url, cache=False, workers=2, backoff=30, max_retries=3)
        with pytest.raises(KeyboardInterrupt):
            p.paraphrase(["first", "second"])
    assert backoffs == [30, 30] and not finished  # both waits were cancelled, none ran out
    # paraphrase() returned with its event loop closed: no request is left to retry, now or later.
    assert len(server.requests) == 2 and p.requests == 2


def test_it_also_works_from_inside_a_running_event_loop():
    async def notebook_cell():
        return client(server.url, cache=False).paraphrase(["from a notebook"])

    with FakeChat() as server:
        assert asyncio.run(notebook_cell()) == ["FROM A NOTEBOOK"]
