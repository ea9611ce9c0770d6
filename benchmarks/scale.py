"""Ingest scaling: wall time, duplicate grouping and driver memory from 10k to 100k synthetic images.

What it measures. `xray-spark ingest` is run as a user runs it (a subprocess, `--master local[2]`,
`--conf spark.driver.maxResultSize=64m`) on two generated data sets (default 10k and 100k images), and
reports per size: wall seconds, CPU seconds of the whole process tree, peak RSS of the Python driver and of
its JVM, how many planted copies ended up in the same group as their original, quarantined rows and groups.

Why. Ingest must scale with the data, not with the driver: per image the driver may hold only small
aggregates (a hash, an id), never thumbnails or pixel data. 100k 128x128 thumbnails are 1.6 GB; with
`maxResultSize=64m` any attempt to collect them fails loudly, and the driver's peak RSS shows what it did
hold. Wall time should grow near-linearly: `growth` = t(100k) / t(10k), goal <= 11 (10x the data plus a
little: the near-duplicate search is a banded self-join, not an all-pairs comparison). `copies_grouped`
checks that the de-duplication still finds the planted copies at scale: each copy is filed under a fresh
patient id, so only de-duplication can put it in its original's group.

The data (generated here, kept under --workdir and reused when size, seed and image size match):
  - distinct images: random smooth grayscale fields (multi-octave low-resolution noise upsampled bicubically,
    a random gradient, two soft dark "lung" ellipses); distinct pairs have pixel correlation far below 0.95
    and pHash distances around 32 bits (checked on a sample; a warning is printed if not);
  - ~1% near copies: 1-2 px shift with edge padding, +-3% contrast and brightness, mild gaussian noise.
    Every near copy is checked against its original as ingest will see it (decoded PNG, min-max stretch):
    Pearson r >= 0.97 and pHash Hamming <= 8, redrawn if not; generation fails if one cannot be made, so
    the benchmark measures ingest and not the generator;
  - ~0.5% exact copies: byte-identical files;
  - copies keep their original's label (class folder) but get a fresh patient id; file numbers are shuffled
    so nothing in a name or position gives a copy away.
Layout: WORKDIR/data-<N>/{covid,no_findings,pneumonia}/img-<k>.png + manifest.csv (path,label,source,
patient_id), WORKDIR/truth-<N>.csv (copy_rel_path,original_rel_path,kind) outside the data folder.
Each size is generated independently from (seed, N, image size): the 10k set is NOT a prefix of the 100k set.

Assumed ingest output: OUT/images/ is a Parquet dataset with columns rel_path (relative to --data, as in
the manifest; absolute paths or file: URIs under --data are made relative here), status ('ok' for usable
rows) and group_id (null for quarantined rows).

    python benchmarks/scale.py                          # 10k and 100k (generation: a few minutes, once)
    python benchmarks/scale.py --sizes 200,2000         # smoke test of the generator and the plumbing
    python benchmarks/scale.py --sizes 5000 --generate-only

Linux only (/proc). Key=value result lines go to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import cpu_line  # benchmarks/ is on sys.path when run as a script
from PIL import Image

log = logging.getLogger("benchmarks.scale")

GENERATOR_VERSION = 1  # bump when the images change: cached data sets are then regenerated
LABELS = ("covid", "no_findings", "pneumonia")
SOURCE = "synthetic-scale"
NEAR_SHARE, EXACT_SHARE = 0.01, 0.005
# Near copies must pass ingest's thresholds (phash_max_hamming 8, pixel_min_correlation 0.95) with margin.
NEAR_MIN_R, NEAR_MAX_HAMMING = 0.97, 8
DEDUP_MIN_R = 0.95
NEAR_TRIES = 8
CHUNK = 256  # images per generation task
POLL_S = 0.5
LOG_TAIL_LINES = 40
DISTINCT_SAMPLE = 400  # originals in the distinct-pairs check (~80k pairs)
NEAR_SAMPLE = 200  # near copies re-checked from disk (after generating, and when reusing a data set)


# --------------------------------------------------------------------------- synthetic images


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(a.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates in [-1, 1], built once per image size (read-only)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    y.flags.writeable = x.flags.writeable = False
    return y, x


def smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """One distinct chest-X-ray-like image: uint8 spanning 0..255 (ingest's stretch is identity)."""
    y, x = _grid(size)
    f = _upsample(rng.normal(size=(4, 4)), size) + 0.5 * _upsample(rng.normal(size=(8, 8)), size)
    f += 0.2 * _upsample(rng.normal(size=(16, 16)), size)
    theta = rng.uniform(0, 2 * np.pi)
    f += rng.uniform(0, 1.0) * (np.cos(theta) * x + np.sin(theta) * y)
    for _ in range(2):  # two soft dark ellipses, roughly where lungs would be (but anywhere)
        cx, cy = rng.uniform(-0.6, 0.6, 2)
        ax, ay = rng.uniform(0.15, 0.45, 2)
        f -= rng.uniform(0.3, 1.2) * np.exp(-(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2))
    f -= f.min()
    f *= 255.0 / f.max()
    return np.rint(f).astype(np.uint8)


_SHIFTS = [(1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2),
           (1, 1), (-1, 1), (1, -1), (-1, -1)]


def near_copy(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mild variant: 1-2 px shift (edge padding), +-3% contrast/brightness, gaussian noise (sd 0.5-2)."""
    dx, dy = _SHIFTS[rng.integers(len(_SHIFTS))]
    h, w = a.shape
    padded = np.pad(a.astype(np.float32), 2, mode="edge")
    s = padded[2 + dy:2 + dy + h, 2 + dx:2 + dx + w]
    s = (s - 128.0) * rng.uniform(0.97, 1.03) + 128.0 + rng.uniform(-0.03, 0.03) * 255.0
    s = s + rng.normal(0.0, rng.uniform(0.5, 2.0), s.shape)
    return np.clip(np.rint(s), 0, 255).astype(np.uint8)


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------- what ingest sees


def as_ingest_sees(path: Path) -> np.ndarray:
    """Decoded gray + the min-max stretch ingest applies (same formula: float32, rint, clip)."""
    with Image.open(path) as im:
        x = np.asarray(im.convert("L"), dtype=np.float32)
    mn, mx = float(x.min()), float(x.max())
    if mn == mx:
        raise ValueError(f"{path}: blank image")
    return np.clip(np.rint((x - mn) * (255.0 / (mx - mn))), 0, 255).astype(np.uint8)


def thumb128(gray: np.ndarray) -> np.ndarray:
    if gray.shape == (128, 128):
        return gray
    return np.asarray(Image.fromarray(gray).resize((128, 128), Image.Resampling.BILINEAR))


def phash64(gray: np.ndarray) -> int:
    import imagehash

    return int(str(imagehash.phash(Image.fromarray(gray))), 16)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(Pearson r of the 128x128 images, pHash Hamming distance) for two stretched gray images."""
    return pearson(thumb128(a), thumb128(b)), (phash64(a) ^ phash64(b)).bit_count()


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Item:
    index: int  # position in the plan; originals first, then near copies, then exact copies
    rel_path: str
    label: str
    patient_id: str
    kind: str  # original | near | exact
    source: int = -1  # plan index of the original, for copies


def _name_width(n: int) -> int:
    return max(6, len(str(n)))


def make_plan(n: int, seed: int, image_size: int) -> list[Item]:
    """Labels, patients (1-3 distinct images each), copies and shuffled file numbers, all from the seed."""
    rng = np.random.default_rng([seed, n, image_size, 0])
    n_near, n_exact = round(n * NEAR_SHARE), round(n * EXACT_SHARE)
    n_orig = n - n_near - n_exact
    if n_orig < 2:
        raise SystemExit(f"size {n} is too small")
    labels = rng.integers(0, len(LABELS), n)
    file_no = rng.permutation(n)
    width = _name_width(n)
    patients = np.empty(n, dtype=np.int64)
    order, pos, pid = rng.permutation(n_orig), 0, 0
    while pos < n_orig:  # originals in random order, cut into patients of 1-3 images
        k = int(rng.integers(1, 4))
        patients[order[pos:pos + k]] = pid
        pos, pid = pos + k, pid + 1
    sources = rng.choice(n_orig, n_near + n_exact, replace=False)
    patients[n_orig:] = np.arange(pid, pid + n_near + n_exact)  # every copy: a fresh patient
    pwidth = _name_width(pid + n_near + n_exact)

    items: list[Item] = []
    for i in range(n):
        kind = "original" if i < n_orig else ("near" if i < n_orig + n_near else "exact")
        src = -1 if kind == "original" else int(sources[i - n_orig])
        label = LABELS[labels[src if src >= 0 else i]]  # a copy keeps its original's class folder
        rel, patient = f"{label}/img-{file_no[i]:0{width}d}.png", f"p-{patients[i]:0{pwidth}d}"
        items.append(Item(i, rel, label, patient, kind, src))
    return items


# --------------------------------------------------------------------------- generation (worker side)


def _write_originals(task: tuple[str, int, int, int, list[tuple[int, str]]]) -> int:
    root, seed, n, size, batch = task
    for index, rel in batch:
        rng = np.random.default_rng([seed, n, size, 1, index])
        (Path(root) / rel).write_bytes(png_bytes(smooth_field(rng, size)))
    return len(batch)


def _write_near(task: tuple[str, int, int, int, int, str, str]) -> tuple[str, float, int, int]:
    """Make one near copy and check it against the original as ingest will see it; redraw if it fails."""
    root, seed, n, size, index, rel, src_rel = task
    original_path, copy_path = Path(root) / src_rel, Path(root) / rel
    original = as_ingest_sees(original_path)
    with Image.open(original_path) as im:
        raw = np.asarray(im.convert("L"))
    r, ham = float("nan"), 64
    for attempt in range(NEAR_TRIES):
        rng = np.random.default_rng([seed, n, size, 2, index, attempt])
        copy_path.write_bytes(png_bytes(near_copy(raw, rng)))
        r, ham = similarity(original, as_ingest_sees(copy_path))
        if r >= NEAR_MIN_R and ham <= NEAR_MAX_HAMMING:
            return rel, r, ham, attempt + 1
    return rel, r, ham, NEAR_TRIES + 1  # tries > NEAR_TRIES: failed; the caller aborts


def _batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for s in range(0, len(items), size):
        yield items[s:s + size]


# --------------------------------------------------------------------------- generation (main side)


@dataclass
class DataSet:
    n: int
    data_dir: Path
    truth_csv: Path
    marker: Path
    generated_s: float | None = None  # None: reused from an earlier run
    stats: dict[str, float] = field(default_factory=dict)


def size_tag(n: int) -> str:
    """10000 -> '10k', 2500 -> '2.5k', 200 -> '0.2k' (the key suffix in the output lines)."""
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n / 1000:g}k"


def dataset_paths(workdir: Path, n: int) -> DataSet:
    return DataSet(n, workdir / f"data-{n}", workdir / f"truth-{n}.csv", workdir / f"data-{n}.json")


def _marker_key(n: int, seed: int, image_size: int) -> dict[str, int]:
    return {"version": GENERATOR_VERSION, "n": n, "seed": seed, "image_size": image_size}


def is_cached(ds: DataSet, seed: int, image_size: int) -> bool:
    try:
        marker = json.loads(ds.marker.read_text())
    except (OSError, ValueError):
        return False
    same = all(marker.get(k) == v for k, v in _marker_key(ds.n, seed, image_size).items())
    return same and (ds.data_dir / "manifest.csv").is_file() and ds.truth_csv.is_file()


def generate(ds: DataSet, seed: int, image_size: int) -> None:
    """Write the images, manifest.csv, truth-<N>.csv and, last (a partial run is never reused), the marker."""
    t0 = time.perf_counter()
    ds.marker.unlink(missing_ok=True)
    shutil.rmtree(ds.data_dir, ignore_errors=True)
    for label in LABELS:
        (ds.data_dir / label).mkdir(parents=True)
    plan = make_plan(ds.n, seed, image_size)
    root = str(ds.data_dir)
    originals = [it for it in plan if it.kind == "original"]
    near = [it for it in plan if it.kind == "near"]
    exact = [it for it in plan if it.kind == "exact"]
    workers = os.cpu_count() or 1
    with mp.Pool(workers) as pool:
        tasks = [(root, seed, ds.n, image_size, [(it.index, it.rel_path) for it in b])
                 for b in _batches(originals, CHUNK)]
        done = 0
        for t, k in enumerate(pool.imap_unordered(_write_originals, tasks), 1):
            done += k
            if t % 40 == 0:
                log.info("data-%d: %d/%d distinct images", ds.n, done, len(originals))
        near_tasks = [(root, seed, ds.n, image_size, it.index, it.rel_path, plan[it.source].rel_path)
                      for it in near]
        log.info("data-%d: %d distinct images in %.1fs", ds.n, done, time.perf_counter() - t0)
        checks = pool.map(_write_near, near_tasks, chunksize=16)
    for it in exact:
        shutil.copyfile(ds.data_dir / plan[it.source].rel_path, ds.data_dir / it.rel_path)
    ds.stats = _near_stats(checks)
    _write_csvs(ds, plan)
    ds.generated_s = time.perf_counter() - t0
    counts = {"original": len(originals), "near": len(near), "exact": len(exact)}
    marker = {**_marker_key(ds.n, seed, image_size), "counts": counts, "seconds": round(ds.generated_s, 1),
              "workers": workers, "near_checks": ds.stats}
    ds.marker.write_text(json.dumps(marker, indent=2))
    log.info("data-%d: generated in %.1fs with %d workers (%s)", ds.n, ds.generated_s, workers, counts)


def _near_stats(checks: list[tuple[str, float, int, int]]) -> dict[str, float]:
    failed = [c for c in checks if c[3] > NEAR_TRIES]
    if failed:
        rel, r, ham, _ = failed[0]
        raise SystemExit(
            f"generator bug: {len(failed)} near copies could not be made within r >= {NEAR_MIN_R} and pHash "
            f"Hamming <= {NEAR_MAX_HAMMING} in {NEAR_TRIES} tries (e.g. {rel}: r={r:.4f}, hamming={ham}); "
            "the benchmark would measure the generator, not ingest"
        )
    if not checks:
        return {}
    rs, hams, tries = (np.array([c[i] for c in checks]) for i in (1, 2, 3))
    return {"near_min_r": round(float(rs.min()), 4), "near_max_hamming": int(hams.max()),
            "near_redrawn": int((tries > 1).sum()), "near_checked": len(checks)}


def _write_csvs(ds: DataSet, plan: list[Item]) -> None:
    with open(ds.data_dir / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source", "patient_id"])
        for it in sorted(plan, key=lambda i: i.rel_path):
            w.writerow([it.rel_path, it.label, SOURCE, it.patient_id])
    with open(ds.truth_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["copy_rel_path", "original_rel_path", "kind"])
        for it in plan:
            if it.kind != "original":
                w.writerow([it.rel_path, plan[it.source].rel_path, it.kind])


def read_truth(truth_csv: Path) -> list[tuple[str, str, str]]:
    with open(truth_csv, newline="") as f:
        return [(r["copy_rel_path"], r["original_rel_path"], r["kind"]) for r in csv.DictReader(f)]


def read_manifest_paths(data_dir: Path) -> list[str]:
    with open(data_dir / "manifest.csv", newline="") as f:
        return [r["path"] for r in csv.DictReader(f)]


# --------------------------------------------------------------------------- checks on the generated data


def check_copies(ds: DataSet, sample: int, seed: int) -> None:
    """Re-check copies from disk: a sample of near copies within thresholds, all exact copies identical."""
    truth = read_truth(ds.truth_csv)
    rng = np.random.default_rng(seed)
    near = [t for t in truth if t[2] == "near"]
    exact = [t for t in truth if t[2] == "exact"]
    pick = [near[i] for i in rng.choice(len(near), min(sample, len(near)), replace=False)]
    bad = []
    for copy_rel, orig_rel, _ in pick:
        r, ham = similarity(as_ingest_sees(ds.data_dir / orig_rel), as_ingest_sees(ds.data_dir / copy_rel))
        if not (r >= NEAR_MIN_R and ham <= NEAR_MAX_HAMMING):
            bad.append(f"{copy_rel}: r={r:.4f} hamming={ham}")
    for copy_rel, orig_rel, _ in exact:
        if (ds.data_dir / copy_rel).read_bytes() != (ds.data_dir / orig_rel).read_bytes():
            bad.append(f"{copy_rel}: not byte-identical to {orig_rel}")
    if bad:
        raise SystemExit(f"data-{ds.n}: {len(bad)} copies fail the generator's promise, e.g. {bad[:3]}")
    log.info("data-%d: %d near copies (sample) and %d exact copies re-checked", ds.n, len(pick), len(exact))


def check_distinct(ds: DataSet, sample: int, seed: int) -> dict[str, float]:
    """pHash distance and correlation of all pairs in a sample of distinct images; warn if they look alike."""
    truth = read_truth(ds.truth_csv)
    copies = {t[0] for t in truth} | {t[1] for t in truth}
    distinct = [p for p in read_manifest_paths(ds.data_dir) if p not in copies]
    rng = np.random.default_rng(seed + 1)
    pick = [distinct[i] for i in rng.choice(len(distinct), min(sample, len(distinct)), replace=False)]
    grays = [as_ingest_sees(ds.data_dir / p) for p in pick]
    hashes = np.array([phash64(g) for g in grays], dtype=np.uint64)
    thumbs = np.stack([thumb128(g).ravel() for g in grays]).astype(np.float64)
    iu = np.triu_indices(len(pick), 1)
    ham = np.array([int(v).bit_count() for v in (hashes[:, None] ^ hashes[None, :])[iu]])
    corr = np.corrcoef(thumbs)[iu]
    stats = {
        "pairs": len(ham), "median_hamming": float(np.median(ham)),
        "share_hamming_le8": float((ham <= 8).mean()),
        "max_r": float(corr.max()), "look_alike": int(((ham <= 8) & (corr >= DEDUP_MIN_R)).sum()),
    }
    log.info("data-%d distinct pairs: %s", ds.n, stats)
    if stats["share_hamming_le8"] > 0.01:
        log.warning("data-%d: %.1f%% of distinct pairs have pHash Hamming <= 8: many dedup candidates",
                    ds.n, 100 * stats["share_hamming_le8"])
    if stats["look_alike"] or stats["max_r"] >= DEDUP_MIN_R:
        log.warning("data-%d: %d distinct pairs would pass as near duplicates (max r %.3f)",
                    ds.n, stats["look_alike"], stats["max_r"])
    return stats


def prepare(workdir: Path, n: int, seed: int, image_size: int) -> DataSet:
    ds = dataset_paths(workdir, n)
    if is_cached(ds, seed, image_size):
        log.info("data-%d: reusing %s (same size, seed and image size)", n, ds.data_dir)
        check_copies(ds, NEAR_SAMPLE, seed)
    else:
        generate(ds, seed, image_size)
        check_copies(ds, NEAR_SAMPLE, seed)
        check_distinct(ds, DISTINCT_SAMPLE, seed)
    return ds


# --------------------------------------------------------------------------- /proc polling


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    comm: str
    cpu_s: float  # the process's own user + system time (children not included)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, ProcStat]:
    """pid -> ProcStat for every live process (from /proc/<pid>/stat)."""
    table: dict[int, ProcStat] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        head, _, rest = text.rpartition(")")
        fields = rest.split()  # state ppid ... utime(11) stime(12), 0-based from state
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        table[int(d.name)] = ProcStat(int(fields[1]), head.partition("(")[2], cpu)
    return table


def descendants(root: int, table: dict[int, ProcStat]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st.ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def peak_rss_kb(pid: int) -> int | None:
    """max(VmHWM, VmRSS) in kB; VmHWM is already the process's own peak. None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    vals = [int(line.split()[1]) for line in text.splitlines() if line.startswith(("VmHWM:", "VmRSS:"))]
    return max(vals) if vals else None


@dataclass
class Peaks:
    """Peak RSS (kB) per process by role, and CPU seconds per process of the ingest's tree.

    A pid's last readable values are kept after it exits. CPU is summed per process from the samples
    rather than taken from this process's cutime: pyspark never wait()s for its JVM, so the JVM's CPU (and
    that of the Python workers it reaps) never reaches our cutime. The last <= POLL_S of each process and
    processes shorter than POLL_S are missed: ingest_cpu_s is a slight underestimate.
    """

    driver: int = 0
    java: dict[int, int] = field(default_factory=dict)
    workers: dict[int, int] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)

    def sample(self, driver_pid: int) -> None:
        v = peak_rss_kb(driver_pid)
        if v is not None:
            self.driver = max(self.driver, v)
        table = _proc_table()
        for pid in [driver_pid, *descendants(driver_pid, table)]:
            st = table.get(pid)
            if st is None:
                continue
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), st.cpu_s)
            role = self.java if st.comm == "java" else self.workers if st.comm.startswith("python") else None
            if role is None or pid == driver_pid:
                continue
            v = peak_rss_kb(pid)
            if v is not None:
                role[pid] = max(role.get(pid, 0), v)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())


# --------------------------------------------------------------------------- running ingest


@dataclass
class IngestRun:
    n: int
    wall_s: float
    cpu_s: float  # summed per process from the samples: see Peaks
    peaks: Peaks
    out_dir: Path
    log_path: Path


def ingest_command(data_dir: Path, out_dir: Path, master: str) -> list[str]:
    return [sys.executable, "-m", "xray_spark", "ingest", "--data", str(data_dir), "--out", str(out_dir),
            "--master", master, "--conf", "spark.driver.maxResultSize=64m"]


def run_ingest(ds: DataSet, workdir: Path, master: str) -> IngestRun:
    """Fresh output folder, subprocess with its log in workdir, /proc polled every POLL_S while it runs."""
    out_dir, log_path = workdir / f"out-{ds.n}", workdir / f"ingest-{ds.n}.log"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = ingest_command(ds.data_dir, out_dir, master)
    log.info("ingest %d images: %s (log: %s)", ds.n, " ".join(cmd), log_path)
    peaks = Peaks()
    with open(log_path, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while True:
                peaks.sample(proc.pid)  # the exited child stays a zombie until wait() reaps it
                try:
                    proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:  # Ctrl-C or a polling bug: do not leave our ingest running (its JVM follows)
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(f"ingest of {ds.n} images failed (exit {proc.returncode}); end of {log_path}:\n")
        sys.stderr.write(log_tail(log_path, LOG_TAIL_LINES))
        raise SystemExit(1)
    return IngestRun(ds.n, wall, peaks.cpu_s, peaks, out_dir, log_path)


def log_tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) + "\n"


# --------------------------------------------------------------------------- reading ingest's output


@dataclass
class Outcome:
    grouped: int
    copies: int
    grouped_by_kind: dict[str, tuple[int, int]]
    quarantined: int
    groups: int
    rows: int


def normalize_rel(value: object, data_dir: Path) -> str | None:
    """The manifest-style relative path: tolerates absolute paths and file: URIs under data_dir."""
    if not isinstance(value, str):
        return None
    text = value
    if text.startswith("file:"):
        text = "/" + text[len("file:"):].lstrip("/")
    for root in {str(data_dir), str(data_dir.resolve())}:
        if text.startswith(root.rstrip("/") + "/"):
            return text[len(root.rstrip("/")) + 1:]
    return text


def read_outcome(run: IngestRun, ds: DataSet) -> Outcome:
    import pyarrow.parquet as pq

    table_dir = run.out_dir / "images"
    if not table_dir.exists():
        raise SystemExit(f"ingest output has no images/ table: {table_dir}")
    need = ["rel_path", "status", "group_id"]
    have = pq.ParquetDataset(str(table_dir)).schema.names
    missing = [c for c in need if c not in have]
    if missing:
        raise SystemExit(f"{table_dir}: missing column(s) {missing}; columns are {have}")
    df = pq.read_table(str(table_dir), columns=need).to_pandas()
    df["rel"] = [normalize_rel(v, ds.data_dir) for v in df["rel_path"]]
    group_of = df.drop_duplicates("rel").set_index("rel")["group_id"]
    grouped_by_kind: dict[str, tuple[int, int]] = {}
    for copy_rel, orig_rel, kind in read_truth(ds.truth_csv):
        g_copy, g_orig = group_of.get(copy_rel), group_of.get(orig_rel)
        same = isinstance(g_copy, str) and g_copy == g_orig
        hit, total = grouped_by_kind.get(kind, (0, 0))
        grouped_by_kind[kind] = (hit + int(same), total + 1)
    return Outcome(
        grouped=sum(h for h, _ in grouped_by_kind.values()),
        copies=sum(t for _, t in grouped_by_kind.values()),
        grouped_by_kind=grouped_by_kind,
        quarantined=int((df["status"] != "ok").sum()),
        groups=int(df["group_id"].nunique(dropna=True)),
        rows=len(df),
    )


# --------------------------------------------------------------------------- reporting


def emit(key: str, value: object) -> None:
    print(f"{key}={value}", flush=True)


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def report_size(run: IngestRun, outcome: Outcome, tag: str) -> None:
    emit(f"ingest_s_{tag}", f"{run.wall_s:.1f}")
    emit(f"ingest_cpu_s_{tag}", f"{run.cpu_s:.1f}")  # less sensitive than wall time to other load
    emit(f"copies_grouped_{tag}", f"{outcome.grouped}/{outcome.copies}")
    for kind, (hit, total) in sorted(outcome.grouped_by_kind.items()):
        emit(f"copies_grouped_{kind}_{tag}", f"{hit}/{total}")
    emit(f"rows_{tag}", outcome.rows)
    emit(f"quarantined_{tag}", outcome.quarantined)
    emit(f"groups_{tag}", outcome.groups)
    emit(f"driver_peak_rss_mb_{tag}", mb(run.peaks.driver))
    # In local mode the one JVM hosts the Spark driver AND the executors (all tasks run in its threads), so
    # this is driver + executor heap/off-heap, not the driver's share alone. The short-lived launcher JVM
    # that spark-submit starts first is also a `java` descendant; taking the max across them ignores it.
    emit(f"driver_jvm_peak_rss_mb_{tag}", mb(max(run.peaks.java.values(), default=0)))
    emit(f"python_worker_peak_rss_mb_{tag}", mb(max(run.peaks.workers.values(), default=0)))


def report_final(runs: list[IngestRun], outcomes: list[Outcome]) -> None:
    """Unsuffixed lines: growth between the first two sizes; the rest for the last (largest) size."""
    if len(runs) >= 2:
        growth = runs[1].wall_s / runs[0].wall_s
        emit("growth", f"{growth:.2f}")
        emit("growth_within_goal", "yes" if growth <= 11 else "no")
    last, out = runs[-1], outcomes[-1]
    emit("copies_grouped", f"{out.grouped}/{out.copies}")
    emit("quarantined", out.quarantined)
    emit("groups", out.groups)
    emit("driver_peak_rss_mb", mb(last.peaks.driver))
    emit("driver_jvm_peak_rss_mb", mb(max(last.peaks.java.values(), default=0)))  # JVM = driver + executors


# --------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 100:
        raise argparse.ArgumentTypeError("sizes must be integers >= 100")
    return sizes


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=parse_sizes, default=[10_000, 100_000], metavar="N,N",
                   help="data set sizes (default 10000,100000); growth compares the first two")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/xray-spark-scale"), metavar="DIR",
                   help="generated data (kept and reused), ingest outputs and logs")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="image side (default 128)")
    p.add_argument("--master", default="local[2]", help="Spark master for ingest (default local[2])")
    p.add_argument("--keep-output", action="store_true", help="keep WORKDIR/out-<N> after reading it")
    p.add_argument("--generate-only", action="store_true", help="generate and check the data sets, no ingest")
    return p.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    args = parse_args(argv)
    if args.image_size < 32:
        raise SystemExit("--image-size must be >= 32")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(cpu_line(), flush=True)
    datasets = []
    for n in args.sizes:
        ds = prepare(args.workdir, n, args.seed, args.image_size)
        emit(f"generate_s_{size_tag(n)}", "cached" if ds.generated_s is None else f"{ds.generated_s:.1f}")
        datasets.append(ds)
    if args.generate_only:
        return 0
    runs, outcomes = [], []
    for ds in datasets:
        run = run_ingest(ds, args.workdir, args.master)
        outcome = read_outcome(run, ds)
        report_size(run, outcome, size_tag(ds.n))
        runs.append(run)
        outcomes.append(outcome)
        if not args.keep_output:
            shutil.rmtree(run.out_dir, ignore_errors=True)
    report_final(runs, outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
