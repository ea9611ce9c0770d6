"""`xray-spark serve` does what its /openapi.json says: schemathesis, a property-based client generated from
the published document, runs against the app and finds nothing.

In-process (schemathesis' ASGI transport: no server process, no JVM), with a real model that needs no
training (ResNet50 with seeded random weights, a numpy head: serve_utils.random_head_bundle), two apps: one
on loopback without a token, one with a token (then 401 and the bearer scheme are part of the contract).

- `test_generated_requests_get_documented_answers`: per operation, schemathesis' phases (coverage: every
  documented content type, boundary and invalid values such as `heatmap=null` or a missing body; fuzzing:
  MAX_EXAMPLES generated requests, seeded and derandomized so CI sees the same requests each run) with every
  built-in check (status, content type, headers and body against the schema, invalid input refused, auth not
  ignored, no 5xx). Its one setting: a schema-valid body may still be refused for what it holds (the schema
  cannot say "a decodable X-ray"), with the statuses documented for that (see CONFIG).
- `test_every_documented_answer_is_given_as_documented`: random bytes are never an X-ray, so each answer
  the server can give — a prediction (JSON, with heatmap, the heatmap PNG), every reason code, 401, 413 while
  streaming, 503 busy, 500 — is produced on purpose and put through the same checks; every documented code
  must be answered.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import get_client

from ingest_fixtures import _dicom, _png_bytes, _png_claiming, bad_files
from serve_utils import random_head_bundle
from xray_spark.models.serving_bundle import BundleMeta, load_bundle
from xray_spark.serving.app import Settings, create_app
from xray_spark.serving.predictor import InputRejected, Prediction, Predictor
from xray_spark.serving.schema import ERRORS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # the corrupt DICOM, on purpose

TOKEN = "contract-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS = {"open": Settings(max_upload_mb=1), "token": Settings(max_upload_mb=1, token=TOKEN)}
MAX_EXAMPLES = 150  # fuzzing examples per operation and app
# a schema-valid request (any bytes are a valid `file`) may be refused for its content: empty, not an image,
# too many pixels, undecodable — with the statuses documented for those codes
REFUSED_CONTENT = sorted({str(ERRORS[c].status) for c in ("empty_file", "not_an_image", "too_large",
                                                            "blank_image", "upload_too_large")})
load_all_checks()  # schemathesis.checks.not_a_server_error, used below
CONFIG = SchemathesisConfig.from_dict({
    "seed": 20261207,  # schemathesis' own choices; hypothesis' are derandomized below
    "generation": {"database": "none"},
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", *REFUSED_CONTENT]}},
})


class _NoModel:
    """Enough of a Predictor to build an app for its OpenAPI document (which never depends on the model)."""

    engine = "none"


# built at import: schemathesis.pytest.parametrize needs the schemas when pytest collects (its fixture loader,
# from_fixture, does not run under pytest 9.2); the served apps get the same document (checked below)
DOC_APPS = {name: create_app(_NoModel(), s) for name, s in SETTINGS.items()}  # type: ignore[arg-type]
SCHEMAS = {name: schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
           for name, app in DOC_APPS.items()}


@pytest.fixture(scope="module")
def apps(weights_cache, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The apps, around one real model (loaded once; each app has its own pool and admission count)."""
    folder = random_head_bundle(tmp_path_factory.mktemp("contract") / "bundle",
                                BundleMeta(task="binary", model_name="xray-spark-binary", model_version="3"))
    predictor = Predictor(load_bundle(folder))
    return {name: create_app(predictor, s) for name, s in SETTINGS.items()}


def test_the_served_document_is_the_one_tested(apps: dict[str, Any]) -> None:
    for name, app in apps.items():
        with get_client(app) as client:
            served = client.get("/openapi.json").json()
        assert served == SCHEMAS[name].raw_schema, name
        assert "HTTPValidationError" not in served["components"]["schemas"]  # FastAPI's, never answered
        secured = "security" in served["paths"]["/predict"]["post"]
        assert secured == ("401" in served["paths"]["/predict"]["post"]["responses"]) == (name == "token")


SENT: Counter[str] = Counter()  # generated requests per app and operation, for the evidence line below


@schemathesis.pytest.parametrize(**SCHEMAS)
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_generated_requests_get_documented_answers(case: schemathesis.Case, apps: dict[str, Any]) -> None:
    name = next(n for n, app in DOC_APPS.items() if app is case.operation.app)
    SENT[f"{name} {case.operation.label}"] += 1
    case.call_and_validate(app=apps[name], headers=AUTH if SETTINGS[name].token else None)


# -------------------------------------------------------------------------------- each answer on purpose


@dataclass
class _StandIn:
    """A Predictor stand-in for the answers no upload can cause: busy (predict waits for `gate`), a failure
    inside the model (500), and a decoder error without a reason code of its own."""

    fail_with: Exception | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    engine: str = "stand-in"

    def predict(self, data: bytes, heatmap: bool = False) -> Prediction:
        if self.fail_with is not None:
            raise self.fail_with
        self.gate.wait(30)
        return Prediction("covid", {"covid": 1.0}, {"covid": 1.0}, "probability", "0" * 64, self.engine, "m",
                          "1")


@dataclass
class _Ask:
    """One request and the answer it must get: `code` for an error, None for a prediction."""

    body: bytes
    status: int
    code: str | None
    form: bool = True
    part: str = "file"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _asks() -> dict[str, _Ask]:
    image = _png_bytes((np.indices((300, 300)).sum(axis=0) % 251).astype(np.uint8))
    broken = bytearray(image)
    data = broken.index(b"IDAT") + 8
    broken[data:data + 30] = b"\xff" * 30
    bad = bad_files()
    return {
        "prediction": _Ask(image, 200, None),
        "prediction_raw": _Ask(image, 200, None, form=False),
        "prediction_with_heatmap": _Ask(image, 200, None, query={"heatmap": "true"}),
        "heatmap_png": _Ask(image, 200, None, headers={"Accept": "image/png"}),
        "empty_file": _Ask(b"", 400, "empty_file"),
        "empty_raw": _Ask(b"", 400, "empty_file", form=False),
        "not_an_image": _Ask(bad["bad_text.png"], 415, "not_an_image"),
        "unsupported_format": _Ask(bad["bad_document.pdf"], 415, "unsupported_format", form=False),
        "dicom_unsupported": _Ask(_dicom_with_syntax("1.2.3.4.5.6"), 415, "dicom_unsupported"),
        "truncated": _Ask(bad["bad_truncated.png"], 422, "truncated"),
        "corrupt_image": _Ask(bytes(broken), 422, "corrupt_image"),
        "blank_image": _Ask(bad["bad_blank.png"], 422, "blank_image"),
        "dicom_no_pixel_data": _Ask(_dicom(with_pixels=False), 422, "dicom_no_pixel_data"),
        "dicom_corrupt": _Ask(bad["bad_corrupt.dcm"], 422, "dicom_corrupt"),
        "too_large": _Ask(_png_claiming(60000, 60000), 413, "too_large", form=False),
        "upload_too_large": _Ask(os.urandom(1_200_000), 413, "upload_too_large"),
        "upload_too_large_raw": _Ask(os.urandom(1_200_000), 413, "upload_too_large", form=False),
        "invalid_request": _Ask(image, 422, "invalid_request", query={"heatmap": "maybe"}),
        "no_file": _Ask(image, 400, "no_file", part="image"),
        "bad_multipart": _Ask(image, 400, "bad_multipart", form=False,
                              headers={"Content-Type": "multipart/form-data"}),  # no boundary
    }


def _dicom_with_syntax(uid: str) -> bytes:
    """A DICOM whose pixel data is encapsulated in a transfer syntax no decoder knows."""
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(uid)
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(100)])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _send(app: Any, name: str, ask: _Ask) -> tuple[int, str | None]:
    """Send `ask` as a schemathesis case of the app's document, run every check on the answer, and return
    (status, error code)."""
    operation = SCHEMAS[name]["/predict"]["POST"]
    body: Any = {ask.part: ask.body} if ask.form else ask.body
    media = "multipart/form-data" if ask.form else "application/octet-stream"
    case = operation.Case(body=body, media_type=media, query=ask.query)
    response = case.call(app=app, headers=ask.headers)
    # a 503 or 500 made on purpose is checked against the document like any answer, not refused as a 5xx
    wanted_5xx = [schemathesis.checks.not_a_server_error] if ask.status >= 500 else []
    case.validate_response(response, headers=ask.headers, excluded_checks=wanted_5xx)
    png = ask.code is None and "Accept" in ask.headers
    assert response.headers["content-type"][0] == ("image/png" if png else "application/json")
    return response.status_code, response.json()["error"] if ask.code else None


def test_every_documented_answer_is_given_as_documented(apps: dict[str, Any], evidence) -> None:
    answered: set[str] = set()
    t0 = time.perf_counter()
    for label, ask in _asks().items():
        status, code = _send(apps["open"], "open", ask)
        assert (status, code) == (ask.status, ask.code), label
        answered.add(code or "ok")
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        assert _send(apps["token"], "token", _Ask(b"x", 401, "unauthorized", headers=headers)) == \
            (401, "unauthorized")
    answered.add("unauthorized")
    answered |= _stand_in_answers()
    assert answered == {"ok", *ERRORS}, sorted({"ok", *ERRORS} ^ answered)
    evidence(f"serve contract: every documented answer ({len(answered)} codes) validated against "
             f"/openapi.json in {time.perf_counter() - t0:.1f} s; schemathesis sent {sum(SENT.values())} "
             f"generated requests before ({', '.join(f'{k}: {n}' for k, n in sorted(SENT.items()))})")


def _stand_in_answers() -> set[str]:
    """503 busy (with Retry-After), 500 and decode_failed, from apps around a stand-in predictor."""
    gated = _StandIn()
    busy_app = create_app(gated, Settings(workers=1, queue=0))  # type: ignore[arg-type]
    waiting = threading.Thread(target=_send, args=(busy_app, "open", _Ask(b"x", 200, None)))
    waiting.start()
    deadline = time.time() + 30
    with get_client(busy_app) as client:
        while client.get("/health").json()["in_flight"] < 1 and time.time() < deadline:
            time.sleep(0.02)
    try:
        assert _send(busy_app, "open", _Ask(b"x", 503, "busy")) == (503, "busy")
    finally:
        gated.gate.set()
        waiting.join(30)
    answers = {"busy"}
    for failure, code in ((RuntimeError("the model broke"), "internal_error"),
                          (InputRejected.from_row_error("decode_failed: ValueError: odd"), "decode_failed")):
        app = create_app(_StandIn(fail_with=failure), Settings())  # type: ignore[arg-type]
        status, answered = _send(app, "open", _Ask(b"x", ERRORS[code].status, code))
        assert (status, answered) == (ERRORS[code].status, code)
        answers.add(code)
    return answers


def test_an_app_serves_again_after_its_lifespan_ends(apps: dict[str, Any]) -> None:
    """Schemathesis ends an app's lifespan after each test (as a server restarted in-process would): the
    inference pool is made again, not left closed (found by this module: 500s on the next test's requests)."""
    image = _png_bytes((np.indices((64, 64)).sum(axis=0) % 251).astype(np.uint8))
    for _ in range(2):
        with get_client(apps["open"]) as client:
            reply = client.post("/predict", files={"file": ("x.png", image)})
            assert reply.status_code == 200, reply.text


def test_the_document_lists_every_code_under_its_status(apps: dict[str, Any]) -> None:
    with get_client(apps["token"]) as client:
        doc = client.get("/openapi.json").json()
    responses = doc["paths"]["/predict"]["post"]["responses"]
    schemas = doc["components"]["schemas"]
    for code, (status, meaning) in ERRORS.items():
        answer = responses[str(status)]
        body = schemas[answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]]
        error = body["properties"]["error"]
        assert code in error.get("enum", [error.get("const")]), code  # a status with one code: `const`
        assert f"`{code}`: {meaning}" in answer["description"], code
        assert set(body["required"]) == {"error", "detail"}, code  # one error body, whatever the status
    assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert {"application/json", "image/png"} == set(responses["200"]["content"])
    for path in ("/", "/health", "/version"):
        assert set(doc["paths"][path]["get"]["responses"]) == {"200", "500"}, path
