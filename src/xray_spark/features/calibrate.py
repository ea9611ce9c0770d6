"""Draw the int8 calibration sample with Spark: training-split images, chosen and decoded on the executors.

Which images: up to `n` distinct contents of the training split (never the test split: the gate measures int8
on it), ordered by sha256(seed:sha256) — a fixed pseudo-random choice, so the same images and seed give the
same sample and so the same int8 model. The executors decode them with the featurizer's own decode path
(`decode_for_model`) and send back the luminance channel at the backbone's input size; only that bounded
sample reaches the driver (n x S x S bytes), which writes it as one file (calibration.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xray_spark.data.decode import DecodeError, decode_for_model
from xray_spark.errors import UserError
from xray_spark.features.backbones import get_backbone
from xray_spark.features.calibration import Calibration, write_calibration

log = logging.getLogger(__name__)

DECODED = "sha256 string, pixels binary"


def pick_keys(rows: DataFrame, n: int, seed: int, split: str | None = "train") -> DataFrame:
    """Up to `n` distinct sha256 of `rows` (on `split` when given), in a fixed pseudo-random order."""
    if split is not None:
        if "split" not in rows.columns:
            raise UserError("the calibration sample is drawn from the training split: rows need a split "
                            "column")
        rows = rows.where(F.col("split") == split)
    order = F.sha2(F.concat(F.lit(f"{seed}:"), F.col("sha256")), 256)
    return rows.select("sha256").distinct().orderBy(order).limit(n)


def draw_calibration(rows: DataFrame, contents: DataFrame, backbone: str, n: int, seed: int,
                     folder: str | None = None) -> Calibration:
    """The calibration sample of `backbone` from `rows` (sha256, split) whose bytes are in `contents`
    (sha256, content): drawn and decoded on the executors, written once on the driver
    (calibration.write_calibration)."""
    size = get_backbone(backbone).input_size
    keys = pick_keys(rows, n, seed)
    chosen = contents.select("sha256", "content").join(F.broadcast(keys), "sha256", "left_semi")
    chosen = chosen.dropDuplicates(["sha256"])

    def decode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            out = []
            for sha, content in zip(batch["sha256"], batch["content"], strict=True):
                try:
                    out.append((sha, decode_for_model(bytes(content), size)[..., 0].tobytes()))
                except DecodeError:  # an ok image that no longer decodes: left out of the sample
                    continue
            yield pd.DataFrame(out, columns=["sha256", "pixels"])

    got = chosen.mapInPandas(decode, DECODED).collect()
    hashes = [r["sha256"] for r in got]
    pixels = np.stack([np.frombuffer(r["pixels"], dtype=np.uint8).reshape(size, size) for r in got]) if got \
        else np.zeros((0, size, size), np.uint8)
    log.info("int8 calibration sample: %d training images drawn for %s", len(hashes), backbone)
    return write_calibration(pixels, hashes, backbone, folder)
