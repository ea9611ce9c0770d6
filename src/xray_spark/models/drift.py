"""Run-level drift: what moved between the training images and one scoring run, in one line a person reads.

Why beside the per-image score: a scheduled run over a folder from a new scanner flags image after image,
and nobody reads every row. The run adds up small tallies per chunk (counts per file format, colour mode and
bit depth; sums of log sizes; how many images were flagged, and how many for their features; how many images
fall in each decile bin of the training images' projections on the top principal components of the features)
and compares them with the training reference: a population stability index (PSI) per categorical property
and per top feature component, a robust z of the run's typical size per numeric property, the share flagged
against the 1% expected. One line gives every distance; above the configured level one warning line names
what moved ("file format JPEG 100% vs 11% in training", "feature component 1 PSI 0.41"). A shift is
information, never an error: the run still exits 0.

Pure functions; the tallies come from scoring/run.py (small aggregates per committed chunk).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xray_spark.models.shift import CATEGORICAL, DRIFT_BINS, NUMERIC, Reference, category

_PSI_EPS = 1e-4  # a share of 0 on either side: PSI is finite, and large


@dataclass
class Tally:
    """Mergeable counts of a run's scored images (status ok and with a shift check)."""

    n: int = 0
    flagged: int = 0
    by_features: int = 0  # flagged with "image features unlike the training images'" among the reasons
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {p: {} for p in CATEGORICAL})
    log_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(NUMERIC, 0.0))
    log_n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NUMERIC, 0))
    components: dict[int, list[int]] = field(default_factory=dict)  # top component -> images per drift bin

    def add(self, rows: Iterable[Mapping[str, object]]) -> Tally:
        """Add grouped rows: per (format, mode, bit_depth): n, flagged, by_features, and per numeric
        property `<prop>_log_sum` / `<prop>_log_n`."""
        for r in rows:
            n = int(r.get("n") or 0)
            self.n += n
            self.flagged += int(r.get("flagged") or 0)
            self.by_features += int(r.get("by_features") or 0)
            for prop in CATEGORICAL:
                key = category(r.get(prop))
                self.counts[prop][key] = self.counts[prop].get(key, 0) + n
            for prop in NUMERIC:
                self.log_sums[prop] += float(r.get(f"{prop}_log_sum") or 0.0)
                self.log_n[prop] += int(r.get(f"{prop}_log_n") or 0)
        return self


    def merge(self, other: Tally) -> Tally:
        """Add another tally (a committed chunk's) to this one."""
        self.n, self.flagged, self.by_features = (self.n + other.n, self.flagged + other.flagged,
                                                  self.by_features + other.by_features)
        for prop in CATEGORICAL:
            for key, count in other.counts[prop].items():
                self.counts[prop][key] = self.counts[prop].get(key, 0) + count
        for prop in NUMERIC:
            self.log_sums[prop] += other.log_sums[prop]
            self.log_n[prop] += other.log_n[prop]
        return self.add_components({"component": j, "bin": b, "n": c}
                                   for j, counts in other.components.items() for b, c in enumerate(counts))

    def add_components(self, rows: Iterable[Mapping[str, object]]) -> Tally:
        """Add (component, bin, n) rows (ShiftModel.component_counts)."""
        for r in rows:
            counts = self.components.setdefault(int(r["component"]), [0] * DRIFT_BINS)
            counts[int(r["bin"])] += int(r.get("n") or 0)
        return self


def psi(run: Mapping[object, float], train: Mapping[object, float]) -> float:
    """Population stability index of two distributions over categories (shares; missing = 0)."""
    total = 0.0
    for key in set(run) | set(train):
        p, q = max(run.get(key, 0.0), _PSI_EPS), max(train.get(key, 0.0), _PSI_EPS)
        total += (p - q) * math.log(p / q)
    return total


@dataclass(frozen=True)
class Drift:
    metrics: dict[str, float]  # for MLflow: drift/<name>
    moved: list[str]  # what moved past the limits, in words, largest first
    flagged_share: float


def sampling_psi(n_run: int, n_train: int, bins: int) -> float:
    """The PSI two samples of one distribution reach by chance ~1 time in 1000: PSI is about chi-square with
    bins - 1 degrees of freedom times (1/n_run + 1/n_train), so its mean plus 3 SD. Ten bins: 0.24 for 100
    images against 900, 0.75 for 30; a small run's PSI is mostly noise."""
    df = bins - 1
    return (df + 3.0 * math.sqrt(2.0 * df)) * (1.0 / max(n_run, 1) + 1.0 / max(n_train, 1))


def _component_psi(tally: Tally, ref: Reference, psi_limit: float) -> tuple[dict[str, float],
                                                                          list[tuple[float, str]]]:
    """PSI of the run's images over each top component's training decile bins (numbered from 1, largest
    component first), and in words the components above `psi_limit` and above what chance gives a run this
    size (`sampling_psi`: with ten bins a run of 20 images has PSI ~0.5 without any shift)."""
    metrics: dict[str, float] = {}
    moved: list[tuple[float, str]] = []
    for j, train in enumerate(ref.component_shares):
        counts = tally.components.get(j)
        if not counts or not sum(counts):
            continue
        run = {b: c / sum(counts) for b, c in enumerate(counts)}
        value = psi(run, dict(enumerate(train)))
        metrics[f"psi_component_{j + 1}"] = value
        limit = max(psi_limit, sampling_psi(sum(counts), ref.n_train, len(train)))
        if value > limit:
            moved.append((value / psi_limit, f"feature component {j + 1} PSI {value:.2f}"))
    return metrics, moved


def drift(tally: Tally, ref: Reference, psi_limit: float = 0.25, z_limit: float = 3.0,
          expected: float = 0.01) -> Drift:
    """The run against the training reference. `psi_limit` 0.25 is the usual "significant shift" level;
    `z_limit` applies to the robust z of the run's geometric-mean size; `expected` is the share of
    training-like images flagged (1 - the threshold's quantile)."""
    metrics: dict[str, float] = {}
    moved: list[tuple[float, str]] = []
    if tally.n == 0:
        return Drift(metrics, [], math.nan)
    share = tally.flagged / tally.n
    metrics["flagged_share"] = share
    metrics["flagged_for_features_share"] = tally.by_features / tally.n
    for prop in CATEGORICAL:
        run = {k: v / tally.n for k, v in tally.counts[prop].items()}
        train = ref.shares.get(prop, {})
        value = psi(run, train)
        metrics[f"psi_{prop}"] = value
        if value > psi_limit:
            top = max(run, key=lambda k: run[k] - train.get(k, 0.0))
            moved.append((value / psi_limit, f"{prop.replace('_', ' ')} {top} {run[top]:.0%} vs "
                                             f"{train.get(top, 0.0):.0%} in training (PSI {value:.2f})"))
    component_metrics, component_moved = _component_psi(tally, ref, psi_limit)
    metrics.update(component_metrics)
    moved += component_moved
    for prop in NUMERIC:
        if not tally.log_n[prop]:
            continue
        mean = tally.log_sums[prop] / tally.log_n[prop]
        z = abs(mean - ref.centers.get(prop, mean)) / ref.spreads.get(prop, 1.0)
        metrics[f"z_{prop}"] = z
        if z > z_limit:
            unit = " bytes" if prop == "file_size" else " px"
            moved.append((z / z_limit, f"typical {prop.replace('_', ' ')} {math.exp(mean):.0f}{unit} vs "
                                       f"{math.exp(ref.centers[prop]):.0f}{unit} in training"))
    if share > 3 * expected and share > 0.05:
        moved.append((share / (3 * expected), f"{share:.0%} of images unlike the training images "
                                              f"(~{expected:.0%} expected)"))
    return Drift(metrics, [m for _, m in sorted(moved, reverse=True)], share)


def distances_line(metrics: Mapping[str, float]) -> str | None:
    """Every distance of the run to the training images in one line: PSI per file property and per top
    feature component, robust z of each typical size."""
    m = metrics
    props = ", ".join(f"{p.replace('_', ' ')} {m[f'psi_{p}']:.2f}" for p in CATEGORICAL if f"psi_{p}" in m)
    comps = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in m.items() if k.startswith("psi_component_"))
    features = "feature components " + ", ".join(f"#{j} {v:.2f}" for j, v in comps) if comps else ""
    psis = "; ".join(part for part in (props, features) if part)
    zs = ", ".join(f"{p.replace('_', ' ')} {m[f'z_{p}']:.1f}" for p in NUMERIC if f"z_{p}" in m)
    parts = [f"PSI {psis}" if psis else "", f"robust z of the typical {zs}" if zs else ""]
    text = "; ".join(part for part in parts if part)
    return f"distance to the training images: {text}" if text else None


def drift_lines(d: Drift, n: int) -> list[str]:
    """The summary lines `score` prints."""
    if not n:
        return []
    lines = [f"unlike the training images: {round(d.flagged_share * n)} of {n} ({d.flagged_share:.0%})"]
    distances = distances_line(d.metrics)
    if distances:
        lines.append(distances)
    if d.moved:
        lines.append("shift warning: " + "; ".join(d.moved))
    return lines
