"""Bad files of every kind the ingest job must quarantine (built in memory; no fixed paths)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR is rewritten to claim width x height (a decompression bomb header)."""
    data = bytearray(_png_bytes(np.zeros((8, 8), np.uint8)))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def _dicom(with_pixels: bool, corrupt: bool = False) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if with_pixels:
        arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    if corrupt:
        raw = raw[:132] + b"\x02\x00\x10\x00garbage-garbage-garbage" + bytes(range(256)) * 4
    return raw


def bad_files() -> dict[str, bytes]:
    """file name -> bytes; each must be quarantined with its own reason code (the value of EXPECTED)."""
    real = (np.indices((256, 256)).sum(axis=0) % 251).astype(np.uint8)
    png, jpeg = _png_bytes(real), _jpeg_bytes(real)
    return {
        "bad_empty.png": b"",
        "bad_truncated.png": png[: len(png) // 2],
        "bad_truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad_text.png": b"this is not an image, just text that someone saved with a .png name\n" * 4,
        "bad_bomb.png": _png_claiming(60000, 60000),
        "bad_document.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "bad_nopixels.dcm": _dicom(with_pixels=False),
        "bad_corrupt.dcm": _dicom(with_pixels=True, corrupt=True),
        "bad_blank.png": _png_bytes(np.full((64, 64), 7, np.uint8)),
    }


EXPECTED = {
    "bad_empty.png": "empty_file",
    "bad_truncated.png": "truncated",
    "bad_truncated.jpg": "truncated",
    "bad_text.png": "not_an_image",
    "bad_bomb.png": "too_large",
    "bad_document.pdf": "unsupported_format",
    "bad_nopixels.dcm": "dicom_no_pixel_data",
    "bad_corrupt.dcm": "dicom_corrupt",
    "bad_blank.png": "blank_image",
}


def write_bad_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in bad_files().items():
        p = folder / name
        p.write_bytes(data)
        out.append(p)
    return out
