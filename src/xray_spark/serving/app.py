"""The HTTP face of a Predictor: an upload page, `POST /predict`, health and version, OpenAPI docs at /docs.

Why these defaults: the server sees medical images, so it binds to 127.0.0.1; binding anything else needs a
bearer token (checked on /predict), CORS stays off unless origins are named, and the log gets the upload's
sha256, the outcome and the latency — never a file name or a DICOM header value. The upload limit is
enforced while the body streams in (413 as soon as it is passed, before the rest is read); decompression
bombs are the decoder's own `too_large` (its pixel limit, from the header, before decoding).

Inference runs in a pool of `workers` threads; at most `workers + queue` requests are admitted at once, the
next gets 503 with Retry-After, so a burst cannot pile up unbounded memory or latency.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import logging
import platform
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from xray_spark import __version__
from xray_spark.errors import UserError
from xray_spark.serving.predictor import InputRejected, Prediction, Predictor
from xray_spark.serving.schema import PredictAnswer

log = logging.getLogger("xray_spark.serving")

MB = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
LOOPBACK_NAMES = ("localhost", "ip6-localhost")
STATUS = {  # decoder reason -> HTTP status
    "empty_file": 400, "not_an_image": 415, "unsupported_format": 415, "dicom_unsupported": 415,
    "too_large": 413, "truncated": 422, "corrupt_image": 422, "blank_image": 422,
    "dicom_no_pixel_data": 422, "dicom_corrupt": 422, "decode_failed": 422,
}
# the page's script and styles are inline; images come back as data: URLs, previews as blob: URLs
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                           "connect-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PRIVATE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}  # answers about a patient image
LIBRARIES = ("numpy", "pillow", "pydicom", "tensorflow-cpu", "tensorflow", "keras", "openvino", "fastapi",
             "uvicorn", "starlette", "python-multipart")


@dataclass(frozen=True)
class Settings:
    """How the server listens and admits work."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token for /predict; required when `host` is not a loopback address
    workers: int = 2  # inference threads
    queue: int = 32  # admitted requests waiting for a worker; beyond workers + queue: 503
    max_upload_mb: float = 50.0
    cors_origins: tuple[str, ...] = ()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings) -> None:
    """Refuse unsafe or impossible settings with one line (UserError: exit 2) before anything loads."""
    if not is_loopback(settings.host) and not settings.token:
        raise UserError(f"--host {settings.host} is reachable from other machines: set a bearer token with "
                        "--token or XRAY_SPARK_SERVE_TOKEN (or bind 127.0.0.1)")
    if not 0 <= settings.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {settings.port}")
    if settings.workers < 1:
        raise UserError(f"--workers must be 1 or more, got {settings.workers}")
    if settings.queue < 0:
        raise UserError(f"--queue must be 0 or more, got {settings.queue}")
    if not settings.max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be above 0, got {settings.max_upload_mb}")
    if settings.token is not None and len(settings.token) < 16:
        raise UserError("the token must be at least 16 characters")
    for origin in settings.cors_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise UserError(f"--cors-origin {origin!r}: give an origin such as https://viewer.example.org")


class ApiError(Exception):
    """An answer other than a prediction: HTTP status + `{error: code, detail}`."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def create_app(predictor: Predictor, settings: Settings) -> FastAPI:
    """The FastAPI app around one loaded predictor."""
    check_settings(settings)
    # the pool is made on first use and dropped when the lifespan ends, so an app whose lifespan runs again
    # (a test client entered twice, a server restarted in-process) gets a new pool, not a closed one
    pools: list[ThreadPoolExecutor] = []
    admitted = {"n": 0}  # touched on the event loop only: no lock needed
    page = resources.files("xray_spark.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    def pool() -> ThreadPoolExecutor:
        if not pools:
            pools.append(ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="xray-serve"))
        return pools[0]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        while pools:
            pools.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="xray-spark serve", version=__version__, lifespan=lifespan,
                  description="Chest X-ray classification of one image at a time, without Spark. "
                              "Bad input answers 4xx with `{error, detail}`.")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health", summary="Liveness: the model is loaded and the server answers")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "engine": predictor.engine, "in_flight": admitted["n"],
                "capacity": settings.workers + settings.queue, "auth_required": bool(settings.token)}

    @app.get("/version", summary="Package, model, engine and library versions")
    async def version() -> dict[str, Any]:
        return version_info(predictor, settings)

    @app.post("/predict", summary="Classify one image (DICOM, PNG, JPEG, ...)", openapi_extra=_PREDICT_DOC,
              responses={200: {"model": PredictAnswer}})
    async def predict(request: Request, heatmap: bool = False) -> Response:
        started = time.perf_counter()
        outcome, sha = "ok", "-"
        try:
            _authorize(request, settings.token)
            if admitted["n"] >= settings.workers + settings.queue:
                raise ApiError(503, "busy", f"{admitted['n']} requests in progress; retry shortly",
                               {"Retry-After": "1"})
            admitted["n"] += 1
            try:
                data = await read_upload(request, settings.max_upload_bytes)
                accept = request.headers.get("accept", "")
                want_png = "image/png" in accept and "application/json" not in accept
                loop = asyncio.get_running_loop()
                result: Prediction = await loop.run_in_executor(pool(), predictor.predict, data,
                                                                 heatmap or want_png)
            finally:
                admitted["n"] -= 1
            sha = result.sha256
            return _answer(result, predictor, want_png)
        except InputRejected as exc:
            outcome, sha = exc.code, exc.sha256 or "-"
            return _error(STATUS.get(exc.code, 422), exc.code, exc.detail)
        except ApiError as exc:
            outcome = exc.code
            return _error(exc.status, exc.code, exc.detail, exc.headers)
        except Exception as exc:  # the server keeps serving: one line in the log, a 500 for this request
            outcome = f"internal_error:{type(exc).__name__}"
            log.debug("predict failed", exc_info=True)
            return _error(500, "internal_error", f"{type(exc).__name__} while predicting")
        finally:
            log.info("predict sha256=%s outcome=%s latency_ms=%.1f", sha, outcome,
                     (time.perf_counter() - started) * 1000)

    return app


def _answer(result: Prediction, predictor: Predictor, want_png: bool) -> Response:
    if want_png:
        headers = {"X-Label": result.label, "X-Sha256": result.sha256, **PRIVATE,
                   "X-Heatmap-Method": result.heatmap_method or "", "X-Model-Version": result.model_version}
        if result.shift.in_distribution is not None:
            headers["X-In-Distribution"] = str(result.shift.in_distribution).lower()
        return Response(result.heatmap_png or b"", media_type="image/png", headers=headers)
    body = result.to_json()
    if result.heatmap_png is not None:
        body["heatmap_png"] = base64.b64encode(result.heatmap_png).decode("ascii")
        body.update(predictor.describe_heatmap(result.heatmap_method))
    return JSONResponse(body, headers=PRIVATE)


def _authorize(request: Request, token: str | None) -> None:
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "send the server's token as `Authorization: Bearer <token>`",
                       {"WWW-Authenticate": "Bearer"})


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a raw body or of a multipart `file` part, refusing (413) as soon as the body
    passes `limit` (plus multipart framing), without reading the rest."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    cap = limit + (MULTIPART_SLACK if multipart else 0)
    too_large = ApiError(413, "upload_too_large", f"the upload is over the {limit / MB:g} MB limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise too_large
    if not multipart:
        return bytes(body)
    data = await _file_part(request, bytes(body))
    if len(data) > limit:
        raise too_large
    return data


async def _file_part(request: Request, body: bytes) -> bytes:
    """Parse a buffered multipart body with Starlette's parser; the part's file name is never read."""
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", str(exc)) from None
    except StarletteHTTPException as exc:  # how Starlette reports a malformed body in an app (no boundary)
        raise ApiError(400, "bad_multipart", str(exc.detail)) from None
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise ApiError(400, "no_file", "a multipart upload needs its image in a part named `file`")
        return await part.read()
    finally:
        await form.close()


def version_info(predictor: Predictor, settings: Settings) -> dict[str, Any]:
    """Everything a bug report needs about what is serving."""
    bundle, meta = predictor.bundle, predictor.bundle.meta
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "xray_spark": __version__, "python": platform.python_version(), "engine": predictor.engine,
        "model": {"name": meta.model_name, "version": meta.model_version, "uri": meta.model_uri,
                  "task": meta.task, "labels": predictor.labels, "backbone": bundle.backbone,
                  "head": predictor.head.classifier.kind, "score_kind": predictor.head.output,
                  "weights_fingerprint": bundle.weights_fingerprint, "bundle_created": bundle.created},
        "baseline_as_good": meta.baseline_as_good, "baseline_sentence": meta.baseline_sentence,
        "max_upload_mb": settings.max_upload_mb, "libraries": libraries,
    }


_BINARY = {"type": "string", "format": "binary"}
_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": _BINARY}}},
            "application/octet-stream": {"schema": _BINARY},
        },
    },
    "responses": {
        "200": {"description": "`{label, probabilities, scores, score_kind, model_name, model_version, "
                               "sha256, engine, shift_score, in_distribution, shift_reasons}`, plus "
                               "`heatmap_png` (base64), `heatmap_method` and `heatmap_exact` with "
                               "?heatmap=true; the heatmap PNG itself with `Accept: image/png`. "
                               "`in_distribution: false` means the image is unlike the training images "
                               "(`shift_reasons` says how): information, not an error",
                "content": {"image/png": {}}},
        "400": {"description": "empty upload or malformed multipart: `{error, detail}`"},
        "401": {"description": "missing or wrong bearer token"},
        "413": {"description": "over the upload limit, or more pixels than the decoder allows"},
        "415": {"description": "not an image, or a format that is not decoded"},
        "422": {"description": "truncated or corrupt image, DICOM without pixel data"},
        "503": {"description": "all workers busy and the queue full; retry after the Retry-After seconds"},
    },
}


def run_server(predictor: Predictor, settings: Settings) -> None:
    """Serve until interrupted. Uvicorn's access log stays off: /predict logs its own privacy-safe line."""
    app = create_app(predictor, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5)
