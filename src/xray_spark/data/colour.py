"""sparkdl's colour path: bytes or a Spark image struct -> RGB uint8 as the image holds it, and the resize
filters that sparkdl's `scaleHint` named (pure functions, no Spark).

Why a second path beside decode.py's: xray-spark shows an X-ray to a model as one luminance channel,
stretched to 8 bits (decode.py), which is right for radiographs and wrong for colour photographs, whose
features a sparkdl user expects to match Keras on the raw RGB pixels. Here an 8-bit RGB image reaches the
model unchanged: no luminance, no stretch. What still has to be decided is decided as decode.py does it:
EXIF orientation applied, alpha composited onto black, palette images through their palette, grey images
replicated to three channels. Images of more than 8 bits (16-bit PNG/TIFF, float TIFF) and DICOM go through
decode.py's min-max stretch to 8 bits, the one faithful way to show them to an 8-bit model. Errors are
decode.py's DecodeError with its reason codes.

Resize filters (Pillow), for `resize_rgb`:
- `area`: `BOX`, each output pixel the area-weighted mean of the source pixels it covers: what Java's
  `AreaAveragingScaleFilter` computes (sparkdl's `SCALE_AREA_AVERAGING`, and `SCALE_SMOOTH` in the JDK);
- `nearest`: `NEAREST`, each output pixel a copy of the source pixel under its centre: Java's
  `ReplicateScaleFilter` (`SCALE_REPLICATE`, and `SCALE_FAST` / `SCALE_DEFAULT` in the JDK).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFile

from xray_spark.data.decode import (
    DEFAULT_MAX_PIXELS,
    _decode_pil,
    _sniff_supported,
    decode_gray,
    image_struct_array,
    to_rgb,
)
from xray_spark.data.pixels import stretch

RESIZE_FILTERS: dict[str, Image.Resampling] = {
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


def decode_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """bytes -> (H, W, 3) uint8 RGB, 8-bit pixels unchanged. Raises DecodeError.

    DICOM, and anything Pillow should not open (empty, unknown, unsupported), goes through decode_gray:
    a DICOM becomes its normalised luminance replicated, the rest raises decode.py's reason."""
    head = bytes(data[:2048])
    if not data or head[128:132] == b"DICM" or _sniff_supported(head) is None:
        return to_rgb(decode_gray(data, max_pixels=max_pixels)[0])
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail (decode_gray says so and warns)
    return _decode_pil(data, head, max_pixels, pixels=_rgb_pixels)[0]


def _rgb_pixels(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode == "1":
        return to_rgb(np.asarray(im.convert("L")))
    if mode == "L":
        return to_rgb(np.array(im))
    if mode in ("I", "F") or mode.startswith("I;16"):
        arr = np.asarray(im)
        return to_rgb(stretch(arr.astype(np.uint16) if mode.startswith("I;16") else arr))
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode not in ("RGB", "RGBA"):  # LA, CMYK, YCbCr, LAB, RGBX, RGBa, ...
        im = im.convert("RGBA" if "A" in mode or "a" in mode else "RGB")
    return _over_black(np.array(im))


def _over_black(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) uint8 -> (H, W, 3): alpha composited onto black (decode.py's rule); RGB copied."""
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    rgb, alpha = arr[..., :3], arr[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    out = rgb.astype(np.float32) * (alpha.astype(np.float32) / np.float32(255.0))
    return np.rint(out).astype(np.uint8)


def image_struct_to_rgb(height: int, width: int, n_channels: int, mode: int, data: bytes) -> np.ndarray:
    """A Spark ImageSchema row (8-bit grey / BGR / BGRA) -> (H, W, 3) uint8 RGB, pixels unchanged (BGR order
    reversed, alpha onto black). Raises DecodeError."""
    arr = image_struct_array(height, width, n_channels, mode, data)
    if n_channels == 1:
        return to_rgb(np.ascontiguousarray(arr[..., 0]))
    return _over_black(arr[..., [2, 1, 0, 3][:n_channels]])


def resize_rgb(rgb: np.ndarray, size: int, resize_filter: str) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) with a named filter (RESIZE_FILTERS); aspect ratio not kept (as
    sparkdl did). Returns the input itself when it already has that size."""
    if rgb.shape[:2] == (size, size):
        return rgb
    resample = RESIZE_FILTERS[resize_filter]
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((int(size), int(size)), resample))
