"""DICOM bytes -> the same normalised 8-bit luminance as every other format (see decode.py's docstring).

Why its own module: pydicom's parsing, sanity checks and LUT chain are a job of their own, and pydicom is
imported only when a DICOM file turns up. Imports pixels.py and privacy.py only, never decode.py.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pydicom
from pydicom.datadict import dictionary_has_tag
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.values import convert_single_string

from xray_spark.data.pixels import DecodeError, ImageInfo, luma_of, stretch
from xray_spark.data.privacy import hash_identifier

log = logging.getLogger(__name__)

# pydicom's validation warnings quote element values (PatientID, names, dates) into executor logs and notebook
# output: header values never leave this module in clear (privacy), so its warnings are silenced
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")

PATIENT_REF_PREFIX: str = "dcm-"
_PATIENT_ID = 0x00100020


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
        ds = pydicom.dcmread(io.BytesIO(data), force=forced)
    except MemoryError:
        raise
    except Exception as e:  # pydicom raises many types on garbage
        raise DecodeError("dicom_corrupt", f"unreadable DICOM: {type(e).__name__}: {e}") from None
    _dicom_sanity(ds, forced)
    ref = _patient_ref(ds, patient_salt)
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeError("dicom_no_pixel_data",
                          f"no PixelData (SOP class {ds.get('SOPClassUID', 'unknown')})")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        bits = int(ds.get("BitsStored") or ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as e:
        raise DecodeError("dicom_corrupt", f"missing or invalid image attribute: {e}") from None
    info = ImageInfo("DICOM", photometric, cols, rows, bits, ref)
    if rows <= 0 or cols <= 0:
        raise DecodeError("dicom_corrupt", f"invalid size {cols}x{rows}", info)
    if rows * cols > max_pixels:
        raise DecodeError("too_large", f"{cols}x{rows} = {rows * cols} pixels > max_pixels {max_pixels}",
                          info)
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
