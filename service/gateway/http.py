"""The HTTP/JSON API and the web page, served by the gateway process beside gRPC (`PRIORLAB_HTTP_PORT`).

Same pipelines, validation and limits as gRPC, with no loopback gRPC hop: a JSON body *is* the gRPC
request in the proto3 JSON mapping (bytes as base64), so it is parsed into the same protobuf message
and passed to the same `colorize_options` / `build_job` the servicers call; a multipart upload is the
same request with the image as a file. Errors are the gRPC status of the one exception table
(`service.gateway.http_status`) in its standard HTTP form, with the same message.

Why Starlette + uvicorn: the gateway is one asyncio process (grpc.aio, redis.asyncio, Triton's aio
client). An ASGI server runs in that same event loop as one more task, so an HTTP request awaits the
very `ColorizePipeline` and `JobBus` objects the gRPC servicers use (one semaphore, one shm pool, one
Redis pool) instead of a second process or a thread with its own loop. Starlette is the small ASGI
toolkit (routing, streaming responses for Server-Sent Events, multipart through python-multipart,
static files) without a validation layer we would not use, since validation is the gRPC path's;
uvicorn is the reference ASGI server and can be given an already bound socket, so a taken port fails
start-up before anything is served. A WSGI framework (Flask) would need threads and a second loop;
aiohttp would work too but brings its own server model instead of the ASGI one.

Security is the gRPC port's (README "Security"): with `PRIORLAB_TLS_CERT`/`_KEY` the port speaks TLS
only (and with `PRIORLAB_TLS_CLIENT_CA` wants a client certificate), and with a token file every route
but the page, /healthz and /openapi.json needs `Authorization: Bearer <token>` (`BearerAuth`: the same
token table, and the token's client id as the Restore quota key and job owner, as over gRPC).

Routes (the OpenAPI document at /openapi.json, `service/gateway/http_openapi.py`, lists them in full):

    GET  /                              the web page (static/index.html, app.js, app.css)
    GET  /healthz                       SERVING / NOT_SERVING per service (503 when not serving)
    GET  /v1/models                     the public models and their defaults
    POST /v1/colorize                   Colorize: image bytes back (or JSON with Accept: application/json)
    POST /v1/suggest                    SuggestColors
    POST /v1/restore                    SubmitRestore: 202 with the job id
    GET  /v1/restore/{job_id}           the job's result (PNG), or 202 with its state while it runs
    GET  /v1/restore/{job_id}/events    WatchRestore as Server-Sent Events
    POST /v1/restore/{job_id}/cancel    CancelRestore
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from contract import DEFAULT_MODEL, HINT_MODEL, MODELS, PUBLIC_MODELS, WORKING_SIZE_DEFAULT
from service.bus.jobs import JobBus, failure_event, is_terminal
from service.bus.timing import BusTiming
from service.errors import (
    Cancelled,
    InvalidArgument,
    NotFound,
    PriorlabError,
    Unauthenticated,
    Unavailable,
    echo,
)
from service.gateway.auth import (
    UNAUTHENTICATED_MESSAGE,
    TokenTable,
    as_client,
    authenticated_client,
    http_ssl_context,
    label_key,
)
from service.gateway.colorize import ColorizePipeline, served_model, served_models
from service.gateway.colorizer import (
    colorize_options,
    colorize_response,
    suggest_options,
    suggest_response,
)
from service.gateway.http_openapi import openapi_document
from service.gateway.http_status import PayloadTooLarge, error_body, error_headers
from service.gateway.restorer import RESTORER_SERVICE, build_job, check_owner, public_event
from service.gateway.settings import Settings
from service.gateway.triton import InferenceBackend
from service.pb.priorlab.v1 import colorize_pb2, restore_pb2

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
COLORIZER_SERVICE = "priorlab.v1.Colorizer"
MAX_WAIT_S = 60.0  # GET /v1/restore/{id}?wait=S
KEEPALIVE_S = 15.0  # an SSE comment line while a job's stream is quiet
# No inline script or style anywhere: the page's code is app.js and app.css, served from here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
EXPOSED_HEADERS = [
    "X-Priorlab-Model", "X-Priorlab-Model-Version", "X-Priorlab-Checkpoint", "X-Priorlab-Trained",
    "X-Priorlab-Temperature", "X-Priorlab-Working-Size", "Server-Timing", "Retry-After",
]  # fmt: skip
# Open with tokens on: the page and its files (public; its API calls are not), health for load
# balancers (as gRPC's health service), and the API's own description. Everything else needs a token.
OPEN_PATHS = ("/", "/healthz", "/openapi.json")
OPEN_PREFIXES = ("/static/",)
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"  # SubmitRestore's idempotency_key, the HTTP way
CORS_HEADERS = ["Authorization", "Content-Type", "X-Client-Id", "Last-Event-ID", IDEMPOTENCY_KEY_HEADER]
_FORMATS = {"png": "IMAGE_FORMAT_PNG", "jpeg": "IMAGE_FORMAT_JPEG", "jpg": "IMAGE_FORMAT_JPEG"}
_FORMATS["webp"] = "IMAGE_FORMAT_WEBP"
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")

R = TypeVar("R")


# --- request bodies -------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) from its Content-Length or as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidArgument(f"Content-Length {echo(declared)} is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body is {int(declared)} bytes, over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _raw_image(kind: str) -> bool:
    """A body that is the image itself: `curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'`."""
    return kind.startswith("image/") or kind == "application/octet-stream"


async def read_request(request: Request, limit: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A JSON object, multipart/form-data fields (strings) and files (bytes), or a raw image body with
    its fields in the query string (the form's fields, as strings: `hint` repeatable); the body capped
    first. The codec reads the format from the bytes, so the declared image type is not trusted."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    if _raw_image(kind):
        query = request.query_params.multi_items()
        if any(key == "image" for key, _ in query):
            raise InvalidArgument("with an image body the image is the body, not a query field")
        return _fields(query), {"image": body}
    if kind == "application/json":
        try:
            data = json.loads(body or b"null")
        except ValueError as e:
            raise InvalidArgument(f"the body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise InvalidArgument("the JSON body must be an object")
        return data, {}
    if kind == "multipart/form-data":
        form = await _multipart(request, body, limit)
        files: dict[str, bytes] = {}
        strings: list[tuple[str, str]] = []
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files[key] = await value.read()
                else:
                    strings.append((key, value))
        finally:
            await form.close()
        return _fields(strings), files
    raise InvalidArgument(
        "Content-Type must be application/json, multipart/form-data, or image/* "
        f"(or application/octet-stream) with the image as the body, got {echo(kind or 'none')}"
    )


def _fields(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Form or query fields as a dict: the last value of each, but every `hint` (repeatable)."""
    fields: dict[str, Any] = {}
    for key, value in items:
        if key == "hint":
            fields.setdefault("hint", []).append(value)
        else:
            fields[key] = value
    return fields


async def _multipart(request: Request, body: bytes, limit: int) -> FormData:
    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, chunks(), max_files=4, max_fields=2048, max_part_size=limit)
    try:
        return await parser.parse()
    except MultiPartException as e:
        raise InvalidArgument(f"multipart body: {e.message}") from None


def _parse(data: dict[str, Any], message: Message) -> None:
    """The proto3 JSON mapping -> `message` (unknown field names and bad values are INVALID_ARGUMENT)."""
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as e:
        message = str(e)  # names the field and the value: bounded like every echo of a client's value
        raise InvalidArgument(message if len(message) <= 400 else f"{message[:400]}…") from None


def _rgb(value: Any, where: str) -> dict[str, int]:
    """A hint colour: "#rrggbb", [r, g, b] or {"r", "g", "b"}."""
    if isinstance(value, str):
        match = _HEX.match(value.strip())
        if not match:
            raise InvalidArgument(f"{where}: colour must be #rrggbb, got {echo(value)}")
        h = match.group(1)
        return {"r": int(h[0:2], 16), "g": int(h[2:4], 16), "b": int(h[4:6], 16)}
    if isinstance(value, list) and len(value) == 3:
        return dict(zip("rgb", value, strict=True))
    if isinstance(value, dict):
        return value
    raise InvalidArgument(f"{where}: colour must be #rrggbb, [r, g, b] or {{r, g, b}}, got {echo(value)}")


def _hint(value: Any, i: int) -> dict[str, Any]:
    """A hint as {"x", "y", "color", "patch_size"} or the command line's "x,y,#rrggbb[,patch]"."""
    where = f"hint {i}"
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (3, 4) or not all(p.lstrip("-").isdigit() for p in parts[:2] + parts[3:]):
            raise InvalidArgument(f"{where} must be x,y,#rrggbb[,patch_size], got {echo(value)}")
        hint: dict[str, Any] = {"x": int(parts[0]), "y": int(parts[1]), "color": _rgb(parts[2], where)}
        if len(parts) == 4:
            hint["patch_size"] = int(parts[3])
        return hint
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object or x,y,#rrggbb[,patch_size], got {echo(value)}")
    hint = dict(value)
    if "color" in hint:
        hint["color"] = _rgb(hint["color"], where)
    return hint


def _hints(data: dict[str, Any]) -> None:
    """`hints` (a list, or in a form a JSON string) and the form's repeated `hint` -> the proto's list."""
    hints = data.pop("hints", [])
    if isinstance(hints, str):
        try:
            hints = json.loads(hints) if hints.strip() else []
        except ValueError as e:
            raise InvalidArgument(f"hints is not valid JSON: {e}") from None
    if not isinstance(hints, list):
        raise InvalidArgument(f"hints must be a list, got {type(hints).__name__}")
    hints = hints + data.pop("hint", [])
    if hints:
        data["hints"] = [_hint(h, i) for i, h in enumerate(hints)]


def _image(data: dict[str, Any], files: dict[str, bytes], key: str = "image") -> bytes:
    """The image as an uploaded file, or a base64 string in the JSON."""
    if key in files:
        data.pop(key, None)
        return files[key]
    encoded = data.pop(key, "")
    if not isinstance(encoded, str):
        raise InvalidArgument(f"{key} must be a base64 string or an uploaded file")
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise InvalidArgument(f"{key} is not valid base64") from None


def colorize_request(data: dict[str, Any], files: dict[str, bytes]) -> colorize_pb2.ColorizeRequest:
    """JSON or form fields -> the gRPC ColorizeRequest (plus "png"/"jpeg"/"webp" and "#rrggbb" hints)."""
    data = dict(data)
    image = _image(data, files)
    _hints(data)
    fmt = data.get("output_format")
    if isinstance(fmt, str) and fmt.lower() in _FORMATS:
        data["output_format"] = _FORMATS[fmt.lower()]
    if data.get("model") == "":
        del data["model"]  # the form's "default" choice
    request = colorize_pb2.ColorizeRequest()
    _parse(data, request)
    request.image = image
    return request


def suggest_request(data: dict[str, Any], files: dict[str, bytes]) -> colorize_pb2.SuggestColorsRequest:
    data = dict(data)
    image = _image(data, files)
    _hints(data)
    request = colorize_pb2.SuggestColorsRequest()
    _parse(data, request)
    request.image = image
    return request


_RESTORE_FORM = {
    "denoise": {"sigma"},
    "inpaint": {"style", "mask_missing_white"},
    "super_resolve": {"factor"},
    "jpeg": set(),
}


def restore_request(data: dict[str, Any], files: dict[str, bytes]) -> restore_pb2.RestoreRequest:
    """A RestoreRequest from proto3 JSON, or from the form's flat fields:

    task (denoise | inpaint | super_resolve | jpeg), sigma, mask (file), style (text | large_hole |
    region | pixels), mask_missing_white, factor, iterations (fixed) or max_iterations (auto stop),
    seed, priority, progress_every, preview.
    """
    data = dict(data)
    image = _image(data, files)
    mask = None
    if "task" in data:  # the flat form
        task = str(data.pop("task"))
        if task not in _RESTORE_FORM:
            raise InvalidArgument(f"task must be one of {list(_RESTORE_FORM)}, got {echo(task)}")
        params = {key: data.pop(key) for key in _RESTORE_FORM[task] if key in data and data[key] != ""}
        if task == "inpaint":
            mask = _image(data, files, "mask") if ("mask" in files or "mask" in data) else b""
            if "style" in params:
                params["style"] = f"INPAINT_STYLE_{str(params['style']).upper()}"
            if "mask_missing_white" in params:
                params["mask_missing_white"] = _flag(params["mask_missing_white"])
        data[task] = params
        iterations = data.pop("iterations", "")
        max_iterations = data.pop("max_iterations", "")
        if iterations not in ("", None):
            data["fixed_iterations"] = iterations
        elif max_iterations not in ("", None):
            data["auto_stop"] = {"max_iterations": max_iterations}
        if "preview" in data:
            data["preview"] = _flag(data["preview"])
        data = {k: v for k, v in data.items() if v != ""}
    elif "inpaint" in data and isinstance(data["inpaint"], dict) and "mask" in files:
        mask = files["mask"]
    request = restore_pb2.RestoreRequest()
    _parse(data, request)
    request.image = image
    if mask is not None:
        request.inpaint.mask = mask
    return request


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
        raise InvalidArgument(f"expected true or false, got {echo(value)}")
    return text in ("1", "true", "on", "yes")


def _job_id(job_id: str) -> str:
    if not job_id or len(job_id) > 64 or not job_id.isalnum():
        raise InvalidArgument(f"job_id must be the id POST /v1/restore returned, got {echo(job_id)}")
    return job_id


def client_id(request: Request) -> str:
    """`X-Client-Id`, else the peer's host the way gRPC names it ("ipv4:127.0.0.1"): one quota for both."""
    given = request.headers.get("x-client-id")
    if given:
        return given
    host = request.client.host if request.client else "unknown"
    return f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"


# --- responses ------------------------------------------------------------------------------------


def to_json(message: Message) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return found


def error_response(error: PriorlabError) -> JSONResponse:
    body = error_body(error)
    return JSONResponse(body, status_code=body["error"]["status"], headers=error_headers(error))  # type: ignore[index]


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _api(
    endpoint: Callable[[HttpApi, Request], Awaitable[Response]],
) -> Callable[[HttpApi, Request], Coroutine[Any, Any, Response]]:
    """PriorlabError -> its status and message; anything else is logged and answered 500 (as gRPC)."""

    @functools.wraps(endpoint)
    async def wrapped(self: HttpApi, request: Request) -> Response:
        try:
            return await endpoint(self, request)
        except PriorlabError as e:
            return error_response(e)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            body = {
                "error": {
                    "code": "INTERNAL",
                    "status": 500,
                    "message": "internal error (logged by the gateway)",
                }
            }
            return JSONResponse(body, status_code=500)

    return wrapped


async def _unless_disconnected(request: Request, work: Awaitable[R]) -> R:
    """Runs `work`, cancelled if the client goes away first (the page aborts a superseded request)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise Cancelled("the client closed the request")
    return task.result()


class HttpApi:
    """The endpoints, over the gateway's own pipeline and job bus."""

    def __init__(
        self,
        pipeline: ColorizePipeline,
        settings: Settings,
        backend: InferenceBackend,
        bus: JobBus | None,
        tokens: TokenTable | None = None,
    ) -> None:
        if settings.auth_tokens_file and tokens is None:  # fail closed: never an open API by omission
            raise ValueError("PRIORLAB_AUTH_TOKENS_FILE is set but the HTTP API was given no token table")
        self.pipeline, self.settings, self.backend, self.bus = pipeline, settings, backend, bus
        self.tokens = tokens
        # As the gRPC Restorer: a job missing within the result TTL is lost, and workers show as labels.
        self._ttl_s = float(settings.restore_result_ttl_s)
        self._label_key = label_key(settings.worker_label_key)

    def _bus(self) -> JobBus:
        if self.bus is None:
            raise Unavailable("this gateway has no Restore service (PRIORLAB_REDIS_URL is not set)")
        return self.bus

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def health(self, request: Request) -> Response:
        services = {COLORIZER_SERVICE: await self._colorizer_ready()}
        if self.bus is not None:
            services[RESTORER_SERVICE] = await self._restorer_ready()
        asked = request.query_params.get("service", "")
        if asked and asked not in services:
            return error_response(
                NotFound(f"service {echo(asked)} is not served here; known: {sorted(services)}")
            )
        serving = services[asked] if asked else services[COLORIZER_SERVICE]
        body = {
            "status": "SERVING" if serving else "NOT_SERVING",
            "services": {name: "SERVING" if ok else "NOT_SERVING" for name, ok in services.items()},
        }
        return JSONResponse(body, status_code=200 if serving else 503)

    async def _colorizer_ready(self) -> bool:
        try:
            return all([await self.backend.ready(spec) for spec in served_models(self.settings)])
        except PriorlabError:
            return False

    async def _restorer_ready(self) -> bool:
        try:
            ttl_s = BusTiming(self.settings.restore_visibility_timeout_s).worker_ttl_s  # as gRPC health
            return await self._bus().live_workers(ttl_s) > 0
        except PriorlabError:
            return False

    @_api
    async def models(self, request: Request) -> Response:
        found = []
        for name in sorted(PUBLIC_MODELS):
            spec = MODELS[name]
            entry: dict[str, Any] = {"name": name, "anneals": spec.anneals, "hints": name == HINT_MODEL}
            try:
                info = await self.backend.model_info(served_model(name, self.settings))
                entry.update(checkpoint=info.checkpoint, trained=info.trained, version=info.version)
                entry["default_temperature"] = info.default_temperature if spec.anneals else None
            except PriorlabError as e:
                entry["error"] = str(e)
            found.append(entry)
        body: dict[str, Any] = {"models": found, "default": DEFAULT_MODEL, "hint_model": HINT_MODEL}
        body["working_size"] = WORKING_SIZE_DEFAULT
        return JSONResponse(body)

    @_api
    async def colorize(self, request: Request) -> Response:
        data, files = await read_request(request, self.settings.max_message_bytes)
        message = colorize_request(data, files)
        options = colorize_options(message)
        work = self.pipeline.colorize(message.image, options, timeout_s=self.settings.triton_timeout_s)
        result = await _unless_disconnected(request, work)
        reply = colorize_response(result)
        if wants_json(request):
            return JSONResponse(to_json(reply))
        t = result.timings
        headers = {
            "X-Priorlab-Model": reply.model,
            "X-Priorlab-Model-Version": reply.model_version,
            "X-Priorlab-Checkpoint": reply.checkpoint,
            "X-Priorlab-Trained": "true" if reply.trained else "false",
            "X-Priorlab-Working-Size": str(reply.working_size),
            "Server-Timing": f"decode;dur={t.decode_ms:.1f}, triton;dur={t.triton_ms:.1f}, "
            f"postprocess;dur={t.postprocess_ms:.1f}, total;dur={t.total_ms:.1f}",
            "Cache-Control": "no-store",
        }
        if reply.HasField("temperature"):
            headers["X-Priorlab-Temperature"] = f"{reply.temperature:.4g}"
        return Response(result.image, media_type=f"image/{result.format.lower()}", headers=headers)

    @_api
    async def suggest(self, request: Request) -> Response:
        data, files = await read_request(request, self.settings.max_message_bytes)
        message = suggest_request(data, files)
        options, k = suggest_options(message)
        work = self.pipeline.suggest_colors(
            message.image, options, x=message.x, y=message.y, k=k, seed=message.seed,
            timeout_s=self.settings.triton_timeout_s,
        )  # fmt: skip
        found, info = await _unless_disconnected(request, work)
        body = to_json(suggest_response(found, info))
        for entry, color in zip(body["colors"], found, strict=True):
            entry["hex"] = "#{:02x}{:02x}{:02x}".format(*color.rgb)
        return JSONResponse(body)

    @_api
    async def submit(self, request: Request) -> Response:
        bus = self._bus()
        data, files = await read_request(request, self.settings.max_message_bytes)
        message = restore_request(data, files)
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if key is not None:
            if message.idempotency_key and message.idempotency_key != key:
                raise InvalidArgument(
                    f"the {IDEMPOTENCY_KEY_HEADER} header ({echo(key)}) and the body's idempotency_key "
                    f"({echo(message.idempotency_key)}) differ: send one of them"
                )
            message.idempotency_key = key
        # With auth on, the token's client; never the self-asserted header (as the gRPC Restorer).
        client = authenticated_client() or client_id(request)
        job = await asyncio.to_thread(  # decodes the image and checks the key: off the loop
            build_job, message, self.settings, client=client, now=time.time(), time_remaining_s=None
        )
        job_id, queued = await bus.submit_once(
            job,
            max_queue=self.settings.restore_max_queue,
            max_per_client=self.settings.restore_max_jobs_per_client,
            ttl_s=self.settings.restore_result_ttl_s,
            idempotency_key=message.idempotency_key,
        )
        base = f"/v1/restore/{job_id}"
        headers = {"Location": base}
        if queued is None:  # a retry: the first submission's job, nothing queued again
            log.info("job %s: submitted again over HTTP by %s (same idempotency key)", job_id, client)
            headers["Idempotent-Replayed"] = "true"
        else:
            log.info("job %s queued over HTTP for %s at position %d", job_id, client, queued.position)
        body = to_json(restore_pb2.SubmitRestoreResponse(job_id=job_id, queued=queued))
        body["links"] = {"job": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}
        return JSONResponse(body, status_code=202, headers=headers)

    @_api
    async def cancel(self, request: Request) -> Response:
        job_id = _job_id(request.path_params["job_id"])
        await check_owner(self._bus(), job_id)
        ended = Cancelled(f"job {job_id} was cancelled by POST /v1/restore/{job_id}/cancel")
        cancelled = await self._bus().cancel(job_id, ended, ttl_s=self._ttl_s)
        return JSONResponse(to_json(restore_pb2.CancelRestoreResponse(cancelled=cancelled)))

    @_api
    async def job(self, request: Request) -> Response:
        """The result once the job has one (waiting up to `?wait=S`), else 202 and the latest event."""
        job_id = _job_id(request.path_params["job_id"])
        await check_owner(self._bus(), job_id)
        try:
            wait_s = min(max(float(request.query_params.get("wait", "0")), 0.0), MAX_WAIT_S)
        except ValueError:
            raise InvalidArgument(
                f"wait must be a number of seconds, got {echo(request.query_params['wait'])}"
            ) from None
        latest: restore_pb2.RestoreEvent | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait_s, 0.3)):
                async for event in self._bus().events(
                    job_id, block_s=min(1.0, max(wait_s, 0.1)), ttl_s=self._ttl_s
                ):
                    latest = public_event(event, self._label_key)  # a failure raises its status here
                    if latest.HasField("result"):
                        break
        if latest is not None and latest.HasField("result"):
            if wants_json(request):
                return JSONResponse(to_json(latest.result))
            result = latest.result
            headers = {"X-Priorlab-Iterations": str(result.iterations_run), "Cache-Control": "no-store"}
            return Response(result.image, media_type="image/png", headers=headers)
        state = "queued" if latest is None or latest.HasField("queued") else "running"
        body: dict[str, Any] = {"job_id": job_id, "state": state}
        if latest is not None:
            body["event"] = to_json(latest)
        return JSONResponse(body, status_code=202, headers={"Retry-After": "1"})

    @_api
    async def events(self, request: Request) -> Response:
        """WatchRestore as Server-Sent Events: `queued`, `started`, `progress`…, then `result` or `failure`.

        Each event's `id` is its index, so a reconnecting EventSource (Last-Event-ID) gets only what it
        missed. The first event is read before the response starts, so an unknown job is a plain 404.
        """
        job_id = _job_id(request.path_params["job_id"])
        await check_owner(self._bus(), job_id)
        seen = request.headers.get("last-event-id", "0")
        skip = int(seen) if seen.isdigit() else 0
        events = self._bus().events(job_id, ttl_s=self._ttl_s).__aiter__()
        first = await anext(events)
        return StreamingResponse(
            _sse_stream(first, events, skip, self._label_key),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/colorize", self.colorize, methods=["POST"]),
            Route("/v1/suggest", self.suggest, methods=["POST"]),
            Route("/v1/restore", self.submit, methods=["POST"]),
            Route("/v1/restore/{job_id}", self.job, methods=["GET"]),
            Route("/v1/restore/{job_id}/events", self.events, methods=["GET"]),
            Route("/v1/restore/{job_id}/cancel", self.cancel, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        # Outermost first: every answer (a 401 too) gets the security headers, and CORS answers a
        # preflight (which carries no credentials) before the token check.
        middleware: list[Middleware] = [Middleware(SecurityHeaders)]
        origins = [o.strip() for o in self.settings.http_cors_origins.split(",") if o.strip()]
        if origins:  # no CORS unless configured: the page itself is same-origin
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=origins,
                    allow_methods=["GET", "POST"],
                    allow_headers=CORS_HEADERS,
                    expose_headers=EXPOSED_HEADERS,
                )
            )
        if self.tokens is not None:
            middleware.append(Middleware(BearerAuth, tokens=self.tokens))
        return Starlette(routes=routes, middleware=middleware)


def _sse(index: int, event: restore_pb2.JobEvent, key: bytes) -> bytes:
    """One event as WatchRestore gives it (through `public_event`), or a failure's status and message."""
    try:
        public = public_event(event, key)
    except PriorlabError as e:
        name, data = "failure", error_body(e)["error"]
    else:
        name, data = public.WhichOneof("event") or "unknown", to_json(public)
    return f"id: {index}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _sse_stream(
    first: restore_pb2.JobEvent, rest: AsyncIterator[restore_pb2.JobEvent], skip: int, key: bytes
) -> AsyncIterator[bytes]:
    """The events from the `skip`+1-th on; a comment line every KEEPALIVE_S while none comes (a job
    can wait in the queue or between progress events for minutes; proxies drop a silent stream)."""
    yield b"retry: 2000\n\n"
    index, event = 1, first
    pending: asyncio.Future[restore_pb2.JobEvent] | None = None
    try:
        while True:
            if index > skip:
                yield _sse(index, event, key)
            if is_terminal(event):
                return
            pending = asyncio.ensure_future(anext(rest))
            while not (await asyncio.wait({pending}, timeout=KEEPALIVE_S))[0]:
                yield b": keep-alive\n\n"
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            except PriorlabError as e:  # Redis went away mid-stream: say so, as WatchRestore would
                yield _sse(index + 1, failure_event(e), key)
                return
            finally:
                pending = None
            index += 1
    finally:
        if pending is not None:  # the client left while we waited for the next event
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]


class BearerAuth:
    """The gRPC `AuthInterceptor`'s check, over HTTP: anything but `OPEN_PATHS` needs
    `Authorization: Bearer <token>` with a token of the same table (401 otherwise, with the gRPC
    refusal's message), and runs with `authenticated_client()` set to the token's client id: the
    Restore quota key and job owner, exactly as for a gRPC call."""

    def __init__(self, app: ASGIApp, tokens: TokenTable) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = self.tokens.client_of_header(Headers(scope=scope).get("authorization"))
        if client is None:
            await error_response(Unauthenticated(UNAUTHENTICATED_MESSAGE))(scope, receive, send)
            return
        with as_client(client):
            await self.app(scope, receive, send)


class SecurityHeaders:
    """Content-Security-Policy (no inline script or style), nosniff and no referrer on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


# --- the server -----------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield  # the gateway's own loop owns SIGINT/SIGTERM; it stops this server itself


class HttpServer:
    """uvicorn on a socket bound up front (a taken port fails start-up before anything serves)."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self.scheme = "http"  # "https" once started with TLS

    @classmethod
    def bind(cls, host: str, port: int) -> HttpServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise OSError(f"could not serve HTTP on {host}:{port}: {e}") from e
        return cls(sock)

    async def start(self, app: ASGIApp, *, grace_s: float = 2.0, tls: ssl.SSLContext | None = None) -> None:
        """Serve `app`; with `tls`, over TLS only (`auth.http_ssl_context`, the gRPC port's files)."""
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", http="h11", ws="none",
            server_header=False,  # no "server: uvicorn" on every response
            timeout_graceful_shutdown=int(max(1, grace_s)),
            ssl_context_factory=None if tls is None else (lambda config, default: tls),
        )  # fmt: skip
        self.scheme = "http" if tls is None else "https"
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self.socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            self.socket.close()
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.socket.close()


async def serve_http(
    server: HttpServer,
    pipeline: ColorizePipeline,
    settings: Settings,
    backend: InferenceBackend,
    bus: JobBus | None,
    tokens: TokenTable | None = None,
) -> HttpServer:
    """Serve the API and the page on `server`'s socket, in this event loop, with the gRPC port's
    security: its TLS (and client CA), and its token table (`tokens`, None = auth off)."""
    app = HttpApi(pipeline, settings, backend, bus, tokens).app()
    tls = None
    if settings.tls_cert:
        tls = http_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    elif tokens is not None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("bearer tokens over plaintext HTTP on %s: set PRIORLAB_TLS_CERT/_KEY", settings.host)
    await server.start(app, tls=tls)
    log.info("HTTP API and web page on %s://%s:%d/", server.scheme, settings.host, server.port)
    return server
