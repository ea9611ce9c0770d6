"""A source's listing (Cohen's `metadata.csv`): downloaded, checked against its pin, parsed into a selection.

Why apart from `fetch`: the listing is one small file read into memory, with its own failure modes (a
missing listing is a wrong base URL, exit 2; an outage is exit 75), while `fetch` streams many large ones.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
from collections.abc import Callable
from dataclasses import replace
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from xray_spark.data import cohen
from xray_spark.data.fetched import USER_AGENT
from xray_spark.data.sources import DatasetSource, Selection, file_url
from xray_spark.errors import TransientError, UserError

log = logging.getLogger(__name__)

# sources whose files are named by a listing under their base URL: name -> parser (text -> Selection)
LISTING_PARSERS: dict[str, Callable[..., Selection]] = {"cohen2020": cohen.select_rows}
MAX_LISTING_BYTES = 64 * 1024 * 1024  # Cohen's metadata.csv is under 1 MB


def read_listing(source: DatasetSource, base: str, pins: dict[str, str],
                  timeout: float) -> tuple[Selection, str]:
    """Download the source's listing, check it against its pin (if one was recorded), parse it.

    Returns the selection (sha256 filled from the pins where known) and the listing's sha256. A listing that
    differs from its pin is refused: at a pinned commit it never changes, so the mirror serves other data."""
    url = file_url(base, source.listing)
    data = _read_small(url, timeout)
    digest = hashlib.sha256(data).hexdigest()
    pinned = pins.get(source.listing)
    if pinned and pinned != digest:
        raise UserError(f"{url}: sha256 {digest[:12]}... differs from the {pinned[:12]}... recorded on first "
                        f"download in the target folder's pins; check the mirror (--base-url, "
                        f"{source.env_var}), or fetch into a new folder")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{url}: not UTF-8 text; is this the source's {source.listing}?") from None
    selection = LISTING_PARSERS[source.name](text, where=url)
    rows = [replace(r, sha256=pins.get(r.path, r.sha256)) for r in selection.rows]
    log.info("%s: %s lists %d file(s) to keep, %d left out", source.name, source.listing, len(rows),
             sum(selection.left_out.values()))
    return Selection(rows, selection.left_out), digest


def _read_small(url: str, timeout: float) -> bytes:
    """A small file (a listing) in memory: a missing one is the user's to fix (exit 2), an outage is worth a
    retry later (exit 75)."""
    req = Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urlopen(req, timeout=timeout) as resp:
            data = resp.read(MAX_LISTING_BYTES + 1)
    except HTTPError as e:
        e.close()
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise UserError(f"{url}: HTTP {e.code} {e.reason}; check the base URL") from None
        raise TransientError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as e:
        if isinstance(e, URLError) and isinstance(e.reason, FileNotFoundError):
            raise UserError(f"{url}: not found; check the base URL") from None
        raise TransientError(f"{url}: {_describe(e)}") from None
    if len(data) > MAX_LISTING_BYTES:
        raise UserError(f"{url}: larger than {MAX_LISTING_BYTES} bytes; is this a listing?")
    return data


def _describe(e: BaseException) -> str:
    if isinstance(e, URLError):
        return f"cannot reach server: {e.reason}"
    return f"{type(e).__name__}: {e}"
