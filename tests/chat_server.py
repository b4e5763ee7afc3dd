"""A real OpenAI-compatible chat-completions endpoint on 127.0.0.1, for the `openai` VLM provider's
tests and bench: a threading HTTP server that tells keys apart by their Authorization header and
answers each key as its script says (an answer, a 429 with Retry-After, a 401, a 500, a 400, a
stall, a trickle), keeping every request it saw: when, with which key, what body."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANONYMOUS = None  # the key of a request without an Authorization header


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `stall`: hold the request until `ChatServer.release` (or 60 s);
    `trickle_s`: send the headers, then one byte of the body every `trickle_s` seconds."""

    status: int = 200
    text: str | None = None  # the answer's content; None = say which key answered (by its place)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # sent as is instead of a completion (errors, garbage)
    delay_s: float = 0.0  # "generation" time before the answer
    stall: bool = False
    trickle_s: float = 0.0


OK = Reply()


def too_many(retry_after: str | None = None) -> Reply:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Reply(429, headers=headers, body=b'{"error": {"message": "Rate limit reached", "type": "requests"}}')


def refused(status: int = 401, echo: str = "") -> Reply:
    # OpenAI's own 401 names the key it refused; a provider could echo all of it.
    message = f"Incorrect API key provided: {echo}" if echo else "Incorrect API key provided"
    return Reply(status, body=json.dumps({"error": {"message": message}}).encode())


def server_error(status: int = 500) -> Reply:
    return Reply(status, body=b'{"error": {"message": "The server had an error"}}')


def bad_request(message: str = "Invalid image") -> Reply:
    return Reply(400, body=json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it: arrival (monotonic), key, the parsed body, the reply."""

    at: float
    key: str | None
    body: dict
    reply: Reply
    path: str


@dataclass
class _Script:
    replies: list[Reply] = field(default_factory=list)  # consumed in order; the last one repeats
    default: Reply = OK


class ChatServer:
    """`with ChatServer(keys) as server:` serves `server.base_url` (…/v1) until the block ends. A key
    not in `keys` gets a 401; scripts are set per key with `script(key, *replies)`."""

    def __init__(self, keys: tuple[str | None, ...] = (ANONYMOUS,)) -> None:
        self._scripts = {key: _Script() for key in keys}
        self._places = {key: place for place, key in enumerate(keys, 1)}
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self.in_flight: dict[str, int] = {}  # by the prompt's tag (`_tag`): who holds the server now
        self.max_in_flight: dict[str, int] = {}
        self.answered = 0  # replies sent in full
        self.release = threading.Event()  # set: stalled requests answer
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="chat-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, key: str | None, *replies: Reply, default: Reply = OK) -> None:
        with self._lock:
            self._scripts[key] = _Script(list(replies), default)

    def by_key(self, key: str | None) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.key == key]

    def keys_in_order(self) -> list[str | None]:
        with self._lock:
            return [seen.key for seen in self.seen]

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    # -- the handler ----------------------------------------------------------------------------------

    def _next_reply(self, key: str | None) -> Reply | None:
        with self._lock:
            script = self._scripts.get(key)
            if script is None:
                return None
            if script.replies:
                return script.replies.pop(0) if len(script.replies) > 1 else script.replies[0]
            return script.default

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                auth = self.headers.get("Authorization")
                key = auth.removeprefix("Bearer ") if auth else ANONYMOUS
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                reply = server._next_reply(key)
                if reply is None:
                    reply = refused()
                tag = _tag(body)
                with server._lock:
                    server.seen.append(Seen(arrived, key, body, reply, self.path))
                    server.in_flight[tag] = server.in_flight.get(tag, 0) + 1
                    server.max_in_flight[tag] = max(server.max_in_flight.get(tag, 0), server.in_flight[tag])
                try:
                    self._answer(reply, key)
                except OSError:
                    pass  # the client cut the connection (its watchdog): nothing more to say
                finally:
                    with server._lock:
                        server.in_flight[tag] -= 1

            def _answer(self, reply: Reply, key: str | None) -> None:
                if reply.stall:
                    server.release.wait(60)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.body is not None:
                    data = reply.body
                else:
                    text = reply.text if reply.text is not None else f"answered with key {server._places.get(key)}"
                    data = json.dumps(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "model": "test-vlm",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                        }
                    ).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.end_headers()
                if reply.trickle_s:
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(reply.trickle_s)
                else:
                    self.wfile.write(data)
                self.close_connection = True
                with server._lock:
                    server.answered += 1

        return Handler


def _tag(body: dict) -> str:
    """The prompt's first word without its digits ("ask2" → "ask"): tests name their requests'
    purpose there to follow them."""
    try:
        return str(body["messages"][0]["content"][0]["text"]).split(" ", 1)[0].rstrip("0123456789")
    except (KeyError, IndexError, TypeError):
        return "?"
