"""Helpers for the serving tests: a real uvicorn server in a thread, and a tiny stdlib HTTP client.

The client is http.client on purpose: the tests see exactly the bytes and status codes a browser or curl
would, with no client library retrying or rewriting anything.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yields the base URL; stops it afterwards."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 120) -> Reply:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def multipart(data: bytes, filename: str = "image.png", field: str = "file",
              content_type: str = "application/octet-stream") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file part, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def predict(base: str, data: bytes, *, form: bool = True, query: str = "", filename: str = "image.png",
            headers: dict[str, str] | None = None) -> Reply:
    if form:
        body, hdrs = multipart(data, filename)
    else:
        body, hdrs = data, {"Content-Type": "application/octet-stream"}
    return request(base, "POST", f"/predict{query}", body, {**hdrs, **(headers or {})})


def wait_up(base: str, proc: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if request(base, "GET", "/health", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"serve did not come up: {log_path.read_text()[-2000:]}")


def random_head_bundle(folder: Path, meta: Any = None) -> Path:
    """A serving bundle without training: ResNet50 with seeded random weights and a seeded numpy logistic head
    (covid vs no_findings). For tests of the server itself; parity with Spark is tests/test_serve.py's."""
    from xray_spark.features.weights import resolve_weights
    from xray_spark.models.heads_numpy import Logistic, Scaler, SparkFreeHead
    from xray_spark.models.serving_bundle import write_bundle

    weights = resolve_weights("ResNet50", "none")
    rng = np.random.default_rng(0)
    head = SparkFreeHead(Logistic(rng.normal(size=(1, 2048)) * 0.05, np.array([0.0]), False),
                         ["covid", "no_findings"], 2048,
                         Scaler(rng.normal(size=2048) * 0.1, np.abs(rng.normal(size=2048)) + 0.5))
    return write_bundle(folder, head=head, backbone="ResNet50", weights_file=weights.local_path,
                        weights_fingerprint=weights.fingerprint, meta=meta)
