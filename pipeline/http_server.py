"""MLflow's scoring app behind limits: the server ``sentiment serve`` runs, and the same as a child
process (start it, wait until it answers, post JSON, stop it) for the HTTP tests and the serving
benchmark.

The app is MLflow's own (``mlflow.pyfunc.scoring_server.init``: ``/invocations``, ``/ping``,
``/health``, ``/version``, the payloads ``mlflow models serve`` takes), so its users change nothing.
``Limits``, a pure ASGI middleware in front of it, is what keeps one hostile request from taking
the process down, because MLflow reads any body whole, echoes bad input back in error bodies with
the stack trace, and answers 500 to a request without a Content-Type:

- a body over ``max_body_bytes`` gets 413 before it is read (by its Content-Length) or as soon as
  the streamed bytes pass the limit (chunked bodies);
- a request with more than ``max_reviews`` values gets 413; every review is cut to its last
  ``max_review_chars`` characters (the model keeps only its last ``max_len`` tokens anyway);
- with ``max_concurrency`` requests already being read or scored, another gets 503 at once;
- a request must arrive whole, headers and body, within ``request_timeout`` seconds of its first
  byte (of the connection's opening, for its first request): a slower client gets 408 and its
  connection is closed, which frees its slot (``RequestDeadline``; uvicorn waits forever);
- a missing Content-Type means JSON;
- every error body is ``{"error_code", "message"}``, the message short and without the input.

Requests scored at the same time are scored as one batch (``Batched``): one Keras call for many
reviews costs about what one call for one review costs. Before the server answers, the model is
compiled for every input shape scoring can use (``compiled``), so no request waits on XLA.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import io
import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from pipeline.config import ServeConfig, flag
from pipeline.signals import stop

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# How `serve_model` hands the model folder and the limits to uvicorn's worker processes. Not
# SENTIMENT_*: the config would read those as settings.
MODEL_PATH_VAR = "PIPELINE_SERVE_MODEL_PATH"
LIMITS_VAR = "PIPELINE_SERVE_LIMITS"

MESSAGE_CHARS = 300  # longest error message sent back
DATA_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records")
JSON, PARQUET = "application/json", "application/vnd.apache.parquet"
_ERROR_BODY_KEPT = 64 * 1024  # an app's error body up to this size is read whole
_ERROR_TAIL_KEPT = 4096  # of a longer one, its end (where MLflow's message has the error)
_LARGE_BODY = 1 << 20  # after a body this big, hand freed memory back to the system
_ERROR_CODES = {400: "BAD_REQUEST", 404: "ENDPOINT_NOT_FOUND", 413: "REQUEST_LIMIT_EXCEEDED"}
_ERROR_CODES |= {503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


# --- running the server -------------------------------------------------------------------------


def serve_model(model_path: str, cfg: ServeConfig) -> None:
    """Serve the MLflow model in the local folder ``model_path`` until SIGINT or SIGTERM.

    uvicorn starts ``cfg.workers`` processes that each import the app by name (its rule for more
    than one), so the folder and the limits reach them as environment variables; with one worker
    the app runs in this process.
    """
    import uvicorn

    os.environ[MODEL_PATH_VAR] = str(model_path)
    os.environ[LIMITS_VAR] = cfg.model_dump_json()
    bound_allocator()
    uvicorn.run(
        "pipeline.http_server:app_from_environment",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=cfg.workers,
        timeout_graceful_shutdown=10,
        http="pipeline.http_server:RequestDeadline",  # by name: uvicorn's workers import it
    )


_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
_ARENAS = 2


def bound_allocator() -> None:
    """At most ``_ARENAS`` glibc malloc arenas in this process and the workers it starts
    (``MALLOC_ARENA_MAX``, unless already set).

    By default glibc gives the server's threads (``max_concurrency`` + 1 reading and scoring, up
    to 4 for the model) up to 8 arenas per core, and each arena keeps the high-water mark of the
    requests its threads once held: resident memory crept up with every round of mixed-size
    requests (1.27× its start-up size by round 9 of 10 on the sample's champion; with this and
    the scorer traced once, 1.20× at most; benchmarks/results/serving_memory*.md). Scoring runs
    one batch at a time, so two arenas cost no throughput worth measuring.
    """
    os.environ.setdefault("MALLOC_ARENA_MAX", str(_ARENAS))
    with contextlib.suppress(OSError, AttributeError, ValueError):  # not glibc: nothing to do
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))


def app_from_environment() -> App:
    """The app of one worker process, from the variables ``serve_model`` set."""
    return create_app(os.environ[MODEL_PATH_VAR], ServeConfig.model_validate_json(os.environ[LIMITS_VAR]))


def create_app(model_path: str, cfg: ServeConfig) -> App:
    """MLflow's scoring app for the pyfunc in ``model_path`` (loaded once, compiled for every input
    shape before the first request: ``compiled``), behind ``Limits``."""
    from pipeline.serve import scoring_app

    return Limits(scoring_app(model_path, wrap=lambda model: Batched(compiled(model))), cfg)


def compiled(model: Any) -> Any:
    """The loaded pyfunc, its scorer compiled for every input shape when it can be (our models):
    a server starts some seconds later and then never stalls a request on a compilation."""
    python_model = None
    with contextlib.suppress(Exception):  # not a Python model: nothing of ours to compile
        python_model = model.unwrap_python_model()
    compile_scorer = getattr(python_model, "compile_scorer", None)
    if compile_scorer is not None:
        started = time.perf_counter()
        shapes = compile_scorer()
        # In the server's own output (uvicorn's logger), which says why start-up took these seconds.
        logging.getLogger("uvicorn.error").info(
            "scorer compiled for %d input shapes in %.1f s", shapes, time.perf_counter() - started
        )
    return model


# --- the limits ---------------------------------------------------------------------------------


@functools.cache
def _limits() -> ServeConfig:
    """The limits ``serve_model`` handed this process (the defaults when it did not)."""
    given = os.environ.get(LIMITS_VAR)
    return ServeConfig.model_validate_json(given) if given else ServeConfig()


class RequestDeadline(AutoHTTPProtocol):
    """uvicorn's HTTP protocol, with ``request_timeout`` seconds for each request to arrive whole.

    The clock starts when the connection opens (its first request) or when a later request's
    first byte arrives, and stops when the request's last body byte is in. A client slower than
    that gets 408 and its connection is closed, so ``Limits``, waiting on the body, reads a
    disconnect and frees its slot: without it, 32 clients that send headers and stall hold every
    slot for good (uvicorn bounds neither headers nor bodies in time). Idle keep-alive
    connections are uvicorn's own ``timeout_keep_alive`` (5 s).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._stop_clock()  # arrived whole: scoring it may take what it takes
        elif self._deadline is None:
            self._start_clock()  # the first bytes of another request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _start_clock(self) -> None:
        self._deadline = self.loop.call_later(_limits().request_timeout, self._expire)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle, seconds = self.cycle, _limits().request_timeout
        if not (cycle is not None and cycle.more_body and cycle.response_started):  # e.g. a 413 sent
            self.transport.write(_timeout_response(seconds))
        logging.getLogger("uvicorn.error").info(
            "%s: request not received within %g s (request_timeout): connection closed",
            ":".join(map(str, self.client or ("client",))),
            seconds,
        )
        self.transport.close()


def _timeout_response(seconds: float) -> bytes:
    message = f"request not received within {seconds:g} s (request_timeout)"
    body = json.dumps({"error_code": "REQUEST_TIMEOUT", "message": message}).encode()
    head = f"HTTP/1.1 408 Request Timeout\r\ncontent-type: {JSON}\r\ncontent-length: {len(body)}\r\n"
    return (head + "connection: close\r\n\r\n").encode("latin-1") + body


class ClientGone(Exception):
    """The client disconnected before its body arrived: nobody to answer."""


class Rejected(Exception):
    """A request answered with a short error instead of reaching the model."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


class Limits:
    """Pure ASGI middleware enforcing a ``ServeConfig``'s limits in front of MLflow's app.

    One event loop per process, so ``busy`` (requests being read or scored) needs no lock. The
    body is read here, within its limit, and replayed to the app: MLflow reads it whole.
    """

    def __init__(self, app: App, cfg: ServeConfig) -> None:
        self.app, self.cfg, self.busy = app, cfg, 0
        self._threads: ThreadPoolExecutor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._threads is None:
            # MLflow scores in the loop's default pool (asyncio.to_thread), as many threads as
            # cores + 4: too few for every admitted request to wait in one batch.
            self._threads = ThreadPoolExecutor(self.cfg.max_concurrency + 1, "scoring")
            asyncio.get_running_loop().set_default_executor(self._threads)
        reply = ShortErrors(send)
        try:
            await self._handle(scope, receive, reply)
        except Rejected as rejected:
            await respond(send, rejected.status, rejected.message, rejected.headers)
        except ClientGone:
            pass
        except Exception:  # the server's own log keeps the traceback; the client gets one line
            log.exception("error answering %s %s", scope.get("method"), scope.get("path"))
            if not reply.started:
                await respond(send, 500, "internal error while scoring; the server log has the details")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = content_length(scope)
        if declared is not None and declared > self.cfg.max_body_bytes:
            raise self._too_large()
        if (scope["method"], scope["path"]) != ("POST", "/invocations"):
            await self.app(scope, receive, send)
            return
        if self.busy >= self.cfg.max_concurrency:
            message = f"busy: {self.cfg.max_concurrency} requests are being scored (max_concurrency)"
            raise Rejected(503, message, {"Retry-After": "1"})
        slot, body = Slot(self), b""
        try:
            body = await self._read_body(receive)
            scope = with_content_type(scope)
            body = await asyncio.to_thread(checked_body, body, header(scope, b"content-type"), self.cfg)
            await self.app(with_length(scope, len(body)), replay(body, receive), slot.releasing(send))
        finally:
            slot.release()
            if len(body) >= _LARGE_BODY:
                release_memory()

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, or Rejected(413) as soon as it passes the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.cfg.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> Rejected:
        message = f"request body too large: the limit is {self.cfg.max_body_bytes} bytes (max_body_bytes)"
        # uvicorn reads and drops the rest of the body (for up to timeout_keep_alive seconds) so
        # that the client, done sending, reads this answer instead of a reset connection.
        return Rejected(413, message)


class Slot:
    """One of ``max_concurrency``: held from the request's first byte to its answer's last (the
    app's task may end later, while the client already sends its next request)."""

    def __init__(self, limits: Limits) -> None:
        self._limits, self._held = limits, True
        limits.busy += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits.busy -= 1

    def releasing(self, send: Send) -> Send:
        async def send_then_release(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.release()

        return send_then_release


def checked_body(body: bytes, content_type: str, cfg: ServeConfig) -> bytes:
    """``body`` within the review limits: Rejected(413) over ``max_reviews``, reviews cut to their
    last ``max_review_chars`` characters (re-encoded only when one was cut)."""
    mime = content_type.split(";")[0].strip().lower()
    if mime == JSON:
        return checked_json(body, cfg)
    if mime == PARQUET:
        check_parquet(body, cfg)
    return body  # CSV: MLflow cannot type the model's Any column, it answers 400; others 415


def checked_json(body: bytes, cfg: ServeConfig) -> bytes:
    """Parsed here, so invalid JSON never reaches MLflow, whose message would echo the body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise Rejected(400, f"Invalid input. The body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        return body  # MLflow names the formats it takes
    cut = False
    for count, (parent, key) in enumerate(data_values(payload), start=1):
        if count > cfg.max_reviews:
            raise too_many(cfg)
        value = parent[key]
        if isinstance(value, str) and len(value) > cfg.max_review_chars:
            parent[key], cut = value[-cfg.max_review_chars :], True
    return json.dumps(payload).encode() if cut else body


def data_values(payload: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every value (not dict keys, not lists) under the payload's data keys.

    Every value counts as a review: a JSON body can hold one in three bytes (``"",``), and the
    model's input may be any shape. Walked with a stack of iterators, so a deep or wide payload
    costs no recursion and no copy.
    """
    stack = [_children(payload, [key for key in DATA_KEYS if key in payload])]
    while stack:
        for parent, key in stack[-1]:
            value = parent[key]
            if parent is payload and key == "dataframe_split" and isinstance(value, dict):
                stack.append(_children(value, ["data"] if "data" in value else []))  # not columns
            elif isinstance(value, dict | list):
                stack.append(_children(value, list(value) if isinstance(value, dict) else range(len(value))))
            else:
                yield parent, key
                continue
            break
        else:
            stack.pop()


def _children(container: Any, keys: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    return zip(itertools.repeat(container), keys)


def check_parquet(body: bytes, cfg: ServeConfig) -> None:
    """Rows and decompressed size from the file's footer: a few compressed megabytes can hold
    gigabytes of text."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(io.BytesIO(body)).metadata
    except Exception:  # not Parquet: MLflow answers 400
        return
    if meta.num_rows > cfg.max_reviews:
        raise too_many(cfg)
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size > cfg.max_body_bytes:
        message = f"Parquet body too large once decompressed: the limit is {cfg.max_body_bytes} bytes"
        raise Rejected(413, message + " (max_body_bytes)")


def too_many(cfg: ServeConfig) -> Rejected:
    return Rejected(413, f"too many reviews: the limit is {cfg.max_reviews} per request (max_reviews)")


# --- short error bodies ---------------------------------------------------------------------------


class ShortErrors:
    """``send`` with any 4xx/5xx body replaced by a short ``{"error_code", "message"}``.

    MLflow's error bodies carry the stack trace and its messages the input (``Failed to predict
    data '<every review>'. Error: row 3: ...``): of a long one only the head (the error code) and
    the tail (the error itself) are kept.
    """

    def __init__(self, send: Send) -> None:
        self._send, self.started = send, False
        self._error: Message | None = None
        self._head, self._tail, self._size = b"", b"", 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400:
                self._error = message
                return
        elif message["type"] == "http.response.body" and self._error is not None:
            chunk = message.get("body", b"")
            self._head += chunk[: _ERROR_BODY_KEPT - len(self._head)]
            self._tail = (self._tail + chunk[-_ERROR_TAIL_KEPT:])[-_ERROR_TAIL_KEPT:]
            self._size += len(chunk)
            if not message.get("more_body", False):
                status = self._error["status"]
                if self._size <= _ERROR_BODY_KEPT:
                    code, text = error_parts(status, self._head)
                else:
                    code, text = long_error_parts(status, self._head, self._tail)
                await respond(self._send, status, text, code=code)
            return
        await self._send(message)


async def respond(
    send: Send, status: int, message: str, headers: Mapping[str, str] | None = None, code: str | None = None
) -> None:
    """Send a whole JSON error response: ``{"error_code": ..., "message": <at most MESSAGE_CHARS>}``."""
    body = json.dumps({"error_code": code or error_code(status), "message": shorten(message)}).encode()
    fields = {"content-type": JSON, "content-length": str(len(body)), **(headers or {})}
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in fields.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_code(status: int) -> str:
    return _ERROR_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")


def error_parts(status: int, body: bytes) -> tuple[str, str]:
    """(error code, message) of an app's error body: MLflow's JSON, FastAPI's ``detail`` or text."""
    code, message = error_code(status), _phrase(status)
    try:
        answer = json.loads(body)
    except ValueError:
        return code, body.decode("utf-8", errors="replace") or message  # e.g. MLflow's 415 text
    if isinstance(answer, dict):
        found_code = answer.get("error_code")
        message = str(answer.get("message", answer.get("detail", message)))
        code = found_code if isinstance(found_code, str) else code
    return code, message


def long_error_parts(status: int, head: bytes, tail: bytes) -> tuple[str, str]:
    """(error code, message) of an error body too long to keep: MLflow writes ``error_code``
    first, and its message ends with the error itself, after the input (``... Error: row 3: ...``)."""
    code = re.search(rb'"error_code":\s*"([A-Z_]{1,64})"', head)
    start = tail.rfind(b"Error: ")
    error = re.match(rb'(?:[^"\\]|\\.)*', tail[start:]) if start >= 0 else None
    try:
        message = json.loads(b'"' + error.group(0) + b'"') if error else _phrase(status)
    except ValueError:
        message = _phrase(status)
    return (code.group(1).decode() if code else error_code(status)), message


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+\-]+){3,}")


def shorten(message: str) -> str:
    """The error alone, at most MESSAGE_CHARS, without traceback, file paths or the input.

    MLflow writes the input before the error (``Failed to predict data '...'. Error: row 1: ...``,
    ``... Error: '...'\\nInput: ...``): what follows its last ``Error: `` is the error itself.
    """
    if "Error: " in message:
        message = message.rpartition("Error: ")[2]
    message = message.split("\nInput:")[0].split("Traceback (most recent call last)")[0]
    message = _PATH.sub("<path>", " ".join(message.split()))
    return message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 1] + "…"


# --- ASGI plumbing ------------------------------------------------------------------------------


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def content_length(scope: Scope) -> int | None:
    try:
        return int(header(scope, b"content-length"))
    except ValueError:
        return None  # chunked: counted as it streams in


def with_content_type(scope: Scope) -> Scope:
    """A request without a Content-Type (or an empty one) is JSON: MLflow would answer 500."""
    if header(scope, b"content-type").strip():
        return scope
    headers = [(key, value) for key, value in scope["headers"] if key.lower() != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", JSON.encode())]}


def with_length(scope: Scope, length: int) -> Scope:
    """The headers of the body as replayed: its length, no chunked encoding."""
    dropped = (b"content-length", b"transfer-encoding")
    headers = [(key, value) for key, value in scope["headers"] if key.lower() not in dropped]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the body already read, then the client's own (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc): after a large request the freed
    memory otherwise stays in the process's resident size."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


# --- scoring concurrent requests together -------------------------------------------------------


class Batched:
    """The loaded pyfunc, scoring the requests that arrive while it is busy as one batch.

    MLflow scores each request in a thread of its own; one Keras call costs about the same for one
    review as for dozens, so concurrent calls mostly wait on each other. Here one thread at a time
    scores everything queued so far; each request gets its own rows back. A request with a bad row
    (or any batch that fails) is scored alone, so its error names its own row. Results equal
    scoring each request alone: a review is fed at its own length bucket in any batch.
    """

    def __init__(self, model: Any) -> None:
        self.model, self.metadata = model, model.metadata
        self._queue: list[_Job] = []
        self._queue_lock, self._score_lock = threading.Lock(), threading.Lock()

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if params:
            return self.model.predict(data, params=params)
        job = _Job(data)
        with self._queue_lock:
            self._queue.append(job)
        with self._score_lock:
            if not job.done:
                with self._queue_lock:
                    jobs, self._queue = self._queue, []
                self._score(jobs)
        return job.result()

    def _score(self, jobs: list[_Job]) -> None:
        """One model call for every job whose reviews read well, then each other job alone: a bad
        row (the model's error names it), a failed batch, or a batch of one."""
        import pandas as pd

        from pipeline.serve import TEXT_COLUMN, InputError, review_texts

        texts: dict[_Job, list[str]] = {}
        for job in jobs:
            with contextlib.suppress(InputError, TypeError, ValueError):
                texts[job] = review_texts(job.data)
        if len(texts) > 1:
            with contextlib.suppress(Exception):  # each job is scored alone below: its own error
                scored = self.model.predict(
                    pd.DataFrame({TEXT_COLUMN: [t for each in texts.values() for t in each]})
                )
                start = 0
                for job, job_texts in texts.items():
                    job.finish(scored.iloc[start : start + len(job_texts)].reset_index(drop=True))
                    start += len(job_texts)
        for job in jobs:
            if not job.done:
                job.run(self.model)


class _Job:
    def __init__(self, data: Any) -> None:
        self.data, self.done = data, False
        self._result: Any = None
        self._error: Exception | None = None

    def run(self, model: Any) -> None:
        try:
            self.finish(model.predict(self.data))
        except Exception as error:  # re-raised in the request's own thread
            self._error, self.done = error, True

    def finish(self, result: Any) -> None:
        self._result, self.done = result, True

    def result(self) -> Any:
        error, self._error = self._error, None
        if error is None:
            return self._result
        try:
            raise error
        finally:  # the error's traceback holds this frame: without this, a cycle holding the input
            del error


# --- a server in a child process (tests, benchmark) ---------------------------------------------


class Server(NamedTuple):
    """A running ``sentiment serve``: its base URL, and its process id (memory, signals)."""

    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(model_uri: str, tracking_uri: str, port: int, **options: object) -> list[str]:
    """argv of ``sentiment serve`` for ``model_uri`` on 127.0.0.1:``port``; ``options`` are
    ``serve`` settings by field name (``workers=2``, ``max_body_bytes=65536``)."""
    command = [str(Path(sys.executable).parent / "sentiment"), "serve", model_uri]
    command += ["--tracking-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port)]
    for name, value in options.items():
        command += [flag(f"serve.{name}", ("serve", "tracking")), str(value)]
    return command


@contextlib.contextmanager
def model_server(
    model_uri: str, tracking_uri: str, log_file: Path, *, startup_timeout: float = 120.0, **options: object
) -> Iterator[Server]:
    """Run ``sentiment serve`` for ``model_uri`` on 127.0.0.1 and yield its URL and process id;
    the process is stopped on exit. ``options``: ``serve`` settings (``workers=2``).

    The server's output goes to ``log_file``. Raises RuntimeError (with the log's tail) when it
    exits before answering ``/ping``, TimeoutError when it does not answer in time.
    """
    port = free_port()
    command = serve_command(model_uri, tracking_uri, port, **options)
    with log_file.open("wb") as log_handle:
        process = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_ping(url, process, log_file, startup_timeout)
            yield Server(url, process.pid)
        finally:
            stop(process, grace=30)


def wait_for_ping(url: str, process: subprocess.Popen, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the scoring server exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no /ping answer from {url} in {timeout} s (log: {log_file})")


def post_json(url: str, body: bytes | dict[str, Any], timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """POST ``body`` (a dict is JSON-encoded) and return (status, decoded JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": JSON})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def stalled_connections(url: str, count: int, half_headers: int = 0) -> list[socket.socket]:
    """``count`` clients that send a request's headers and then stall, every other one after one
    body byte of 1,000 (each holds a ``max_concurrency`` slot, or gets 503), and ``half_headers``
    more that stall halfway through their headers."""
    address = urlparse(url)
    head = f"POST /invocations HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
    whole = [head + "Content-Length: 1000\r\n\r\n{", head + "Content-Length: 1000\r\n\r\n"]
    starts = [whole[i % 2] for i in range(count)] + [head] * half_headers
    clients = []
    for start in starts:
        client = socket.create_connection((address.hostname, address.port), timeout=30)
        client.sendall(start.encode())
        clients.append(client)
    return clients


def first_answer_after(url: str, payload: dict, bound: float) -> tuple[int, float, int]:
    """(status, seconds, attempts) of the first answer to ``payload`` that is not a 503, asked
    every 0.2 s for at most about ``bound`` seconds (then the last 503)."""
    started, attempts = time.monotonic(), 0
    while True:
        status, _ = post_json(f"{url}/invocations", payload, timeout=bound)
        attempts, waited = attempts + 1, time.monotonic() - started
        if status != 503 or waited > bound:
            return status, waited, attempts
        time.sleep(0.2)


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and every process below it (uvicorn's workers), in KiB."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the name
        except (OSError, ValueError):  # gone meanwhile
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    tree, pending = [pid], [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        tree += children
        pending += children
    total = 0
    for member in tree:
        status = Path(f"/proc/{member}/status").read_text()
        total += int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    return total
