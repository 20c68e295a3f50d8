"""`pecrs serve RUN_DIR`: a small HTTP API (FastAPI) around a `Recommender`, plus a chat page at /.

    POST /recommend   {"turns": [{"role": "seeker", "text": "..."}], "k": 10, "exclude"?: [ids], "link_titles"?: false,
                       "exclude_mentioned"?: null}
                      -> {"items": [{"id", "title", "year", "genres", "score", "rank"}, ...], "read_as"}
    POST /respond     {"turns": [...], "decoding"?: "top_k", "k_items"?: 1, "seed"?: 0, "exclude"?: [ids],
                       "link_titles"?: false, "exclude_mentioned"?: null}
                      -> {"response", "raw_response", "items", "recommended", "turn", "read_as"}
    GET  /items/{id}  the catalog entry (404 if unknown)
    GET  /health      {"status": "ok", "items": N, ...}
    GET  /            pecrs/web/index.html, a chat page

A turn is {"role": "seeker" | "recommender", "text": str, "items"?: [ids]}; "items" lists the
catalog ids of the text's [ITEM] placeholders. /respond returns the model's turn as "turn" (raw text
with [ITEM]s and their ids), which a client appends to "turns" so that the model reads its earlier
recommendations as item vectors, as in training. "response" is the same text with titles filled in.
"exclude" lists item ids never to recommend (say, what the user has seen); with the model's
inference.exclude_mentioned (`pecrs serve --exclude-mentioned`) the items the turns mention are excluded too.
"link_titles": true reads catalog titles typed in the texts as [ITEM] mentions first (pecrs.title_linking),
and "exclude_mentioned" overrides the model's setting for one request; the chat page sets both.
"read_as" lists the items the titles typed in the last (seeker) turn were read as ([] without link_titles).

Limits (422 with the offending field when exceeded, like any malformed body or unknown field):
at most 50 turns, 2,000 characters per text, 333 item ids per turn, 1,000 excluded ids, 1 <= k <= 100,
1 <= k_items <= 10, a known decoding name. A body over 1 MiB gets 413, whether it declares its
length or is sent chunked: reading stops at the first chunk past the limit. Input that is
well-formed but unusable (an unknown item id, a [ITEM] count that does not match "items") gets 400.
A body that is not UTF-8, or JSON nested too deeply to read, gets 400 saying so.
Error replies never echo the request: a 422 lists at most 20 errors as {"loc", "msg", "type"}
(no "input"), and every message is cut to 300 characters. The process survives bad input and
internal errors (500 with a message).

Model calls wait their turn on the event loop, one at a time, first come first served: a request
whose client has gone by its turn is dropped unrun (a closed tab or a client's timeout costs no
model time; uvicorn's log says so at level info), and past MAX_WAITING requests waiting a new one
gets 503 with Retry-After. /health, /items and / never wait for the model. On SIGTERM the server
stops taking requests, answers those it has while GRACEFUL_SHUTDOWN_S allow (those still waiting
then are cancelled: 500), then exits; a model call already running is not interrupted.
There is no /docs or /redoc page (FastAPI's load scripts from a CDN); /openapi.json describes the API.
No CORS header unless `create_app(..., cors_origins=[...])` (`pecrs serve --cors-origin`) names the
origins whose pages may call the API from a browser ("*": any), without credentials.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .cors import check_cors_origin
from .data import DataError, Item
from .decoding import ALIASES, PRESETS

log = logging.getLogger(__name__)
# uvicorn configures its own loggers (--log-level) and none of ours; its access log skips a request
# whose client has gone, so a dropped request is told on uvicorn's error log, where the server's
# other messages go.
server_log = logging.getLogger("uvicorn.error")

MAX_TURNS, MAX_TEXT_CHARS, MAX_K, MAX_K_ITEMS = 50, 2000, 100, 10
MAX_BODY_BYTES = 1 << 20
MAX_EXCLUDE = 1000
MAX_ITEMS_PER_TURN = MAX_TEXT_CHARS // 6      # "[ITEM]" is 6 characters
MAX_DECODING_CHARS = 64
MAX_ERRORS, MAX_MESSAGE_CHARS = 20, 300       # what an error reply may hold
MAX_WAITING = 32                              # requests waiting for the model before a 503
RETRY_AFTER_S = 10
CLIENT_GONE = 499                             # nginx's "client closed request": logged, never read
GRACEFUL_SHUTDOWN_S = 15
DECODINGS = sorted(ALIASES) + sorted(PRESETS)
CORS_METHODS = ("GET", "POST")                # what the API answers
CORS_HEADERS = ("Content-Type",)              # a JSON body's; no credentials, so no Authorization
CORS_EXPOSED = ("Retry-After",)               # a 503's, which a page can only read when exposed
WEB_PAGE = Path(__file__).parent / "web" / "index.html"


class _Body(BaseModel):
    """A request body or part of one: no unknown fields, JSON's own types (no "3" for 3, no "yes" for true)."""
    model_config = ConfigDict(extra="forbid", strict=True)


class TurnIn(_Body):
    role: Literal["seeker", "recommender"]
    text: str = Field(max_length=MAX_TEXT_CHARS)
    items: list[str] = Field(default_factory=list, max_length=MAX_ITEMS_PER_TURN)

    @field_validator("text")
    @classmethod
    def _seeker_says_something(cls, text, info):
        # A recommender turn may be empty: /respond returns the model's reply as the next request's
        # turn, and a model can end a reply at once.
        if not text.strip() and info.data.get("role") == "seeker":
            raise ValueError("a seeker turn's text is empty (or only spaces)")
        return text


class RecommendRequest(_Body):
    turns: list[TurnIn] = Field(min_length=1, max_length=MAX_TURNS)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    link_titles: bool = False
    exclude_mentioned: bool | None = None


class RespondRequest(_Body):
    turns: list[TurnIn] = Field(min_length=1, max_length=MAX_TURNS)
    decoding: str | None = Field(None, max_length=MAX_DECODING_CHARS)
    k_items: int = Field(1, ge=1, le=MAX_K_ITEMS)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    link_titles: bool = False
    exclude_mentioned: bool | None = None

    @field_validator("decoding")
    @classmethod
    def _known_decoding(cls, value):
        if value is not None and value not in DECODINGS:
            raise ValueError(f"unknown decoding {value!r}; valid names: {', '.join(DECODINGS)}")
        return value


def clip(text, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` as a string of at most `limit` characters (error replies never echo large input)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 30]}... ({len(text):,} characters)"


class BodyTooLarge(StarletteHTTPException):
    # "Connection: close": the server drops the connection instead of reading (and discarding)
    # the rest of the body to keep it alive.
    def __init__(self):
        super().__init__(status_code=413, detail=f"request body over {MAX_BODY_BYTES} bytes",
                         headers={"connection": "close"})


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`. A declared Content-Length over
    the limit is refused before the app runs; a chunked body is counted as the app reads it, and
    the read that crosses the limit raises `BodyTooLarge`, so the rest is never read."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_too_large(scope, send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:   # normally answered by FastAPI's HTTPException handler already
            if not started:
                await _send_too_large(scope, send)


async def _send_too_large(scope, send) -> None:
    error = BodyTooLarge()
    response = JSONResponse({"detail": error.detail}, status_code=413, headers=error.headers)
    await response(scope, None, send)


def _short_error(error: dict) -> dict:
    """A pydantic error without its "input" (which may be the whole body), strings clipped."""
    loc = [x if isinstance(x, int) else clip(x, 100) for x in error.get("loc", ())]
    msg = error.get("msg", "")
    # Malformed JSON: the parser's reason. (A field's own ValueError is in ctx too, but its msg
    # already says it: appended again, the valid names of `decoding` were clipped away.)
    if error.get("type") == "json_invalid" and (error.get("ctx") or {}).get("error"):
        msg = f"{msg}: {error['ctx']['error']}"
    return {"loc": loc, "msg": clip(msg), "type": clip(error.get("type", ""), 100)}


def _unreadable_body(exc: StarletteHTTPException) -> str | None:
    """What made FastAPI's "There was an error parsing the body" (its 400 for a body that the
    JSON reader raised on), in words, or None for any other error."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 (byte {cause.start}); send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply to read"
    return None


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:   # as the data files and configs: plain JSON keeps the last, silently
            raise json.JSONDecodeError(f"key '{clip(key, 100)}' is written twice in one object", "", 0)
        seen.add(key)
    return dict(pairs)


class _StrictJSONRequest(Request):
    """Request.json() that refuses a key written twice (FastAPI answers its JSONDecodeError 422)."""

    async def json(self):
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_refuse_duplicate_keys)
        return self._json


class _StrictJSONRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))
        return strict_handler


def item_json(item: Item, full: bool = False) -> dict:
    if full:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(item).items()}
    return {"id": item.id, "title": item.title, "year": item.year, "genres": list(item.genres)}


def create_app(recommender, cors_origins: list[str] | None = None) -> FastAPI:
    """The API for one loaded `Recommender` (its lock serialises model calls). `cors_origins`
    ("https://app.example.com", or "*" for any) lets pages from those origins call it from a
    browser; by default a page can only call the origin it came from."""
    if isinstance(cors_origins, str):
        raise TypeError("cors_origins is a list of origins, not a string")
    cors_origins = list(cors_origins or ())   # (a generator would be spent by the checks below)
    for origin in cors_origins:
        try:
            check_cors_origin(origin)
        except ValueError as e:
            raise ValueError(f"cors_origins: {e}") from None
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN.
    app = FastAPI(title="PECRS", description="Conversational recommendation with one LoRA-adapted LM",
                  version="0.1.0", docs_url=None, redoc_url=None)
    app.router.route_class = _StrictJSONRoute   # a body with a key written twice is refused (422)
    app.state.recommender = recommender
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    if cors_origins:
        # Added last, so outside BodyLimit: a 413 carries the header too, and a page can read it.
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=CORS_METHODS,
                           allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED, allow_credentials=False)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body_unread = any(tuple(e.get("loc", ())) == ("body",) for e in errors)
        if body_unread and media_type != "application/json" and not media_type.endswith("+json"):
            # FastAPI reads a body as JSON only when it says so; name the header, not a "dict" error.
            return JSONResponse({"detail": clip(f"send the body as JSON with Content-Type: application/json "
                                                f"(got {media_type or 'no Content-Type'})")}, status_code=415)
        detail = [_short_error(e) for e in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            detail.append({"loc": ["body"], "msg": f"... and {len(errors) - MAX_ERRORS} more errors",
                           "type": "too_many_errors"})
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = (_unreadable_body(exc) if exc.status_code == 400 else None) or exc.detail
        return JSONResponse({"detail": clip(detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def bad_input(request: Request, exc: DataError):
        return JSONResponse({"detail": clip(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("error while serving %s", request.url.path)
        return JSONResponse({"detail": clip(f"internal error: {type(exc).__name__}: {exc}")}, status_code=500)

    # Model calls take turns here, on the event loop, so waiting requests hold no worker thread
    # (/health answers whatever the queue) and a request can be dropped when its client has left.
    model_turn = asyncio.Lock()
    waiting = 0

    async def with_model(request: Request, call):
        """`call()` run in a worker thread when it is this request's turn; 503 when MAX_WAITING
        requests already wait, nothing run when the client is gone by then."""
        nonlocal waiting
        if waiting >= MAX_WAITING:
            raise HTTPException(status_code=503, headers={"retry-after": str(RETRY_AFTER_S)},
                                detail=f"{waiting} requests are waiting for the model; retry in {RETRY_AFTER_S} s")
        waiting += 1
        try:
            async with model_turn:
                if await request.is_disconnected():
                    server_log.info("%s: the client left before its turn; not run (%d)", request.url.path, CLIENT_GONE)
                    return Response(status_code=CLIENT_GONE)
                return await run_in_threadpool(call)
        finally:
            waiting -= 1

    # The handlers below do no blocking work: async, so they never wait behind a model call.
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_PAGE, media_type="text/html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "items": len(recommender), "checkpoint": str(recommender.checkpoint),
                "decoding": recommender.decoding if isinstance(recommender.decoding, str) else "custom",
                "decodings": DECODINGS, "no_repeat_ngram": recommender.no_repeat_ngram,
                "m_inference": recommender.m_inference, "exclude_mentioned": recommender.exclude_mentioned,
                "index": type(recommender.index).__name__, "device": str(recommender.model.device),
                "dtype": recommender.precision.name, "waiting": waiting}

    @app.get("/items/{item_id:path}")  # :path, so that ids holding "/" resolve too
    async def get_item(item_id: str):
        item = recommender.items.get(item_id)
        if item is None:
            raise HTTPException(status_code=404, detail=f"unknown item id '{item_id}'")
        return item_json(item, full=True)

    def read_as(body) -> list[dict]:
        """With link_titles, the items the titles typed in the last turn (a seeker's) were read as,
        so that a client can show what was recognised."""
        last = body.turns[-1]
        if not body.link_titles or last.role != "seeker":
            return []
        _, ids = recommender.link_titles(last.text, last.items)
        for already in last.items:     # the placeholders the client marked itself
            ids.remove(already)
        return [item_json(recommender.items[i]) for i in ids]

    @app.post("/recommend")
    async def recommend(body: RecommendRequest, request: Request):
        def call():
            recs = recommender.recommend([t.model_dump() for t in body.turns], k=body.k, exclude=body.exclude,
                                         link_titles=body.link_titles, exclude_mentioned=body.exclude_mentioned)
            return {"items": [{**item_json(r.item), "score": r.score, "rank": r.rank} for r in recs],
                    "read_as": read_as(body)}
        return await with_model(request, call)

    @app.post("/respond")
    async def respond(body: RespondRequest, request: Request):
        def call():
            r = recommender.respond([t.model_dump() for t in body.turns], decoding=body.decoding,
                                    k_items=body.k_items, seed=body.seed, exclude=body.exclude,
                                    link_titles=body.link_titles, exclude_mentioned=body.exclude_mentioned)
            return {"response": r.text, "raw_response": r.raw_text,
                    "items": [item_json(it) for it in dict.fromkeys(r.items)],   # each item once
                    "recommended": [item_json(it) for it in r.recommended],
                    "turn": {"role": "recommender", "text": r.raw_text, "items": [it.id for it in r.items]},
                    "read_as": read_as(body)}
        return await with_model(request, call)

    return app


def serve(recommender, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          cors_origins: list[str] | None = None) -> None:
    import uvicorn

    # The title index (the chat page links typed titles) and the same-film groups are built now,
    # not inside the first request that needs them, under the model lock (seconds for 10^5 items).
    recommender.link_titles("")
    recommender.twins
    uvicorn.run(create_app(recommender, cors_origins=cors_origins), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
