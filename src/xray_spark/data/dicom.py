"""DICOM bytes -> the same normalised 8-bit luminance as every other format (see decode.py's docstring).

Why its own module: pydicom's parsing, sanity checks and LUT chain are a job of their own, and pydicom is
imported only when a DICOM file turns up. Imports pixels.py and privacy.py only, never decode.py.

Bounded memory per file: what the header declares is checked before any pixel byte is
inflated, decoded or allocated: one frame's Rows x Columns against max_pixels, and all of PixelData
(Rows x Columns x frames x samples x BitsAllocated) against ``pixel_byte_budget(max_pixels)``; either is
``too_large``. A deflated dataset (1.2.840.10008.1.2.1.99) is the one place where a small file can grow:
pydicom inflates it whole before reading a single element (a 3 MB file declaring 40000x40000 16-bit
zeros took 6 GB), so it is inflated here instead, in steps, with the header checked as soon as the
inflated prefix holds it and inflation refused beyond the budget + ``_HEADER_ALLOWANCE``.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import FileDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.values import convert_single_string

from xray_spark.data.pixels import DecodeError, ImageInfo, luma_of, stretch
from xray_spark.data.privacy import hash_identifier

log = logging.getLogger(__name__)

# pydicom's validation warnings quote element values (PatientID, names, dates) into executor logs and notebook
# output: header values never leave this module in clear (privacy), so its warnings are silenced
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")

PATIENT_REF_PREFIX: str = "dcm-"
_PATIENT_ID = 0x00100020
_HEADER_ALLOWANCE = 16 << 20  # inflated bytes beyond the pixel budget: every element other than PixelData
_HEAD_PEEK = 1 << 20  # the inflated prefix first parsed for Rows/Columns/...; x4 while it is not enough
_INFLATE_STEP = 1 << 20  # at most this much inflated per zlib call, so the header check comes early
_FEED_STEP = 1 << 16  # compressed bytes handed to zlib at a time


def pixel_byte_budget(max_pixels: int) -> int:
    """Bytes of PixelData a DICOM may declare, all frames included: 4 per allowed pixel (one 32-bit frame
    of max_pixels, or more frames of fewer/narrower pixels). Also bounds what a deflated dataset inflates to.
    """
    return 4 * max_pixels


def looks_like_bare_dicom(head: bytes) -> bool:
    """Preamble-less DICOM starts with a group 0002 (meta) or 0008 (identifying) tag, little endian."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _dicom_sanity(ds, forced: bool) -> None:
    """pydicom parses garbage leniently; reject what is clearly not a real dataset."""
    if not forced and "TransferSyntaxUID" not in ds.file_meta:
        raise DecodeError("dicom_corrupt", "file meta information has no TransferSyntaxUID")
    if not any(dictionary_has_tag(tag) for tag in ds.keys()):
        raise DecodeError("dicom_corrupt", "no standard DICOM element could be parsed")
    for tag in ds.keys():
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < length:
            raise DecodeError("truncated", f"DICOM element {tag} has {len(value)} of {length} bytes")


def _patient_ref(ds, salt: str | None) -> str | None:
    """Salted hash of PatientID (0010,0020), or None (no salt, no or empty PatientID, unreadable value).

    Reads the raw element bytes and decodes them without pydicom's value validation, whose warnings quote
    the value; the clear text exists only inside this function and nothing about it is logged."""
    if salt is None:
        return None

    try:
        value = getattr(ds.get_item(_PATIENT_ID), "value", None)
        if isinstance(value, bytes):  # the usual case: still a RawDataElement straight from dcmread
            charset = ds.original_character_set  # "" / one name / a list, as read from (0008,0005)
            encodings = [c for c in ([charset] if isinstance(charset, str) else charset) if c] or None
            value = convert_single_string(value, encodings)
        elif value is not None and not isinstance(value, str):  # already converted to a MultiValue
            value = "\\".join(str(v) for v in value)
        if not value or not value.strip():
            return None
        return hash_identifier(value, salt, PATIENT_REF_PREFIX)
    except MemoryError:
        raise
    except Exception as e:  # an odd PatientID must not fail the decode; never log the value
        log.debug("PatientID unreadable (%s): no patient_ref", type(e).__name__)
        return None


@dataclass(frozen=True)
class _Declared:
    """What the Image Pixel module declares: enough to size PixelData without touching it."""

    info: ImageInfo
    frames: int
    samples: int
    bits_allocated: int

    @property
    def pixel_bytes(self) -> int:
        """PixelData's declared length; a count below 1 counts as 1 (pydicom rejects those later)."""
        counts = (self.info.width, self.info.height, self.frames, self.samples, self.bits_allocated)
        return -(-math.prod(max(c, 1) for c in counts) // 8)


def _declared(ds, ref: str | None) -> _Declared:
    """The image attributes, or dicom_corrupt when one is missing or not a number."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        bits = int(ds.get("BitsStored") or ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        allocated = int(ds.get("BitsAllocated") or bits)
    except (AttributeError, TypeError, ValueError) as e:
        raise DecodeError("dicom_corrupt", f"missing or invalid image attribute: {e}") from None
    return _Declared(ImageInfo("DICOM", photometric, cols, rows, bits, ref), frames, samples, allocated)


def _check_size(d: _Declared, max_pixels: int) -> None:
    """too_large from the declared sizes alone (numbers only in the message), before any pixel exists."""
    rows, cols, info = d.info.height, d.info.width, d.info
    if rows <= 0 or cols <= 0:
        raise DecodeError("dicom_corrupt", f"invalid size {cols}x{rows}", info)
    if rows * cols > max_pixels:
        raise DecodeError("too_large", f"{cols}x{rows} = {rows * cols} pixels > max_pixels {max_pixels}",
                          info)
    budget = pixel_byte_budget(max_pixels)
    if d.pixel_bytes > budget:
        raise DecodeError("too_large", f"{cols}x{rows} x {d.frames} frames x {d.samples} samples x "
                          f"{d.bits_allocated} bits = {d.pixel_bytes} bytes of pixel data > {budget} "
                          f"(4 x max_pixels {max_pixels})", info)


def _inflate(stream: memoryview, max_pixels: int, check_head: Callable[[bytes], bool]) -> io.BytesIO:
    """Raw-deflate `stream` into a buffer of at most the pixel budget + _HEADER_ALLOWANCE bytes (too_large
    beyond), calling `check_head` on the inflated prefix (1 MiB, then 4x larger while it returns False) so
    a declared size is refused before the rest is inflated. A stream cut short is `truncated`."""
    cap = pixel_byte_budget(max_pixels) + _HEADER_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = io.BytesIO()
    pos, next_head = 0, _HEAD_PEEK
    while not inflater.eof:
        src = inflater.unconsumed_tail
        if not src and pos < len(stream):
            src, pos = stream[pos:pos + _FEED_STEP], pos + _FEED_STEP
        chunk = inflater.decompress(src, min(_INFLATE_STEP, cap + 1 - out.tell()))
        if not chunk and not src:
            raise DecodeError("truncated", f"deflated dataset ends after {out.tell()} inflated bytes, "
                              "before its end of stream")
        out.write(chunk)
        if out.tell() > cap:
            raise DecodeError("too_large", f"deflated dataset inflates to more than {cap} bytes "
                              f"(4 x max_pixels {max_pixels} + {_HEADER_ALLOWANCE} for the other elements)")
        if next_head and out.tell() >= next_head:
            done = check_head(out.getvalue()) or next_head >= _HEADER_ALLOWANCE
            next_head = 0 if done else next_head * 4
    out.seek(0)
    return out


def _head_check(max_pixels: int, salt: str | None) -> Callable[[bytes], bool]:
    """A check_head for _inflate: False while the prefix ends inside or before group 0028 (Image Pixel
    module), else True after _check_size; only too_large is raised here, any other fault is left to the
    full parse (where _dicom_sanity sees the whole dataset)."""

    def check(prefix: bytes) -> bool:
        reached: list[bool] = []

        def past_group_0028(tag, vr, length) -> bool:
            if tag > 0x0028FFFF:
                reached.append(True)
            return bool(reached)

        try:
            head = read_dataset(io.BytesIO(prefix), False, True, stop_when=past_group_0028)
            if not reached:
                return False
            _check_size(_declared(head, _patient_ref(head, salt)), max_pixels)
        except MemoryError:
            raise
        except DecodeError as e:
            if e.reason == "too_large":
                raise
        except Exception as e:  # a damaged prefix: the full parse reports it
            log.debug("deflated DICOM header not checkable early (%s)", type(e).__name__)
        return True

    return check


def _read(data: bytes, max_pixels: int, forced: bool, salt: str | None) -> FileDataset:
    """dcmread, except a deflated dataset: pydicom inflates those whole before reading any element, so they
    are inflated here through _inflate (capped, header checked early) and parsed from that buffer.

    The file meta is read with pydicom's own reader (the one dcmread uses) so that "deflated" here means
    exactly what it means to pydicom: no file pydicom would inflate reaches dcmread."""
    fp = io.BytesIO(data)
    preamble = read_preamble(fp, forced)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(io.BytesIO(data), force=forced)
    body = _inflate(memoryview(data)[fp.tell():], max_pixels, _head_check(max_pixels, salt))
    dataset = read_dataset(body, is_implicit_VR=False, is_little_endian=True)
    body.close()  # element values are copies: the inflated buffer goes now
    ds = FileDataset(None, dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds


def header_info(data: bytes, max_pixels: int, forced: bool = False) -> ImageInfo | None:
    """What a DICOM declares (format, photometric mode, size, bits stored), read without its pixel data:
    the file properties a shift check compares with the training images'. None when unreadable."""
    try:
        if _read_file_meta_info(_past_preamble(data, forced)).get("TransferSyntaxUID") == \
                DeflatedExplicitVRLittleEndian:
            ds = _read(data, max_pixels, forced, None)  # inflated within the budget, never whole
        else:
            ds = pydicom.dcmread(io.BytesIO(data), force=forced, stop_before_pixels=True)
        return _declared(ds, None).info
    except MemoryError:
        raise
    except Exception:  # DecodeError or anything pydicom raises on a damaged header
        return None


def _past_preamble(data: bytes, forced: bool) -> io.BytesIO:
    fp = io.BytesIO(data)
    read_preamble(fp, forced)
    return fp


def decode_dicom(
    data: bytes, max_pixels: int, forced: bool = False, *, patient_salt: str | None = None
) -> tuple[np.ndarray, ImageInfo]:
    """DICOM bytes -> (normalised uint8 luminance, info). Raises DecodeError. `forced`: no preamble/meta.
    With `patient_salt`, info.patient_ref is the salted hash of PatientID (see _patient_ref).

    Every error the bytes can cause is a DecodeError: pydicom parses lazily, so a damaged element raises
    whatever its reader raises (NotImplementedError for an unknown VR, BytesLengthException, ...) wherever it
    is first touched. Only MemoryError passes: it is not the image's fault (the task fails and is retried).
    The message names the exception type only: pydicom's texts can quote header values."""
    try:
        return _decode_dicom(data, max_pixels, forced, patient_salt)
    except (MemoryError, DecodeError):
        raise
    except Exception as e:  # a damaged element found late by pydicom's lazy parsing
        raise DecodeError("dicom_corrupt", f"unreadable DICOM element ({type(e).__name__})") from None


def _decode_dicom(
    data: bytes, max_pixels: int, forced: bool, patient_salt: str | None
) -> tuple[np.ndarray, ImageInfo]:
    try:
        ds = _read(data, max_pixels, forced, patient_salt)
    except (MemoryError, DecodeError):
        raise
    except Exception as e:  # pydicom raises many types on garbage
        raise DecodeError("dicom_corrupt", f"unreadable DICOM: {type(e).__name__}: {e}") from None
    _dicom_sanity(ds, forced)
    ref = _patient_ref(ds, patient_salt)
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeError("dicom_no_pixel_data",
                          f"no PixelData (SOP class {ds.get('SOPClassUID', 'unknown')})")
    declared = _declared(ds, ref)
    _check_size(declared, max_pixels)
    info, photometric, frames = declared.info, declared.info.mode, declared.frames
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None:  # preamble-less file without meta: use the encoding pydicom detected
        implicit, little = ds.original_encoding
        tsyntax = (ImplicitVRLittleEndian if implicit
                   else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian))
        ds.file_meta.TransferSyntaxUID = tsyntax
    tsyntax = UID(str(tsyntax))
    try:
        available = get_decoder(tsyntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DecodeError("dicom_unsupported", f"no decoder for transfer syntax {tsyntax.name} ({tsyntax})",
                          info)
    try:
        arr = pixel_array(ds, index=0)  # first frame only (documented): multi-frame is accepted
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
            if photometric == "MONOCHROME1":  # invert after windowing; min-max makes the offset irrelevant
                arr = np.negative(arr, dtype=np.float64)
        elif photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except MemoryError:
        raise
    except DecodeError:
        raise
    except ValueError as e:
        reason = "truncated" if "less than expected" in str(e) else "dicom_corrupt"
        raise DecodeError(reason, f"DICOM pixel data: {e}", info) from None
    except Exception as e:
        raise DecodeError("dicom_corrupt", f"DICOM pixel data: {type(e).__name__}: {e}", info) from None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = luma_of(arr[..., :3])
    elif arr.ndim != 2:
        raise DecodeError("dicom_unsupported", f"pixel array shape {arr.shape} ({photometric})", info)
    if frames > 1:
        log.debug("multi-frame DICOM (%d frames): using the first", frames)
    try:
        return stretch(arr), info
    except DecodeError as e:
        raise DecodeError(e.reason, e.detail, info) from None
