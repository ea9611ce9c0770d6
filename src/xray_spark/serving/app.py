"""The HTTP face of a Predictor: an upload page, `POST /predict`, health and version, OpenAPI docs at /docs.

Why these defaults: the server sees medical images, so it binds to 127.0.0.1; binding anything else needs a
bearer token (checked on /predict), CORS stays off unless origins are named, and the log gets the upload's
sha256, the outcome and the latency — never a file name or a DICOM header value. The upload limit is
enforced while the body streams in (413 as soon as it is passed, before the rest is read); decompression
bombs are the decoder's own `too_large` (its pixel limit, from the header, before decoding).

Inference runs in a pool of `workers` threads; at most `workers + queue` requests are admitted at once, the
next gets 503 with Retry-After, so a burst cannot pile up unbounded memory or latency.

Every answer is one /openapi.json documents: the bodies, each error code and its status come from
serving/schema.py (tests/test_serve_contract.py runs a client generated from that document against the app).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import logging
import platform
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from xray_spark import __version__
from xray_spark.errors import UserError
from xray_spark.serving.predictor import InputRejected, Prediction, Predictor
from xray_spark.serving.schema import (
    ERRORS,
    HEATMAP_DOC,
    PREDICT_BODY,
    PREDICT_ERRORS,
    PREDICT_OK,
    Health,
    VersionInfo,
    error_responses,
)

log = logging.getLogger("xray_spark.serving")

MB = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
LOOPBACK_NAMES = ("localhost", "ip6-localhost")
T = TypeVar("T")
# the page's script and styles are inline; images come back as data: URLs, previews as blob: URLs
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                           "connect-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PRIVATE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}  # answers about a patient image
LIBRARIES = ("numpy", "pillow", "pydicom", "tensorflow-cpu", "tensorflow", "keras", "openvino", "nncf",
             "fastapi", "uvicorn", "starlette", "python-multipart")


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
    """An answer other than a prediction: `{error: code, detail}`, its status the code's in schema.ERRORS."""

    def __init__(self, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail, self.headers = ERRORS[code].status, code, detail, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "detail": self.detail}, status_code=self.status,
                            headers=self.headers)


class Admission:
    """At most `workers + queue` requests inside /predict at once (the next gets 503 `busy`); inference runs
    on a pool of `workers` threads.

    The pool is made on first use and closed when the app's lifespan ends, so an app whose lifespan runs
    again (a test client entered twice, a server restarted in-process) gets a new pool instead of a closed
    one. `in_flight` is touched on the event loop only: no lock needed.
    """

    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.capacity, self.in_flight = workers, workers + queue, 0
        self._pool: ThreadPoolExecutor | None = None

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.in_flight >= self.capacity:
            raise ApiError("busy", f"{self.in_flight} requests in progress; retry shortly",
                           {"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="xray-serve")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        yield
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def create_app(predictor: Predictor, settings: Settings) -> FastAPI:
    """The FastAPI app around one loaded predictor: its routes, error handlers and limits, each built by a
    function of its own below."""
    check_settings(settings)
    admission = Admission(settings.workers, settings.queue)
    app = FastAPI(title="xray-spark serve", version=__version__, lifespan=admission.lifespan,
                  responses=error_responses(("internal_error",)),
                  description="Chest X-ray classification of one image at a time, without Spark. "
                              "Every answer that is not a result is `{error, detail}`: `error` a reason code "
                              "listed under its status, `detail` a sentence.")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    _add_error_handlers(app)
    _add_info_routes(app, predictor, settings, admission)
    _add_predict_route(app, predictor, settings, admission)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answer is `{error, detail}`, FastAPI's and Starlette's own included."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405: no route
        return JSONResponse({"error": "http_error", "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return ApiError("invalid_request", f"{where}: {first.get('msg', 'invalid')}").response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:  # Starlette still logs the traceback
        return ApiError("internal_error", f"{type(exc).__name__} while answering").response()


def _add_info_routes(app: FastAPI, predictor: Predictor, settings: Settings, admission: Admission) -> None:
    """The upload page, /health and /version."""
    page = resources.files("xray_spark.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, summary="The upload page (HTML, for a browser)")
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health", response_model=Health, summary="Liveness: the model is loaded and the server answers")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "engine": predictor.engine, "in_flight": admission.in_flight,
                "capacity": admission.capacity, "auth_required": bool(settings.token)}

    @app.get("/version", response_model=VersionInfo, summary="Package, model, engine and library versions")
    async def version() -> dict[str, Any]:
        return version_info(predictor, settings)


def _add_predict_route(app: FastAPI, predictor: Predictor, settings: Settings, admission: Admission) -> None:
    """`POST /predict`: authorize, admit, read the upload within its limit, predict on the pool, answer; one
    privacy-safe log line per request (the upload's sha256, the outcome, the latency)."""
    codes = PREDICT_ERRORS + (("unauthorized",) if settings.token else ())
    # documents the bearer scheme; the handler checks the token (so its 401 is logged like any outcome)
    scheme = HTTPBearer(auto_error=False, description="the server's --token")
    bearer = [Security(scheme)] if settings.token else []

    @app.post("/predict", summary="Classify one image (DICOM, PNG, JPEG, ...)", openapi_extra=PREDICT_BODY,
              responses={200: PREDICT_OK, **error_responses(codes)}, dependencies=bearer)
    async def predict(request: Request, heatmap: bool = Query(False, description=HEATMAP_DOC)) -> Response:
        started = time.perf_counter()
        outcome, sha = "ok", "-"
        try:
            _authorize(request, settings.token)
            with admission.slot():
                data = await read_upload(request, settings.max_upload_bytes)
                want_png = _wants_png(request.headers.get("accept", ""))
                result: Prediction = await admission.run(predictor.predict, data, heatmap or want_png)
            sha = result.sha256
            return _answer(result, predictor, want_png)
        except InputRejected as exc:
            outcome, sha = exc.code, exc.sha256 or "-"
            code = exc.code if exc.code in ERRORS else "decode_failed"
            return ApiError(code, exc.detail).response()
        except ApiError as exc:
            outcome = exc.code
            return exc.response()
        except Exception as exc:  # the server keeps serving: one line in the log, a 500 for this request
            outcome = f"internal_error:{type(exc).__name__}"
            log.debug("predict failed", exc_info=True)
            return ApiError("internal_error", f"{type(exc).__name__} while predicting").response()
        finally:
            log.info("predict sha256=%s outcome=%s latency_ms=%.1f", sha, outcome,
                     (time.perf_counter() - started) * 1000)


def _wants_png(accept: str) -> bool:
    """`Accept: image/png` without application/json: the heatmap PNG itself is the answer."""
    return "image/png" in accept and "application/json" not in accept


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
        raise ApiError("unauthorized", "send the server's token as `Authorization: Bearer <token>`",
                       {"WWW-Authenticate": "Bearer"})


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a raw body or of a multipart `file` part, refusing (413) as soon as the body
    passes `limit` (plus multipart framing), without reading the rest."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    cap = limit + (MULTIPART_SLACK if multipart else 0)
    too_large = ApiError("upload_too_large", f"the upload is over the {limit / MB:g} MB limit")
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
    """Parse a buffered multipart body with Starlette's parser; the part's file name is never read. Starlette
    reports a malformed body as MultiPartException, or as HTTPException(400) inside an app."""
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except MultiPartException as exc:
        raise ApiError("bad_multipart", str(exc)) from None
    except StarletteHTTPException as exc:
        raise ApiError("bad_multipart", str(exc.detail)) from None
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise ApiError("no_file", "a multipart upload needs its image in a part named `file`")
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
        "precision": predictor.precision, "int8_gate": meta.int8_gate,
        "model": {"name": meta.model_name, "version": meta.model_version, "uri": meta.model_uri,
                  "task": meta.task, "labels": predictor.labels, "backbone": bundle.backbone,
                  "head": predictor.head.classifier.kind, "score_kind": predictor.head.output,
                  "weights_fingerprint": bundle.weights_fingerprint, "bundle_created": bundle.created},
        "baseline_as_good": meta.baseline_as_good, "baseline_sentence": meta.baseline_sentence,
        "max_upload_mb": settings.max_upload_mb, "libraries": libraries,
    }


def run_server(predictor: Predictor, settings: Settings) -> None:
    """Serve until interrupted. Uvicorn's access log stays off: /predict logs its own privacy-safe line."""
    app = create_app(predictor, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5)
