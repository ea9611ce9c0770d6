"""The numeric core shared by decode.py and dicom.py: source info, reason-coded errors, luminance, stretch.

Pure numpy, no Pillow or pydicom, so both decoders import it without importing each other. The
normalisation rules (ITU-R 601-2 luminance, alpha onto black, min-max stretch to 8 bits) and the reason
codes are documented in decode.py's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# a reason no decoder writes: it stood for ANY fault while decoding (MemoryError, a missing library, a bug),
# not only the image's, so cached or scored rows carrying it are not the image's verdict and are computed
# again (features/cache.py, scoring/store.py)
STALE_REASON = "decode_failed"

REASONS: dict[str, str] = {
    "empty_file": "the file has 0 bytes",
    "not_an_image": "the bytes are not any image format we recognise (e.g. text)",
    "unsupported_format":
        "a recognised container we do not decode (PDF, SVG, HEIC, other Pillow formats, ...)",
    "truncated": "the image data ends early (partial download/copy)",
    "corrupt_image": "the header is recognised but the data is broken (bad CRC, garbage, NaN/inf pixels)",
    "too_large": ("width*height exceeds max_pixels, or the pixel data or inflated dataset a file declares "
                  "exceeds 4 x max_pixels bytes (decompression-bomb guard, checked before decoding)"),
    "dicom_no_pixel_data": "a DICOM file without PixelData (e.g. a structured report)",
    "dicom_corrupt": "a DICOM file that pydicom cannot parse, or with missing/invalid image attributes",
    "dicom_unsupported": "a DICOM transfer syntax without an installed decoder, or an unknown photometric",
    "blank_image": "every pixel has the same luminance: nothing to normalise",
}

_R, _G, _B = np.float32(0.299), np.float32(0.587), np.float32(0.114)


@dataclass(frozen=True)
class ImageInfo:
    """What the source file was, before normalisation (metadata for the shortcut baseline and reports)."""

    format: str  # "PNG","JPEG","BMP","TIFF","GIF","WEBP","DICOM"
    mode: str  # PIL mode of the source, or DICOM PhotometricInterpretation
    width: int  # after EXIF orientation (= decoded array's shape[1])
    height: int
    bit_depth: int  # bits per sample of the source (PNG IHDR / TIFF BitsPerSample / DICOM BitsStored)
    patient_ref: str | None = None  # salted hash of the DICOM PatientID (0010,0020); never the value itself


class DecodeError(ValueError):
    """Why bytes could not become a normalised image. `info` is set when the header was readable."""

    def __init__(self, reason: str, detail: str, info: ImageInfo | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode reason code {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.info = info

    def __reduce__(self):  # keeps the exception picklable across Spark/multiprocessing boundaries
        return (DecodeError, (self.reason, self.detail, self.info))


def stretch(x: np.ndarray) -> np.ndarray:
    """Linear min-max stretch to uint8 [0, 255], round-half-even. uint8/uint16 go through a LUT built by
    the very same float32 formula, so the result is identical to the float path, only faster."""
    if x.dtype == np.bool_:
        x = x.view(np.uint8)
    if x.dtype in (np.uint8, np.uint16):
        mn, mx = int(x.min()), int(x.max())
        if mn == mx:
            raise DecodeError("blank_image", f"every pixel is {mn}")
        if x.dtype == np.uint8 and mn == 0 and mx == 255:
            return x.copy(order="C")  # identity, but always a private, writable, contiguous array
        lut = _stretch_float(np.arange(mx + 1, dtype=np.float32), mn, mx)  # entries < mn are never used
        return np.take(lut, x)
    if x.dtype.kind not in "iuf":
        raise DecodeError("corrupt_image", f"pixel type {x.dtype} cannot be normalised")
    small = x.dtype.itemsize <= (4 if x.dtype.kind == "f" else 2)
    xf = x.astype(np.float32 if small else np.float64)  # always a private copy: _stretch_float works in place
    if xf.dtype.kind == "f" and not np.isfinite(xf).all():
        raise DecodeError("corrupt_image", "pixels contain NaN or infinity")
    mn, mx = xf.min(), xf.max()
    if mn == mx:
        raise DecodeError("blank_image", f"every pixel is {mn}")
    return _stretch_float(xf, mn, mx)


def _stretch_float(xf: np.ndarray, mn, mx) -> np.ndarray:
    """(x - min) * 255 / (max - min), rounded; works in place on `xf` (callers pass a private array)."""
    xf -= xf.dtype.type(mn)
    xf *= xf.dtype.type(255.0) / xf.dtype.type(mx - mn)
    np.rint(xf, out=xf)
    np.clip(xf, 0, 255, out=xf)
    return xf.astype(np.uint8)


def luma(r: np.ndarray, g: np.ndarray, b: np.ndarray, a: np.ndarray | None = None) -> np.ndarray:
    """ITU-R 601-2 luminance of 2-D channel views, alpha composited onto black; the result goes to stretch."""
    if np.array_equal(r, g) and np.array_equal(r, b):
        lum = r  # grey stored as colour: exact, no weights, no copy
    else:
        lum = r.astype(np.float32)
        lum *= _R
        lum += g * _G
        lum += b * _B
    if a is not None and a.min() < 255:
        lum = lum.astype(np.float32) if lum.dtype != np.float32 else lum
        lum *= a * np.float32(1.0 / 255.0)
    return lum


def luma_of(arr: np.ndarray) -> np.ndarray:
    """(H,W,3|4) RGB(A) -> luminance; (H,W) passes through."""
    if arr.ndim == 2:
        return arr
    alpha = arr[..., 3] if arr.shape[2] == 4 else None
    return luma(arr[..., 0], arr[..., 1], arr[..., 2], alpha)
