"""A real HTTP server on 127.0.0.1 for download tests: a folder's files, optional Range, each GET recorded.

Shared by test_fetch.py (ozturk2020) and test_fetch_sources.py (cohen2020); start one with `serve_dir`.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single `bytes=N-[M]` ranges, recording every GET on the server.

    `server.special[path]` (unquoted URL path) answers that path instead: a misbehaving server for one file.
    """

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.server.requests.append((unquote(self.path), rng))
        special = self.server.special.get(unquote(self.path))
        if special is not None:
            return special(self)
        if not rng or not self.server.support_range:
            return super().do_GET()
        path = Path(self.translate_path(self.path))
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if not path.is_file() or not m:
            return super().do_GET()
        data = path.read_bytes()
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        body = data[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


class Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients that hang up early: on purpose
            super().handle_error(request, client_address)


@contextmanager
def serve_dir(directory: Path) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """Serve `directory` on 127.0.0.1 (a free port) for the block: yields (server, base URL ending in `/`).
    `server.requests` lists every GET as (unquoted path, Range header); `server.special[path]` answers that
    path with a handler of its own; `server.support_range = False` makes Range ignored."""
    handler = lambda *a, **kw: RangeHandler(*a, directory=str(directory), **kw)  # noqa: E731
    server = Server(("127.0.0.1", 0), handler)
    server.requests = []
    server.special = {}
    server.support_range = True
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
