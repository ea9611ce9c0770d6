"""Small runs: the whole-process `xray-spark featurize` on ~466 images vs a plain Keras fp32 script.

Why: issue 10 asks a daily scoring-sized run (a few hundred images) to reach >= 0.85x the images/s of the
simplest thing a user could write instead; at that size fixed costs (JVM, ingest, model build) dominate,
and only a whole-process timing shows them.

Both commands are separate processes, timed from outside, interleaved round by round (A B A B ...) so
both see the same quiet and busy spells of a shared machine; medians are printed and `ratio=` is
featurize img/s over plain-script img/s (the round-by-round median of the pair ratios).
  featurize  `xray-spark featurize --data DIR --backbone ResNet50 --weights none --out FRESH` with a fresh
             --out every round (cold: nothing featurized before, and a raw folder is not ingested; the IR
             conversion and the seeded weights file stay in the per-user cache, as on any machine after its
             first run);
  plain      this file with `--plain DIR`: Pillow decode, resize to 224, ResNet50(include_top=False,
             pooling='avg', weights=None), predict in batches of 32, TensorFlow's default threads.

    python benchmarks/small_run.py --rounds 3              # builds /tmp/xray-small-run/ozturk-466 once
    python benchmarks/small_run.py --data DIR --rounds 5
    python benchmarks/small_run.py --before-src /tmp/xray-before/src  # also another src tree's featurize
        # (e.g. from `git archive HEAD src`), interleaved: before and after side by side in one run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import cpu_line, timed, with_pythonpath  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/work/shared/data/ozturk")
DEFAULT_FOLDER = Path(tempfile.gettempdir()) / "xray-small-run" / "ozturk-466"
EXTS = (".png", ".jpg", ".jpeg")


def build_folder(source: Path, folder: Path, n: int) -> Path:
    """`n` images spread over the source's sorted listing, class sub-folders kept; reused when present."""
    if folder.is_dir() and sum(1 for p in folder.rglob("*") if p.is_file()) == n:
        return folder
    from featurize import pick_files  # benchmarks/ is on sys.path when run as a script

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in pick_files(source, n):
        dest = tmp / f.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# what a user's plain script would call: keras.applications class, its preprocess module, input size
PLAIN_MODELS = {"ResNet50": ("ResNet50", "resnet50", 224),
                "InceptionV3": ("InceptionV3", "inception_v3", 299)}


def plain_script(data: Path, backbone: str, batch_size: int = 32) -> None:
    """The baseline a user would write: no Spark, Keras fp32, everything in one process."""
    import numpy as np
    from PIL import Image

    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in EXTS)
    import keras

    cls, module, size = PLAIN_MODELS[backbone]
    model = getattr(keras.applications, cls)(include_top=False, pooling="avg", weights=None)
    preprocess = getattr(keras.applications, module).preprocess_input

    def load(f: Path) -> np.ndarray:
        with Image.open(f) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)

    out = []
    for i in range(0, len(files), batch_size):
        batch = [load(f) for f in files[i:i + batch_size]]
        out.append(model.predict_on_batch(preprocess(np.stack(batch))))
    feats = np.concatenate(out)
    print(f"plain images={len(files)} features={feats.shape}")


def count_images(data: Path) -> int:
    return sum(1 for p in data.rglob("*") if p.is_file() and p.suffix.lower() in EXTS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="image folder (default: build one of --images Ozturk images)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--images", type=int, default=466)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds after one warm-up pair")
    p.add_argument("--backbone", default="ResNet50", choices=sorted(PLAIN_MODELS))
    p.add_argument("--before-src", type=Path, metavar="SRC",
                   help="also time `python -m xray_spark featurize` with this src/ first on PYTHONPATH")
    p.add_argument("--src", type=Path, metavar="SRC",
                   help="run the featurize under test from this src/ (a snapshot) instead of `xray-spark`")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed first pair (caches already warm)")
    p.add_argument("--plain", type=Path, metavar="DIR", help=argparse.SUPPRESS)  # the baseline process
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plain:
        plain_script(args.plain, args.backbone)
        return

    data = args.data or build_folder(args.source, DEFAULT_FOLDER, args.images)
    n = count_images(data)
    work = Path(tempfile.mkdtemp(prefix="small-run-"))
    log_file = work / "commands.log"
    cli = shutil.which("xray-spark") or "xray-spark"
    env_note = os.environ.get("XRAY_SPARK_CACHE", "~/.cache/xray-spark")

    def featurize(tag: str) -> float:
        try:
            if args.src:
                return with_src(args.src, tag)
            return timed([cli, *featurize_args(tag)], log_file)
        finally:  # each round's output is only timed; the log stays for reading
            shutil.rmtree(work / f"out-{tag}", ignore_errors=True)

    def featurize_args(tag: str) -> list[str]:
        return ["featurize", "--data", str(data), "--backbone", args.backbone, "--weights", "none",
                "--out", str(work / f"out-{tag}")]

    def with_src(src: Path, tag: str) -> float:
        return timed([sys.executable, "-m", "xray_spark", *featurize_args(tag)], log_file,
                     with_pythonpath(src))

    def before(tag: str) -> float:
        try:
            return with_src(args.before_src, f"before-{tag}")
        finally:
            shutil.rmtree(work / f"out-before-{tag}", ignore_errors=True)

    def plain() -> float:
        return timed([sys.executable, str(Path(__file__).resolve()), "--plain", str(data), "--backbone",
                      args.backbone], log_file)

    print(cpu_line(), flush=True)
    print(f"images={n} data={data} rounds={args.rounds} backbone={args.backbone} weights=none "
          f"log={log_file} weights/IR cache={env_note}", flush=True)
    if not args.no_warmup:
        featurize("warmup")
        plain()
    feat_s, plain_s, ratios, before_s, before_ratios = [], [], [], [], []
    for r in range(max(1, args.rounds)):
        if args.before_src:
            b = before(f"r{r}")
            before_s.append(b)
        f, p = featurize(f"r{r}"), plain()
        feat_s.append(f)
        plain_s.append(p)
        ratios.append(p / f)  # (n/f) / (n/p)
        extra = ""
        if args.before_src:
            before_ratios.append(p / b)
            extra = f"  before {b:.1f}s ({n / b:.1f} img/s, ratio {p / b:.3f})"
        print(f"round {r + 1}: featurize {f:.1f}s ({n / f:.1f} img/s)  plain {p:.1f}s ({n / p:.1f} img/s)  "
              f"ratio {p / f:.3f}{extra}  load {os.getloadavg()[0]:.2f}", flush=True)
    fm, pm = statistics.median(feat_s), statistics.median(plain_s)
    print(f"featurize_median_s={fm:.1f} featurize_img_per_s={n / fm:.1f} plain_median_s={pm:.1f} "
          f"plain_img_per_s={n / pm:.1f} ratio={statistics.median(ratios):.3f} (goal >= 0.85)")
    if args.before_src:
        bm = statistics.median(before_s)
        print(f"before_median_s={bm:.1f} before_img_per_s={n / bm:.1f} "
              f"before_ratio={statistics.median(before_ratios):.3f} (same plain runs; src {args.before_src})")


if __name__ == "__main__":
    main()
