"""decode.py: every format/mode to one normalised luminance array, every bad input to a stable reason.

Inputs are built in memory with Pillow and pydicom; the real-data tests skip when ../shared/data is absent
(and fail when $CI is set: see conftest.data_root).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import pickle
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from xray_spark.data import decode as D
from xray_spark.data.decode import (
    REASONS,
    DecodeError,
    ImageInfo,
    analyze,
    decode_for_model,
    decode_gray,
    image_struct_to_gray,
    phash_hex,
    pixel_sha256,
    resize,
    thumbnail,
    to_rgb,
)
from xray_spark.data.privacy import hash_identifier

H, W = 48, 64  # non-square on purpose: catches swapped width/height


# ----------------------------------------------------------------------------- builders


def _xray_like(h: int = 256, w: int = 320, seed: int = 0) -> np.ndarray:
    """A smooth grey picture with structure (gradient + blobs + mild noise), uint8, full range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.4 * xx / w + 0.2 * yy / h
    for cy, cx, r in ((0.45, 0.3, 0.18), (0.45, 0.7, 0.18), (0.8, 0.5, 0.1)):
        img += 0.5 * np.exp(-(((yy - cy * h) ** 2 + (xx - cx * w) ** 2) / (2 * (r * w) ** 2)))
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * 255).astype(np.uint8)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb() -> np.ndarray:
    base = _xray_like(H, W)
    return np.dstack([base, base[::-1], 255 - base])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature + IHDR claiming w x h, with a tiny IDAT: decoding it would fail loudly."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _tiff_header_only(w: int, h: int) -> bytes:
    """A little-endian TIFF whose one 8-bit grey strip claims w x h but holds 64 bytes."""
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 122), (277, 3, 1),
            (278, 4, h), (279, 4, 64)]  # 122 = 8 + 2 + 12 * 9 + 4: the strip follows the IFD
    ifd = b"".join(struct.pack("<HHI", tag, kind, 1) + struct.pack("<HH" if kind == 3 else "<I",
                                                                   *((value, 0) if kind == 3 else (value,)))
                   for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + ifd + struct.pack("<I", 0) + bytes(64)


def _dicom(arr: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int = 12, *,
           preamble: bool = True, transfer_syntax=None, pixel_bytes: bytes | None = None, **extra) -> bytes:
    """An uncompressed (ExplicitVRLittleEndian unless told) DICOM file built with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    if arr is not None:
        frame = arr[0] if "NumberOfFrames" in extra else arr
        ds.Rows, ds.Columns = frame.shape[:2]
        ds.SamplesPerPixel = 1 if frame.ndim == 2 else frame.shape[2]
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
        if frame.ndim == 3:
            ds.PlanarConfiguration = 0
        ds.PixelData = pixel_bytes if pixel_bytes is not None else np.ascontiguousarray(arr).tobytes()
        if pixel_bytes is not None:
            ds["PixelData"].VR = "OB"
    for key, value in extra.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


def _ramp16() -> np.ndarray:
    """64x64 MONOCHROME ramp 0..4095 (12 bits stored in 16)."""
    return np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(DecodeError) as exc:
        decode_gray(data, **kw)
    return exc.value.reason


# ----------------------------------------------------------------------------- formats and modes


def _mode_image(mode: str) -> Image.Image:
    base = _xray_like(H, W)
    rgb = _rgb()
    opaque = np.full((H, W), 255, np.uint8)
    opaque[:8, :8] = 128  # some real transparency, or WebP drops the alpha channel
    return {
        "L": lambda: Image.fromarray(base),
        "LA": lambda: Image.merge("LA", [Image.fromarray(base), Image.fromarray(opaque)]),
        "RGB": lambda: Image.fromarray(rgb),
        "RGBA": lambda: Image.fromarray(np.dstack([rgb, opaque])),
        "P": lambda: Image.fromarray(rgb).quantize(64),
        "1": lambda: Image.fromarray(base > 128),
        "CMYK": lambda: Image.fromarray(rgb).convert("CMYK"),
        "I;16": lambda: Image.fromarray(base.astype(np.uint16) * 257),
        "I": lambda: Image.fromarray(base.astype(np.int32) * 100_000 - 5_000_000),
        "F": lambda: Image.fromarray(base.astype(np.float32) / 7.0 - 3.0),
    }[mode]()


@pytest.mark.parametrize(
    ("fmt", "mode", "bit_depth"),
    [
        ("PNG", "L", 8), ("PNG", "LA", 8), ("PNG", "RGB", 8), ("PNG", "RGBA", 8), ("PNG", "P", 8),
        ("PNG", "1", 1), ("PNG", "I;16", 16),
        ("JPEG", "L", 8), ("JPEG", "RGB", 8), ("JPEG", "CMYK", 8),
        ("BMP", "L", 8), ("BMP", "RGB", 8), ("BMP", "P", 8), ("BMP", "1", 1),
        ("TIFF", "L", 8), ("TIFF", "RGBA", 8), ("TIFF", "CMYK", 8), ("TIFF", "I;16", 16),
        ("TIFF", "I", 32), ("TIFF", "F", 32), ("TIFF", "1", 1), ("TIFF", "LA", 8),
        ("GIF", "P", 8), ("WEBP", "RGB", 8), ("WEBP", "RGBA", 8),
    ],
)
def test_each_format_and_mode_decodes(fmt: str, mode: str, bit_depth: int) -> None:
    data = _encode(_mode_image(mode), fmt)
    gray, info = decode_gray(data)
    assert info == ImageInfo(fmt, mode, W, H, bit_depth)
    assert gray.shape == (H, W) and gray.dtype == np.uint8
    assert gray.min() == 0 and gray.max() == 255  # min-max stretch reaches both ends for every source


def test_16bit_png_and_tiff_are_stretched_with_their_full_precision() -> None:
    arr = np.tile(np.array([1000, 2000, 5000, 60000], np.uint16), (4, 2))  # values 8-bit cannot hold
    expected = np.tile(np.array([0, 4, 17, 255], np.uint8), (4, 2))  # (v-1000)*255/59000, rounded
    for fmt in ("PNG", "TIFF"):
        gray, info = decode_gray(_encode(Image.fromarray(arr), fmt))
        assert (info.format, info.mode, info.bit_depth) == (fmt, "I;16", 16)
        np.testing.assert_array_equal(gray, expected)


def test_bit_depth_and_level_differences_are_normalised_away() -> None:
    pic = _xray_like(H, W)
    g8, _ = decode_gray(_encode(Image.fromarray(pic), "PNG"))
    g16, _ = decode_gray(_encode(Image.fromarray(pic.astype(np.uint16) * 257), "PNG"))
    dim = (pic.astype(np.float32) * 0.5 + 60).round().astype(np.uint8)  # same picture, narrow window
    gdim, _ = decode_gray(_encode(Image.fromarray(dim), "PNG"))
    assert np.abs(g8.astype(int) - g16).max() <= 1
    assert np.abs(g8.astype(int) - gdim).max() <= 2
    np.testing.assert_array_equal(g8, pic)  # already full range: untouched


def test_exif_rotated_jpeg_comes_out_rotated() -> None:
    pic = np.full((H, W), 40, np.uint8)
    pic[:10, :10] = 250  # bright block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    gray, info = decode_gray(_encode(Image.fromarray(pic), "JPEG", quality=95, exif=exif))
    assert gray.shape == (W, H) and (info.width, info.height) == (H, W)
    assert gray[:10, -10:].mean() > 200  # ... so it is displayed at the top-right
    assert gray[:10, :10].mean() < 50


def test_same_picture_in_different_encodings_decodes_nearly_the_same() -> None:
    pic = _xray_like()
    rgb = np.dstack([pic] * 3)
    gray_png = _encode(Image.fromarray(pic), "PNG")
    rgb_jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=95)
    rgba_png = _encode(Image.fromarray(np.dstack([rgb, np.full(pic.shape, 255, np.uint8)])), "PNG")
    rgb_png = _encode(Image.fromarray(rgb), "PNG")
    ref, _ = decode_gray(gray_png)
    ref224 = resize(ref, 224).astype(np.float32)
    for data in (rgb_jpeg, rgba_png, rgb_png):
        other, _ = decode_gray(data)
        assert np.abs(resize(other, 224) - ref224).mean() < 3
    # lossless encodings of one grey picture are the same pixels, so the exact-duplicate key matches
    assert {pixel_sha256(decode_gray(d)[0]) for d in (gray_png, rgba_png, rgb_png)} == {pixel_sha256(ref)}
    assert decode_for_model(rgb_jpeg, 224).shape == (224, 224, 3)


def test_luminance_uses_itu_601_weights() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)]
    arr = np.array([[c for c in colours]], np.uint8).repeat(3, axis=0)  # 3 x 5 patches
    gray, info = decode_gray(_encode(Image.fromarray(arr), "PNG"))
    assert info.mode == "RGB"
    np.testing.assert_array_equal(gray[0], [76, 150, 29, 0, 255])  # 0.299, 0.587, 0.114 of 255


def test_alpha_is_composited_onto_black() -> None:
    rgb = np.full((H, W, 3), 200, np.uint8)
    rgb[:, W // 2:] = 100
    alpha = np.full((H, W), 255, np.uint8)
    alpha[: H // 2, : W // 2] = 0  # transparent over a bright area
    gray, _ = decode_gray(_encode(Image.fromarray(np.dstack([rgb, alpha])), "PNG"))
    assert (gray[: H // 2, : W // 2] == 0).all()
    assert (gray[H // 2:, : W // 2] == 255).all() and (gray[:, W // 2:] == 128).all()  # 100/200*255
    la = Image.merge("LA", [Image.fromarray(rgb[..., 0]), Image.fromarray(alpha)])
    np.testing.assert_array_equal(decode_gray(_encode(la, "PNG"))[0], gray)


def test_palette_transparency_goes_through_rgba() -> None:
    idx = np.zeros((H, W), np.uint8)
    idx[:, W // 2:] = 1
    idx[:4, :4] = 2
    im = Image.fromarray(idx, "P")
    im.putpalette([255, 255, 255, 100, 100, 100, 50, 50, 50] + [0] * (3 * 253))
    gray, info = decode_gray(_encode(im, "PNG", transparency=0))
    assert info.mode == "P"
    assert (gray[4:, : W // 2] == 0).all()  # white but transparent -> black
    assert (gray[:, W // 2:] == 255).all()


def test_mode_1_is_black_and_white() -> None:
    gray, info = decode_gray(_encode(_mode_image("1"), "PNG"))
    assert info.bit_depth == 1 and set(np.unique(gray)) == {0, 255}


# ----------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_16bit() -> None:
    gray, info = decode_gray(_dicom(_ramp16()))
    assert info == ImageInfo("DICOM", "MONOCHROME2", 64, 64, 12)
    expected = np.rint(_ramp16().astype(np.float64) * 255 / 4095).astype(np.uint8)
    assert np.abs(gray.astype(int) - expected).max() <= 1 and gray[0, 0] == 0 and gray[-1, -1] == 255


def test_dicom_monochrome1_is_inverted() -> None:
    mono2, _ = decode_gray(_dicom(_ramp16()))
    mono1, info = decode_gray(_dicom(_ramp16(), "MONOCHROME1"))
    assert info.mode == "MONOCHROME1"
    assert np.abs(mono1.astype(int) - (255 - mono2.astype(int))).max() <= 1
    assert mono1[0, 0] == 255 and mono1[-1, -1] == 0


def test_dicom_rescale_slope_is_applied() -> None:
    plain, _ = decode_gray(_dicom(_ramp16()))
    flipped, _ = decode_gray(_dicom(_ramp16(), RescaleSlope=-1, RescaleIntercept=100, RescaleType="US"))
    assert np.abs(flipped.astype(int) - (255 - plain.astype(int))).max() <= 1


def test_dicom_window_is_applied_in_rescaled_units_and_clips() -> None:
    # stored s -> modality 2s - 1024; window 800..1200 in modality units = stored 912..1112
    data = _dicom(_ramp16(), RescaleSlope=2, RescaleIntercept=-1024, RescaleType="US",
                  WindowCenter=1000, WindowWidth=400)
    flat = decode_gray(data)[0].ravel()
    assert (flat[:913] == 0).all() and (flat[1112:] == 255).all()  # clipped outside the window
    assert flat[850] == 0 and flat[1150] == 255  # would not hold if the window ignored the rescale
    inside = flat[913:1112]
    assert (np.diff(inside.astype(int)) >= 0).all() and len(np.unique(inside)) > 150


def test_dicom_multiframe_uses_first_frame_and_rgb_uses_luminance() -> None:
    frames = np.stack([_ramp16(), 4095 - _ramp16()])
    first, _ = decode_gray(_dicom(frames, NumberOfFrames=2))
    np.testing.assert_array_equal(first, decode_gray(_dicom(_ramp16()))[0])
    rgb = np.array([[c for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)]]],
                   np.uint8)
    gray, info = decode_gray(_dicom(rgb, "RGB", 8))
    assert (info.mode, info.bit_depth) == ("RGB", 8)
    np.testing.assert_array_equal(gray[0], [76, 150, 29, 0, 255])


def test_dicom_without_preamble_is_read() -> None:
    data = _dicom(_ramp16(), preamble=False)
    assert data[128:132] != b"DICM"
    gray, info = decode_gray(data)
    assert info.format == "DICOM" and gray.shape == (64, 64)


def _dicom_patient(patient_id, *, salt: str | None = "site-salt", flip: bool = False,
                   max_pixels: int = D.DEFAULT_MAX_PIXELS, **extra):
    """analyze() of a MONOCHROME2 DICOM for `patient_id` (a different picture/instance UID when flip)."""
    arr = 4095 - _ramp16() if flip else _ramp16()
    return analyze(_dicom(arr, PatientID=patient_id, **extra), patient_salt=salt, max_pixels=max_pixels)


def test_dicom_patient_id_becomes_a_salted_hash_never_the_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = _dicom_patient("PAT-123")
        same_patient = _dicom_patient("PAT-123", flip=True)
        other_salt = _dicom_patient("PAT-123", salt="another-salt")
        other_patient = _dicom_patient("PAT-124")
        no_salt = _dicom_patient("PAT-123", salt=None)
        quarantined = _dicom_patient("PAT-123", max_pixels=100)
    expected = "dcm-" + hashlib.sha256(b"site-salt\x00PAT-123").hexdigest()[:24]
    assert rec.status == "ok" and rec.patient_ref == expected
    assert hash_identifier(" PAT-123 ", "site-salt", "dcm-") == expected
    assert same_patient.pixel_sha256 != rec.pixel_sha256 and same_patient.patient_ref == rec.patient_ref
    assert other_salt.patient_ref.startswith("dcm-") and other_salt.patient_ref != rec.patient_ref
    assert other_patient.patient_ref.startswith("dcm-") and other_patient.patient_ref != rec.patient_ref
    assert no_salt.status == "ok" and no_salt.patient_ref is None
    assert quarantined.status == "quarantined" and quarantined.patient_ref == rec.patient_ref  # header read
    for r in (rec, same_patient, other_salt, other_patient, no_salt, quarantined):
        assert "PAT-123" not in repr(r)
        for f in dataclasses.fields(r):
            value = getattr(r, f.name)
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            assert "PAT-123" not in text, f.name
    assert "PAT-123" not in caplog.text and not any("PAT-123" in str(w.message) for w in caught)
    gray, info = decode_gray(_dicom(_ramp16(), PatientID="PAT-123"), patient_salt="site-salt")
    assert info.patient_ref == expected and "PAT-123" not in repr(info)
    assert decode_gray(_dicom(_ramp16(), PatientID="PAT-123"))[1].patient_ref is None  # no salt by default


def test_patient_ref_none_without_patient_id_or_for_other_formats() -> None:
    assert _dicom_patient("").patient_ref is None
    assert _dicom_patient(None).patient_ref is None
    png = _encode(Image.fromarray(_xray_like(H, W)), "PNG")
    assert analyze(png, patient_salt="site-salt").patient_ref is None
    assert decode_gray(png, patient_salt="site-salt")[1].patient_ref is None


def test_patient_ref_uses_the_specific_character_set() -> None:
    rec = _dicom_patient("PÄT-9", SpecificCharacterSet="ISO_IR 100")  # stored as latin-1 bytes
    assert rec.patient_ref == hash_identifier("PÄT-9", "site-salt", "dcm-")


def test_hash_identifier_rule() -> None:
    ref = hash_identifier("abc", "s", "p-")
    assert ref == "p-" + hashlib.sha256(b"s\x00abc").hexdigest()[:24] == hash_identifier(" abc\n", "s", "p-")
    with pytest.raises(ValueError, match="empty identifier") as exc:
        hash_identifier("   ", "s", "p-")
    assert "   " not in str(exc.value)


# ----------------------------------------------------------------------------- DICOM: bounded memory (#24)

_MONO16 = {"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16,
           "BitsStored": 12, "HighBit": 11, "PixelRepresentation": 0}


def _deflated_dicom(rows: int, cols: int, pixel_bytes: int | None = None, **extra) -> bytes:
    """A deflated DICOM declaring rows x cols 16-bit pixels with `pixel_bytes` zero bytes of PixelData
    (default: what it declares), never holding them: _dicom writes the rest, then each 1 MiB of zeros is
    deflated after a full flush (which resets the compressor), so it is deflated once and repeated."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    head = _dicom(None, transfer_syntax=DeflatedExplicitVRLittleEndian, Rows=rows, Columns=cols,
                  **_MONO16, **extra)
    assert head[132:136] == b"\x02\x00\x00\x00"  # (0002,0000): the meta group's length comes first
    meta_end = 144 + int.from_bytes(head[140:144], "little")
    n = rows * cols * 2 if pixel_bytes is None else pixel_bytes
    pixel_header = b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<I", n)  # (7FE0,0010) OW, n bytes
    body = zlib.decompress(head[meta_end:], -zlib.MAX_WBITS) + pixel_header
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body), comp.flush(zlib.Z_FULL_FLUSH)]
    parts.append((comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)) * (n >> 20))
    parts += [comp.compress(bytes(n & ((1 << 20) - 1))), comp.flush()]
    return head[:meta_end] + b"".join(parts)


def _refusal_and_peak(data: bytes, **kw) -> tuple[DecodeError, int]:
    """decode_gray's DecodeError and the peak bytes Python and numpy allocated meanwhile (tracemalloc)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with pytest.raises(DecodeError) as exc:
            decode_gray(data, **kw)
        return exc.value, tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()


@pytest.mark.parametrize("shape", [(64, 64), (1024, 768)])  # 2nd: > 1 MiB inflated, header checked early
def test_deflated_dicom_decodes_like_its_uncompressed_twin(shape: tuple[int, int]) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    arr = (np.arange(shape[0] * shape[1], dtype=np.uint32) % 4096).astype(np.uint16).reshape(shape)
    kw = {"PatientID": "PÄT-9", "SpecificCharacterSet": "ISO_IR 100"}
    plain = _dicom(arr, **kw)
    deflated = _dicom(arr, transfer_syntax=DeflatedExplicitVRLittleEndian, **kw)
    assert b"1.2.840.10008.1.2.1.99" in deflated[:512] and len(deflated) < len(plain)  # really deflated
    gray, info = decode_gray(deflated, patient_salt="s")
    twin, twin_info = decode_gray(plain, patient_salt="s")
    np.testing.assert_array_equal(gray, twin)
    assert info == twin_info and info.patient_ref == hash_identifier("PÄT-9", "s", "dcm-")


@pytest.mark.parametrize("maker_note", [0, 3 << 20])  # 3 MiB before group 0028: the 1 MiB peek is not enough
def test_deflated_bomb_is_refused_from_its_header_before_inflating(maker_note: int) -> None:
    extra = {"MakerNote": bytes(maker_note)} if maker_note else {}
    bomb = _deflated_dicom(40000, 40000, PatientID="PAT-1", **extra)  # 3.2 GB of zeros in ~3 MB
    assert len(bomb) < 4 << 20
    err, peak = _refusal_and_peak(bomb, patient_salt="s")
    assert err.reason == "too_large"
    assert "40000x40000 = 1600000000 pixels > max_pixels 100000000" in err.detail
    assert (err.info.width, err.info.height) == (40000, 40000)
    assert err.info.patient_ref == hash_identifier("PAT-1", "s", "dcm-")  # header read, value not kept
    assert peak < 32 << 20, peak  # inflating it whole took 3.2 GB (6 GB peak RSS)


def test_deflated_dataset_longer_than_declared_stops_at_the_cap() -> None:
    # 64x64 16-bit declared (8 KiB), 40 MiB of PixelData: the header passes, inflation stops at the cap
    data = _deflated_dicom(64, 64, pixel_bytes=40 << 20)
    err, peak = _refusal_and_peak(data, max_pixels=10_000)
    cap = 4 * 10_000 + (16 << 20)
    assert err.reason == "too_large" and f"inflates to more than {cap} bytes" in err.detail
    assert peak < cap + (8 << 20), peak


def test_deflated_frames_and_bits_count_against_the_byte_budget() -> None:
    # 100x100 pixels pass max_pixels=10_000, but 30 frames x 16 bits = 600,000 bytes > 4 x 10_000
    err, _ = _refusal_and_peak(_deflated_dicom(100, 100, NumberOfFrames=30), max_pixels=10_000)
    assert err.reason == "too_large"
    assert err.detail == ("100x100 x 30 frames x 1 samples x 16 bits = 600000 bytes of pixel data > 40000 "
                          "(4 x max_pixels 10000)")
    at_budget, _ = _refusal_and_peak(_deflated_dicom(100, 100, 40_000, NumberOfFrames=2), max_pixels=10_000)
    assert at_budget.reason == "blank_image"  # exactly 40000 bytes: decoded (all zeros)


@pytest.mark.parametrize(("extra", "reason", "declared"), [
    ({"Rows": 40000, "Columns": 40000}, "too_large", "40000x40000 = 1600000000 pixels"),
    ({"NumberOfFrames": 10**9}, "too_large", "64x64 x 1000000000 frames x 1 samples x 16 bits"),
    ({"Rows": 4000, "Columns": 4000}, "truncated", "less than expected"),  # within limits: data short
])
def test_dicom_declaring_more_than_it_holds_is_refused_without_allocating(extra: dict, reason: str,
                                                                          declared: str) -> None:
    frames = np.stack([_ramp16()]) if "NumberOfFrames" in extra else _ramp16()  # 8 KiB of pixel data
    err, peak = _refusal_and_peak(_dicom(frames, **extra))
    assert err.reason == reason and declared in err.detail
    assert peak < 4 << 20, peak


_UNDER_RLIMIT = """
import resource, sys
from pathlib import Path
from xray_spark.data.decode import analyze

files = [Path(p).read_bytes() for p in sys.argv[2:]]
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    bytearray(limit)
    print("limit not enforced")
except MemoryError:
    print("limit enforced")
for data in files:
    try:
        print(analyze(data).reason)
    except MemoryError:
        print("MemoryError")
"""


@pytest.mark.e2e  # starts a python process: its address space is capped, pytest's is not
def test_dicom_bombs_are_refused_inside_a_small_address_space(tmp_path: Path) -> None:
    pytest.importorskip("resource")
    files = {"deflated.dcm": _deflated_dicom(40000, 40000),  # 3.2 GB inflated
             "short.dcm": _dicom(_ramp16(), Rows=40000, Columns=40000)}  # 8 KiB where 3.2 GB are declared
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    limit = 3 << 29  # 1.5 GiB
    out = subprocess.run([sys.executable, "-c", _UNDER_RLIMIT, str(limit), *paths], capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "limit enforced"
    expected = "too_large: 40000x40000 = 1600000000 pixels > max_pixels"
    assert len(lines) == 3 and all(line.startswith(expected) for line in lines[1:]), lines


def _missing_decoder_syntax():
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless, JPEGLosslessSV1, JPEGLSLossless

    for uid in (JPEGLosslessSV1, JPEGLSLossless, HTJ2KLossless):
        if not get_decoder(uid).is_available:
            return uid
    return None


# ----------------------------------------------------------------------------- reason codes


def _truncated(fmt: str) -> bytes:
    data = _encode(Image.fromarray(_xray_like()), fmt)
    return data[: len(data) // 2]


def _corrupt_png() -> bytes:
    data = bytearray(_encode(Image.fromarray(_xray_like()), "PNG"))
    i = data.find(b"IDAT") + 4
    data[i + 50: i + 400] = np.random.default_rng(1).integers(0, 256, 350, dtype=np.uint8).tobytes()
    return bytes(data)


def _bad_ihdr_crc() -> bytes:
    data = bytearray(_encode(Image.fromarray(_xray_like(H, W)), "PNG"))
    data[29] ^= 0xFF
    return bytes(data)


def _nan_tiff() -> bytes:
    arr = np.ones((H, W), np.float32)
    arr[3, 3] = np.nan
    return _encode(Image.fromarray(arr), "TIFF")


def _compressed_dicom() -> bytes:
    from pydicom.encaps import encapsulate

    uid = _missing_decoder_syntax()
    if uid is None:
        pytest.skip("every compressed syntax has a decoder here")
    return _dicom(_ramp16(), transfer_syntax=uid,
                  pixel_bytes=encapsulate([b"\xff\xd8not really jpeg\xff\xd9"]))


BAD_INPUTS = [
    ("empty_file", lambda: b"", {}),
    ("not_an_image", lambda: b"patient_id,label\n123,covid\n" * 20, {}),
    ("not_an_image", lambda: b"\x00\x01\x02\x03" * 100, {}),
    ("unsupported_format", lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" * 5, {}),
    ("unsupported_format", lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', {}),
    # Pillow reads it; we don't
    ("unsupported_format", lambda: _encode(Image.fromarray(_xray_like(H, W)), "PPM"), {}),
    *[("truncated", lambda fmt=fmt: _truncated(fmt), {})
      for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")],
    ("truncated", lambda: _dicom(_ramp16())[:-1000], {}),
    ("truncated", lambda: _deflated_dicom(64, 64)[:-10], {}),  # the deflate stream has no end
    ("corrupt_image", _corrupt_png, {}),
    ("corrupt_image", _bad_ihdr_crc, {}),
    ("corrupt_image", _nan_tiff, {}),
    ("too_large", lambda: _png_header_only(50_000, 50_000), {}),  # Pillow's own bomb guard
    ("too_large", lambda: _png_header_only(5_000, 5_000), {"max_pixels": 1_000_000}),  # ours, before decoding
    ("too_large", lambda: _tiff_header_only(5_000, 5_000), {"max_pixels": 1_000_000}),
    ("too_large", lambda: _encode(Image.fromarray(_xray_like(H, W)), "PNG"), {"max_pixels": 100}),
    ("too_large", lambda: _dicom(_ramp16()), {"max_pixels": 100}),
    ("too_large", lambda: _deflated_dicom(40000, 40000), {}),  # inflated only as far as its header
    ("dicom_no_pixel_data", lambda: _dicom(None), {}),
    ("dicom_corrupt", lambda: b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(5000), {}),
    ("dicom_corrupt", lambda: _dicom(_ramp16())[:300] + np.random.default_rng(1).bytes(3000), {}),
    ("dicom_unsupported", _compressed_dicom, {}),
    ("blank_image", lambda: _encode(Image.new("L", (W, H), 77), "PNG"), {}),
    ("blank_image", lambda: _dicom(np.full((8, 8), 300, np.uint16)), {}),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom/Pillow warn about the garbage we feed them
@pytest.mark.parametrize(("reason", "make", "kw"), BAD_INPUTS,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_gets_its_reason(reason: str, make, kw: dict) -> None:
    data = make()
    assert _reason(data, **kw) == reason
    rec = analyze(data, **kw)
    assert rec.status == "quarantined" and rec.reason.startswith(f"{reason}: ")
    assert rec.pixel_sha256 is None and rec.thumb is None


def test_every_reason_code_is_exercised() -> None:
    assert {r for r, _, _ in BAD_INPUTS} == set(REASONS)


def test_too_large_keeps_header_fields_and_never_decodes() -> None:
    rec = analyze(_png_header_only(5_000, 4_000), max_pixels=1_000_000)  # its IDAT could never decode
    assert rec.reason.startswith("too_large: 5000x4000")
    assert (rec.format, rec.mode, rec.width, rec.height, rec.bit_depth) == ("PNG", "L", 5000, 4000, 8)


def test_pillow_bomb_warning_as_error_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    data = _encode(Image.fromarray(_xray_like(H, W)), "PNG")  # 3072 px: warning zone (1x..2x the limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert _reason(data) == "too_large"


def test_truncated_images_caught_even_if_someone_enabled_load_truncated(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _reason(_truncated("JPEG")) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_damaged_image_becomes_a_row_never_an_exception() -> None:
    rng = np.random.default_rng(7)
    png = _encode(Image.fromarray(_xray_like(H, W)), "PNG")
    jpeg = _encode(Image.fromarray(_rgb()), "JPEG")
    dcm = _dicom(_ramp16())
    deflated = _deflated_dicom(64, 64, PatientID="PAT-1")  # our own inflate loop meets damaged streams
    samples = [rng.bytes(int(n)) for n in rng.integers(1, 4000, 40)]
    samples += [magic + rng.bytes(500) for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM",
                                                      b"II*\x00", b"RIFF\x00\x01\x00\x00WEBP",
                                                      b"\0" * 128 + b"DICM",
                                                      b"\x02\x00\x00\x00", b"\x08\x00\x05\x00")]
    files = (png, jpeg, dcm, deflated)
    samples += [d[:n] for d in files for n in np.linspace(1, len(d) - 1, 15).astype(int)]
    for d in files:  # headers damaged in place: pydicom's lazy parsing meets a bad element late
        for _ in range(500):
            flipped = bytearray(d)
            for i in rng.integers(0, min(len(d), 600), 2):
                flipped[i] = int(rng.integers(0, 256))
            samples.append(bytes(flipped))
    for data in samples:
        rec = analyze(data)
        assert rec.status in ("ok", "quarantined")
        assert (rec.reason is None) == (rec.status == "ok")
        if rec.status == "quarantined":
            assert rec.reason.split(":")[0] in REASONS
    with pytest.raises(TypeError):  # not even bytes: not an image fault, so no quarantine row (task retried)
        analyze(12345)


def test_analyze_ok_record() -> None:
    data = _encode(Image.fromarray(_rgb()), "JPEG", quality=92)
    rec = analyze(data, thumb_size=32)
    gray, info = decode_gray(data)
    assert rec.status == "ok" and rec.reason is None
    assert (rec.format, rec.mode, rec.width, rec.height, rec.bit_depth) == ("JPEG", "RGB", W, H, 8)
    assert rec.pixel_sha256 == pixel_sha256(gray) and rec.phash == phash_hex(gray)
    assert rec.thumb == thumbnail(gray, 32).tobytes() and len(rec.thumb) == 32 * 32


def test_decode_error_contract() -> None:
    err = DecodeError("truncated", "PNG: cut short")
    assert isinstance(err, ValueError) and str(err) == "truncated: PNG: cut short"
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.detail, str(back)) == (err.reason, err.detail, str(err))
    with pytest.raises(ValueError, match="unknown decode reason"):
        DecodeError("oops", "typo in a reason code")


# ----------------------------------------------------------------------------- Spark image struct


def test_image_struct_matches_decode_gray() -> None:
    rgb = _rgb()
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    rgba = np.dstack([rgb, alpha])
    cases = [
        (1, 0, rgb[..., 0], _encode(Image.fromarray(rgb[..., 0]), "PNG")),
        (3, 16, rgb[..., ::-1], _encode(Image.fromarray(rgb), "PNG")),  # ImageSchema stores BGR
        (4, 24, rgba[..., [2, 1, 0, 3]], _encode(Image.fromarray(rgba), "PNG")),
    ]
    for n_channels, ocv_mode, stored, png in cases:
        got = image_struct_to_gray(H, W, n_channels, ocv_mode,
                                   bytearray(np.ascontiguousarray(stored).tobytes()))
        np.testing.assert_array_equal(got, decode_gray(png)[0])


def test_image_struct_rejects_bad_rows() -> None:
    with pytest.raises(DecodeError) as exc:
        image_struct_to_gray(4, 4, 1, 5, b"\0" * 16)  # CV_32FC1
    assert exc.value.reason == "unsupported_format"
    with pytest.raises(DecodeError) as exc:
        image_struct_to_gray(4, 4, 3, 16, b"\0" * 47)
    assert exc.value.reason == "corrupt_image"
    with pytest.raises(DecodeError) as exc:
        image_struct_to_gray(4, 4, 1, 0, b"\7" * 16)
    assert exc.value.reason == "blank_image"


# ----------------------------------------------------------------------------- resize, rgb, hashes


def test_resize_to_rgb_and_thumbnail() -> None:
    gray = _xray_like(H, W)
    out = resize(gray, 224)
    assert out.shape == (224, 224) and out.dtype == np.uint8
    np.testing.assert_array_equal(
        out, np.asarray(Image.fromarray(gray).resize((224, 224), Image.Resampling.BILINEAR)))
    big = _xray_like(600, 520, seed=3)  # downscale too: bilinear, not an area average (BOX)
    small = resize(big, 224)
    np.testing.assert_array_equal(
        small, np.asarray(Image.fromarray(big).resize((224, 224), Image.Resampling.BILINEAR)))
    assert not np.array_equal(small,
                              np.asarray(Image.fromarray(big).resize((224, 224), Image.Resampling.BOX)))
    rgb = to_rgb(out)
    assert rgb.shape == (224, 224, 3) and rgb.flags.c_contiguous
    assert all(np.array_equal(rgb[..., c], out) for c in range(3))
    assert thumbnail(gray).shape == (128, 128) and thumbnail(gray, 16).shape == (16, 16)
    with pytest.raises(ValueError):
        resize(gray.astype(np.float32), 224)


def test_pixel_sha256_and_phash() -> None:
    a = _xray_like(64, 64, seed=1)
    assert pixel_sha256(a) == pixel_sha256(a.copy()) and len(pixel_sha256(a)) == 64
    assert pixel_sha256(a) != pixel_sha256(a.reshape(32, 128))  # same bytes, other shape
    b = a.copy()
    b[0, 0] ^= 1
    assert pixel_sha256(a) != pixel_sha256(b)
    h = phash_hex(a)
    assert len(h) == 16 and int(h, 16) >= 0

    def hamming(x: str, y: str) -> int:
        return bin(int(x, 16) ^ int(y, 16)).count("1")

    noisy = (np.clip(a.astype(int) + np.random.default_rng(2).integers(-4, 5, a.shape), 0, 255)
             .astype(np.uint8))
    assert hamming(h, phash_hex(noisy)) <= 4
    assert hamming(h, phash_hex(np.ascontiguousarray(a.T[::-1]))) > 8  # rotated: a different picture


# ----------------------------------------------------------------------------- real data


def test_raw_sample_all_ok_and_match_manifest(raw_sample_dir: Path) -> None:
    rows = list(csv.DictReader((raw_sample_dir / "manifest.csv").open()))
    assert len(rows) == 60
    for row in rows:
        rec = analyze((raw_sample_dir / row["path"]).read_bytes())
        assert rec.status == "ok", (row["path"], rec.reason)
        assert (rec.format, rec.mode, rec.width, rec.height) == (
            row["format"], row["mode"], int(row["width"]), int(row["height"])), row["path"]


def test_ozturk_sample_decodes_for_model(ozturk_dir: Path) -> None:
    rows = list(csv.DictReader((ozturk_dir / "manifest.csv").open()))
    for row in rows[::8]:  # every label, every format/mode; the benchmark covers all files
        x = decode_for_model((ozturk_dir / row["path"]).read_bytes(), 224)
        assert x.shape == (224, 224, 3) and x.dtype == np.uint8 and x.max() > x.min()


def test_module_docstring_documents_every_reason_code() -> None:
    missing = [code for code in REASONS if f"``{code}``" not in (D.__doc__ or "")]
    assert not missing
