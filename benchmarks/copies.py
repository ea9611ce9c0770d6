"""Cross-source copies: how many of cohen-sample's 19 known copies ingest groups, and Ozturk's own duplicates.

What it measures. `ingest` (the library call, local[2]) on (a) ozturk/covid (124 images) + cohen-sample (19
full-size originals whose copies sit in ozturk/covid, often cropped): pairs grouped, pairs split across
train/test, wall seconds; (b) with --ozturk, all of ozturk (1,124 images): the duplicates counts of
summary.json and wall seconds. Why: a copy that lands on both sides of the split leaks the test set, and a
false merge silently moves unrelated patients together (README of shared/data: pairs.csv is the truth).

    python benchmarks/copies.py [--data-root ../shared/data] [--ozturk] [--workdir DIR]

Key=value result lines go to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("benchmarks.copies")


def cohen_pairs(spark, cfg, root: Path, work: Path) -> dict:
    """Ingest ozturk/covid + cohen-sample; count the truth pairs grouped and split apart."""
    from xray_spark.data.ingest import ingest

    ozturk = work / "ozturk"
    shutil.copytree(root / "ozturk" / "covid", ozturk / "covid", dirs_exist_ok=True)
    t0 = time.time()
    result = ingest(spark, [f"ozturk={ozturk}", f"cohen={root / 'cohen-sample'}"], str(work / "out"), cfg)
    seconds = time.time() - t0
    rows = result.images.select("rel_path", "group_id", "split").toPandas().set_index("rel_path")
    with open(root / "cohen-sample" / "pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    grouped = apart = 0
    for p in pairs:
        a, b = rows.loc[f"cohen/covid/{p['cohen_file']}"], rows.loc[f"ozturk/covid/{p['ozturk_file']}"]
        grouped += int(a["group_id"] == b["group_id"])
        apart += int(a["split"] != b["split"])
    return {"pairs": len(pairs), "pairs_grouped": grouped, "pairs_across_split": apart,
            "duplicates": result.summary["duplicates"], "seconds": round(seconds, 1)}


def ozturk_all(spark, cfg, root: Path, work: Path) -> dict:
    from xray_spark.data.ingest import ingest

    t0 = time.time()
    result = ingest(spark, str(root / "ozturk"), str(work / "ozturk-out"), cfg)
    return {"duplicates": result.summary["duplicates"], "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--ozturk", action="store_true", help="also ingest all of ozturk (1,124 images)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true", help="log the ingest's own INFO lines (phase times)")
    ap.add_argument("--skip-cohen", action="store_true", help="only the --ozturk ingest")
    ap.add_argument("--dedup", action="append", default=[], metavar="KEY=VALUE",
                    help="override a dedup setting, e.g. copy_max_hamming=8")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.verbose:
        logging.getLogger("xray_spark").setLevel(logging.INFO)

    from xray_spark.config import load_config
    from xray_spark.session import get_spark

    cfg = load_config(local=None)
    for item in args.dedup:
        key, value = item.split("=", 1)
        setattr(cfg.dedup, key, type(getattr(cfg.dedup, key))(value))
    spark = get_spark(cfg, master="local[2]", conf={"spark.sql.shuffle.partitions": "4"},
                      app_name="copies-benchmark")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="copies-"))
    out = {} if args.skip_cohen else {"cohen": cohen_pairs(spark, cfg, args.data_root, work)}
    if args.ozturk:
        out["ozturk"] = ozturk_all(spark, cfg, args.data_root, work)
    for name, res in out.items():
        for key, value in res.items():
            sys.stdout.write(f"{name}.{key}={json.dumps(value, sort_keys=True)}\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
