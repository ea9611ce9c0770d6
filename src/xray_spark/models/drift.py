"""Run-level drift: what moved between the training images and one scoring run, in one line a person reads.

Why beside the per-image score: a scheduled run over a folder from a new scanner flags image after image,
and nobody reads every row. The run adds up small tallies per chunk (counts per file format, colour mode and
bit depth; sums of log sizes; how many images were flagged, and how many for their features) and compares
them with the training reference: a population stability index (PSI) per categorical property, a robust z
of the run's typical size per numeric property, the share flagged against the 1% expected. Above the
configured level one warning line names what moved ("file format JPEG 100% vs 11% in training"). A shift
is information, never an error: the run still exits 0.

Pure functions; the tallies come from scoring/run.py (one small aggregate per committed chunk).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xray_spark.models.shift import CATEGORICAL, NUMERIC, Reference, category

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


def psi(run: Mapping[str, float], train: Mapping[str, float]) -> float:
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


def drift_lines(d: Drift, n: int) -> list[str]:
    """The summary lines `score` prints."""
    if not n:
        return []
    lines = [f"unlike the training images: {round(d.flagged_share * n)} of {n} ({d.flagged_share:.0%})"]
    if d.moved:
        lines.append("shift warning: " + "; ".join(d.moved))
    return lines
