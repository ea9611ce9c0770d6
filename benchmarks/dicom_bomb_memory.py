"""Peak RSS of decoding one deflated DICOM "bomb" (issue #24: bounded memory per file).

Why: a ~3 MB file in transfer syntax Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) can
declare 40000x40000 16-bit pixels whose 3.2 GB of zeros deflate ~1000:1; a decoder that inflates before
checking the declared size needs gigabytes for that one file, an OOM kill on an executor. This measures
the current code (no old tree needed): each case is decoded in a fresh process (this file with `--child`)
and that process reports resource.getrusage(RUSAGE_SELF).ru_maxrss, after imports and after the decode.

    python benchmarks/dicom_bomb_memory.py                 # 40000x40000 16-bit bomb + a normal 2048x2048
    python benchmarks/dicom_bomb_memory.py --side 20000 --bits 8   # a smaller bomb
"""

from __future__ import annotations

import argparse
import io
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

_BLOCK = 1 << 20


def _dicom_bytes(rows: int, cols: int, bits: int, transfer_syntax: str, pixel_data: bytes | None) -> bytes:
    """A MONOCHROME2 DICOM with `bits` allocated and stored, built with pydicom (no PixelData when None)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if pixel_data is not None:
        ds.PixelData = pixel_data
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def deflated_bomb(side: int, bits: int) -> bytes:
    """A deflated DICOM declaring side x side pixels of `bits` (8 or 16), all zeros, never held in memory:
    each 1 MiB of zeros is deflated once after a full flush (which resets the compressor), so every
    further MiB deflates to the same bytes."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    header = _dicom_bytes(side, side, bits, DeflatedExplicitVRLittleEndian, None)
    meta_end = 132 + 12 + int.from_bytes(header[140:144], "little")  # after (0002,0000) and its group
    body = zlib.decompress(header[meta_end:], -zlib.MAX_WBITS)
    n = side * side * bits // 8
    vr = b"OB" if bits == 8 else b"OW"
    body += b"\xe0\x7f\x10\x00" + vr + b"\x00\x00" + n.to_bytes(4, "little")  # (7FE0,0010), n bytes
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body), comp.flush(zlib.Z_FULL_FLUSH)]
    block = comp.compress(bytes(_BLOCK)) + comp.flush(zlib.Z_FULL_FLUSH)
    parts.append(block * (n // _BLOCK))
    parts += [comp.compress(bytes(n % _BLOCK)), comp.flush()]
    return header[:meta_end] + b"".join(parts)


def normal_dicom(side: int) -> bytes:
    """An uncompressed side x side 8-bit DICOM with a ramp: the scale of a real radiograph."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    ramp = (np.arange(side * side, dtype=np.uint32) % 251).astype(np.uint8)
    return _dicom_bytes(side, side, 8, ExplicitVRLittleEndian, ramp.tobytes())


def _child(path: str) -> None:
    """Decode one file as ingest does (analyze) and print the outcome and this process's peak RSS."""
    from xray_spark.data.decode import analyze

    data = Path(path).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        rec = analyze(data)
        outcome = rec.status if rec.reason is None else rec.reason
    except MemoryError:
        outcome = "MemoryError"
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"peak_rss_mib={peak / 1024:.0f} after_imports_mib={before / 1024:.0f} "
          f"decode_s={seconds:.2f} outcome={outcome[:110]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=40000, help="the bomb declares side x side pixels")
    ap.add_argument("--bits", type=int, choices=(8, 16), default=16, help="bits allocated in the bomb")
    ap.add_argument("--normal-side", type=int, default=2048)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bomb = f"deflated bomb {args.side}x{args.side} {args.bits}-bit"
        cases = [(bomb, deflated_bomb(args.side, args.bits)),
                 (f"normal DICOM {args.normal_side}x{args.normal_side}", normal_dicom(args.normal_side))]
        for name, data in cases:
            path = Path(tmp) / "case.dcm"
            path.write_bytes(data)
            out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True,
                                 text=True, check=False)
            line = out.stdout.strip() or f"child exit {out.returncode}: {out.stderr.strip()[-300:]}"
            print(f"{name} ({len(data) / 2**20:.1f} MiB file): {line}")


if __name__ == "__main__":
    main()
