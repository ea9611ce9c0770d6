"""Bytes -> one normalised 8-bit luminance array, or a stable reason why not (pure functions, no Spark).

Pillow formats here, DICOM in dicom.py; steps 3-4 below and the error/info types live in pixels.py.

Why one path for every source: in the reference data, format, colour mode and bit depth alone separate
COVID from non-COVID images (see shared/data/README.md). Every decoder here ends in the same steps, so a
model sees pixels, not file-format trivia:

1. EXIF orientation applied first (``ImageOps.exif_transpose``); width/height reported *after* it.
2. Alpha removed by compositing onto black: transparent pixels carry no signal, black is "no signal" in a
   MONOCHROME2 radiograph, and it does not invent a bright frame that the min-max stretch would turn into
   a source-specific cue. Fully opaque alpha is dropped without arithmetic (RGBA-opaque == RGB == L).
   ``P`` goes through its palette (``RGBA`` when it declares transparency).
3. One luminance channel: ITU-R 601-2 weights (0.299, 0.587, 0.114) in float32. Images whose colour
   channels are identical (grey stored as RGB) skip the weights, so they hash like the grey original.
4. 8 bits the same way for everything: a linear min-max stretch of the luminance to [0, 255], then
   round-half-even. This removes bit-depth (1/8/16-bit, float) and window/level differences between
   sources. A constant image has nothing to stretch -> ``blank_image``; NaN/inf -> ``corrupt_image``.

DICOM (``DICM`` at offset 128; a preamble-less file whose first tag is in group 0002/0008 is tried with
pydicom's ``force=True`` when Pillow does not recognise it): ``pixel_array`` of the first frame only
(multi-frame files are accepted, frames 2.. ignored), modality LUT (rescale slope/intercept), VOI LUT or
WindowCenter/Width, MONOCHROME1 inverted *after* windowing (as torchxrayvision does), then step 4.
With ``patient_salt``, PatientID (0010,0020) becomes ``ImageInfo.patient_ref``, a salted hash (privacy.py);
the value itself is never kept, logged or put in a message.
Colour DICOM (RGB/YBR, converted to RGB by pydicom; PALETTE COLOR through its LUT) follows step 3.
Compressed transfer syntaxes decode when pydicom has a plugin for them (here: JPEG baseline/JPEG 2000 via
Pillow, RLE via pydicom); others are ``dicom_unsupported``.

Multi-frame GIF/TIFF/MPO: the first frame. MPO (multi-picture JPEG from phones) is reported as ``JPEG``.

Reason codes (``DecodeError.reason``; stable, ``str(err) == f"{reason}: {detail}"``; also in ``REASONS``):

- ``empty_file``: 0 bytes.
- ``not_an_image``: no image signature at all (text, random bytes).
- ``unsupported_format``: a recognised container we do not decode (PDF, SVG, HEIC/AVIF, PSD, ICO, PPM, ...
  anything Pillow reads other than PNG/JPEG/BMP/TIFF/GIF/WEBP).
- ``truncated``: the data ends early (Pillow "image file is truncated", DICOM pixel data short).
- ``corrupt_image``: a known signature whose header or data is broken (bad CRC, garbage, NaN/inf pixels).
- ``too_large``: width*height > max_pixels, from the header, before any pixel is decoded (DICOM also: the
  pixel data rows x columns x frames x samples x bits declare, or a deflated dataset's inflated length,
  over 4 x max_pixels bytes; see dicom.py).
- ``dicom_no_pixel_data``: DICOM without PixelData (structured report, KOS, ...).
- ``dicom_corrupt``: DICOM pydicom cannot parse, or with missing/invalid Rows/Columns/Photometric.
- ``dicom_unsupported``: transfer syntax without an installed decoder, or an unhandled pixel layout.
- ``blank_image``: all pixels equal after luminance: nothing to normalise.

Decompression bombs: ``width * height > max_pixels`` is checked from the header before pixels are decoded.
Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) also applies: its ``DecompressionBombError`` (and the
warning, when warnings are turned into errors) become ``too_large`` as well, so a max_pixels above
Pillow's error threshold (2 * MAX_IMAGE_PIXELS, ~179 M by default) has no extra effect.
``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False (Pillow's default) or truncated files would decode
silently with grey tails; ``decode_gray`` resets it (with a warning) if someone set it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import imagehash
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from xray_spark.data.copy_hash import aspect_thumbnail, pack
from xray_spark.data.dicom import (  # imports pydicom only when called
    decode_dicom,
    header_info,
    looks_like_bare_dicom,
)
from xray_spark.data.pixels import REASONS, DecodeError, ImageInfo, luma, luma_of, stretch

__all__ = [
    "DEFAULT_MAX_PIXELS", "REASONS", "DecodeError", "ImageInfo", "ImageRecord", "analyze",
    "decode_for_model", "decode_gray", "decoder_signature", "image_struct_to_gray", "phash_hex",
    "pixel_sha256", "resize", "stretch", "thumbnail", "to_rgb",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS: int = 100_000_000

_RESAMPLE = Image.Resampling.BILINEAR  # PIL bilinear: antialiases on downscale (its support scales)
for _plugin in ("Bmp", "Gif", "Jpeg", "Mpo", "Png", "Tiff", "WebP"):  # register exactly the readers we use
    try:
        importlib.import_module(f"PIL.{_plugin}ImagePlugin")
    except ImportError:  # e.g. Pillow built without WebP: those files become unsupported_format
        log.debug("Pillow plugin %s unavailable", _plugin)
_PIL_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "TIFF", "GIF", "WEBP") if f in Image.OPEN)
_MODE_BITS = {"1": 1, "I": 32, "F": 32}
_SUPPORTED_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"), (b"BM", "BMP"),
)
_UNSUPPORTED_MAGIC = (
    (b"%PDF", "PDF"), (b"%!PS", "PostScript"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"\xff\x0a", "JPEG XL"), (b"DDS ", "DDS"), (b"qoif", "QOI"),
    (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"\x76\x2f\x31\x01", "OpenEXR"), (b"#?RADIANCE", "HDR"),
)


# What decides which files decode: this package's rules, Pillow, pydicom and pydicom's pixel-data plugins.
_DECODER_DISTRIBUTIONS = (
    "xray-spark", "Pillow", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
    "pylibjpeg-rle", "python-gdcm", "pyjpegls", "pillow-jpls",
)


@functools.cache
def decoder_signature() -> str:
    """The installed decoder stack, e.g. `xray-spark=0.1.0;Pillow=11.3.0;pydicom=3.0.1;pylibjpeg=2.0.1`.

    Recorded on scoring rows so a file quarantined because no decoder could read it (`unsupported_format`,
    `dicom_unsupported`) is tried again once this changes, e.g. after installing a JPEG-LS plugin.
    Distributions that are not installed are left out. Cached: package versions do not change within a
    process, and the lookups cost ~0.1 s.
    """
    found = []
    for name in _DECODER_DISTRIBUTIONS:
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ";".join(found)


def _check_gray(gray: np.ndarray) -> np.ndarray:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8 or gray.size == 0:
        raise ValueError(f"expected a non-empty 2-D uint8 array, got {getattr(gray, 'shape', type(gray))}")
    return gray


# --------------------------------------------------------------------------- format sniffing


def _sniff_unsupported(head: bytes) -> str | None:
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return f"ISO media ({head[8:12].decode('ascii', 'replace').strip()})"  # HEIC, AVIF, MP4
    text = head[:1024].lstrip().lower()
    if text.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in text:
        return "SVG"
    return None


def _sniff_supported(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SUPPORTED_MAGIC if head.startswith(magic)), None)


def _classify_unidentified(data: bytes, head: bytes) -> DecodeError:
    """Pillow could not open it as one of our formats: say as precisely as we can what it is."""
    fmt = _sniff_supported(head)
    if fmt is not None:
        return DecodeError("corrupt_image",
                           f"{fmt} signature but the header is unreadable (corrupt or cut short)")
    other = _sniff_unsupported(head)
    if other is not None:
        return DecodeError("unsupported_format", f"{other} files are not decoded")
    try:
        with Image.open(io.BytesIO(data)) as im:  # any Pillow format at all?
            return DecodeError("unsupported_format", f"{im.format} images are not decoded")
    except MemoryError:
        raise
    except Exception:  # any failure here just means "not an image"
        pass
    return DecodeError("not_an_image", f"no known image signature (starts with {head[:8]!r})")


# --------------------------------------------------------------------------- Pillow path


def _bit_depth(im: Image.Image, head: bytes) -> int:
    if im.format == "PNG" and im.mode != "P" and len(head) > 24:
        return head[24]  # IHDR bit depth: Pillow reads 16-bit colour PNG as 8-bit RGB
    if im.format == "TIFF":
        bps = getattr(im, "tag_v2", {}).get(258)
        if bps:
            return int(bps[0] if isinstance(bps, tuple) else bps)
    if im.mode.startswith("I;16"):
        return 16
    return _MODE_BITS.get(im.mode, 8)


def _pil_pixels(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> luminance array (any numeric dtype) for _stretch."""
    mode = im.mode
    if mode in ("1", "L", "I", "F"):
        return np.asarray(im)
    if mode.startswith("I;16"):
        arr = np.asarray(im)
        return arr if arr.dtype == np.uint16 else arr.astype(np.uint16)
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "LA":
        arr = np.asarray(im)
        lum = arr[..., 0]
        a = arr[..., 1]
        return lum if a.min() == 255 else lum * (a * np.float32(1.0 / 255.0))
    elif mode not in ("RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa, La, ...
        im = im.convert("RGBA" if "A" in mode or "a" in mode else "RGB")
    return luma_of(np.asarray(im))


def _pil_error(e: Exception, where: str, info: ImageInfo | None = None) -> DecodeError:
    """Pillow reports truncation as OSError("... truncated ...") or EOFError; anything else is corruption."""
    msg = str(e) or type(e).__name__
    if isinstance(e, EOFError) or (isinstance(e, OSError) and "truncated" in msg.lower()):
        return DecodeError("truncated", f"{where}: {msg}", info)
    return DecodeError("corrupt_image", f"{where}: {type(e).__name__}: {msg}", info)


def _decode_pil(data: bytes, head: bytes, max_pixels: int,
                pixels: Callable[[Image.Image], np.ndarray] | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Open, check and load with Pillow; `pixels` (default: luminance, then the stretch) makes the array
    (colour.py passes its RGB reader, which needs no stretch)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":  # libwebp only says "could not create decoder"
        declared = int.from_bytes(head[4:8], "little") + 8
        if declared > len(data):
            raise DecodeError("truncated", f"WEBP: RIFF declares {declared} bytes, file has {len(data)}")
    try:
        im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        raise _classify_unidentified(data, head) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError("too_large", str(e)) from None
    except MemoryError:
        raise
    except Exception as e:  # a plugin choked on the header
        raise _pil_error(e, "header") from None
    with im:
        fmt = "JPEG" if im.format == "MPO" else im.format
        w, h = im.size
        info = ImageInfo(fmt, im.mode, w, h, _bit_depth(im, head))
        if w * h > max_pixels:
            raise DecodeError("too_large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}", info)
        if w <= 0 or h <= 0:
            raise DecodeError("corrupt_image", f"invalid size {w}x{h}", info)
        try:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            lum = (pixels or _pil_pixels)(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DecodeError("too_large", str(e), info) from None
        except MemoryError:
            raise
        except Exception as e:  # decoders raise many types on broken data
            raise _pil_error(e, fmt, info) from None
        info = ImageInfo(fmt, info.mode, lum.shape[1], lum.shape[0], info.bit_depth)
    if pixels is not None:
        return lum, info
    try:
        return stretch(lum), info
    except DecodeError as e:
        raise DecodeError(e.reason, e.detail, info) from None


# --------------------------------------------------------------------------- public API


def decode_gray(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, patient_salt: str | None = None
) -> tuple[np.ndarray, ImageInfo]:
    """bytes -> (H x W uint8 luminance normalised to [0, 255], source info). Raises DecodeError.

    The array is always a fresh C-contiguous, writable buffer that shares memory with nothing. With a
    `patient_salt`, a DICOM's PatientID becomes ``info.patient_ref`` (privacy.hash_identifier)."""
    if not data:
        raise DecodeError("empty_file", "0 bytes")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was enabled; resetting it so truncated files "
                    "are caught")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    head = bytes(data[:2048])
    if head[128:132] == b"DICM":
        return decode_dicom(data, max_pixels, patient_salt=patient_salt)
    try:
        return _decode_pil(data, head, max_pixels)
    except DecodeError as e:
        if e.reason != "not_an_image" or not looks_like_bare_dicom(head):
            raise
        not_image = e
    try:
        return decode_dicom(data, max_pixels, forced=True, patient_salt=patient_salt)
    except DecodeError as e:
        if e.reason == "dicom_corrupt":
            raise not_image from None  # the group-0002/0008 guess was wrong
        raise


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """(H,W) uint8 -> (size, size) uint8, PIL bilinear (_RESAMPLE). Aspect ratio is NOT preserved (as
    sparkdl did): every source is squeezed the same way, so padding/letterbox bars cannot become a cue.
    Returns the input itself when it already has that shape."""
    _check_gray(gray)
    if int(size) <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if gray.shape == (size, size):
        return gray
    img = Image.fromarray(np.ascontiguousarray(gray))
    return np.asarray(img.resize((int(size), int(size)), _RESAMPLE))


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H,W) uint8 -> (H,W,3) uint8, luminance replicated (what ImageNet backbones expect)."""
    _check_gray(gray)
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    out[...] = gray[..., None]
    return out


def decode_for_model(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """bytes -> (size, size, 3) uint8 model input through the one decode/resize path. Raises DecodeError."""
    gray, _ = decode_gray(data, max_pixels=max_pixels)
    return to_rgb(resize(gray, size))


_OCV_CHANNELS = {0: 1, 16: 3, 24: 4}  # Spark ImageSchema: CV_8UC1, CV_8UC3 (BGR), CV_8UC4 (BGRA)


def image_struct_array(height: int, width: int, n_channels: int, mode: int, data: bytes) -> np.ndarray:
    """A Spark ImageSchema row's pixels as they are stored: (H, W, C) uint8 (8-bit grey, BGR or BGRA), checked
    against the row's own type and size. Raises DecodeError."""
    if mode not in _OCV_CHANNELS:
        raise DecodeError("unsupported_format",
                          f"ImageSchema OpenCV type {mode}: only CV_8UC1/3/4 are handled")
    if n_channels != _OCV_CHANNELS[mode]:
        raise DecodeError("corrupt_image", f"nChannels {n_channels} does not match OpenCV type {mode}")
    if data is None or height <= 0 or width <= 0 or len(data) != height * width * n_channels:
        got = 0 if data is None else len(data)
        raise DecodeError("corrupt_image", f"{got} bytes for a {width}x{height}x{n_channels} image")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, n_channels)


def image_struct_to_gray(height: int, width: int, n_channels: int, mode: int, data: bytes) -> np.ndarray:
    """A Spark ImageSchema row (8-bit gray/BGR/BGRA) -> normalised gray uint8 via the same luminance and
    min-max path as decode_gray. Raises DecodeError."""
    arr = image_struct_array(height, width, n_channels, mode, data)
    if n_channels == 1:
        return stretch(arr[..., 0])
    alpha = arr[..., 3] if n_channels == 4 else None
    return stretch(luma(arr[..., 2], arr[..., 1], arr[..., 0], alpha))


def pixel_sha256(gray: np.ndarray) -> str:
    """sha256 over shape + bytes of the normalised array: the exact-duplicate key across formats."""
    g = np.ascontiguousarray(_check_gray(gray))
    h = hashlib.sha256(f"{g.shape[0]}x{g.shape[1]}:".encode())
    h.update(g.data)
    return h.hexdigest()


def phash_hex(gray: np.ndarray) -> str:
    """imagehash.phash (64-bit DCT hash) as 16 hex chars: the near-duplicate candidate key."""
    return str(imagehash.phash(Image.fromarray(np.ascontiguousarray(_check_gray(gray)))))


def thumbnail(gray: np.ndarray, size: int = 128) -> np.ndarray:
    """(size, size) uint8 via resize(), for pixel-level duplicate confirmation."""
    return resize(gray, size)


@dataclass
class ImageRecord:
    """What ingest stores per file. Header fields are filled whenever they were readable, even if
    quarantined."""

    status: str  # "ok" | "quarantined"
    reason: str | None  # None when ok, else "<code>: <detail>"
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None
    pixel_sha256: str | None = None
    phash: str | None = None
    thumb: bytes | None = None  # thumbnail(...).tobytes(), thumb_size x thumb_size
    patient_ref: str | None = None  # ImageInfo.patient_ref: salted hash of the DICOM PatientID, not the value
    copy_thumb: bytes | None = None  # copy_hash.pack(aspect_thumbnail(...)): the crop-tolerant copy check


def analyze(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumb_size: int = 128,
    patient_salt: str | None = None,
    copy_thumb_size: int = 0,
) -> ImageRecord:
    """Decode once and summarise: an image fault (DecodeError: the decoders turn every error they raise on
    bad bytes into one) becomes status 'quarantined' + reason. Anything else — MemoryError, a missing
    library, a bug — is not the image's fault and propagates, so the Spark task fails and is retried instead
    of leaving a permanent quarantine row for a good file."""
    try:
        gray, info = decode_gray(data, max_pixels=max_pixels, patient_salt=patient_salt)
        return ImageRecord(
            "ok", None, info.format, info.mode, info.width, info.height, info.bit_depth,
            pixel_sha256(gray), phash_hex(gray), thumbnail(gray, thumb_size).tobytes(), info.patient_ref,
            pack(aspect_thumbnail(gray, copy_thumb_size)) if copy_thumb_size else None,
        )
    except DecodeError as e:
        i = e.info
        if i is None:
            return ImageRecord("quarantined", str(e))
        return ImageRecord(
            "quarantined", str(e), i.format, i.mode, i.width, i.height, i.bit_depth, patient_ref=i.patient_ref
        )


def probe_info(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo | None:
    """What a file declares in its header (format, mode, width, height, bit depth), without decoding its
    pixels: the file properties the shift check compares with the training images'. Sizes are as stored
    (before EXIF rotation; callers compare the short and long side). None when no decoder here reads it."""
    head = bytes(data[:2048])
    if head[128:132] == b"DICM" or looks_like_bare_dicom(head):
        return header_info(data, max_pixels, forced=head[128:132] != b"DICM")
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
            fmt = "JPEG" if im.format == "MPO" else im.format
            return ImageInfo(fmt, im.mode, im.size[0], im.size[1], _bit_depth(im, head))
    except MemoryError:
        raise
    except Exception:  # not an image Pillow reads here (or a damaged header)
        return None
