"""The two classification tasks and their fixed label order.

Why fixed order (not StringIndexer): label indices must mean the same thing in every run, head and backbone,
so MLflow models, confusion matrices and scoring outputs line up. COVID is the positive class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xray_spark.errors import UserError


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]  # index i <-> labels[i]
    positive: str = "covid"
    description: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def index_of(self, label: str) -> int:
        return self.labels.index(label)


TASKS: dict[str, Task] = {
    "binary": Task("binary", ("no_findings", "covid"), description="COVID-19 vs No-findings"),
    "multiclass": Task(
        "multiclass", ("covid", "no_findings", "pneumonia"),
        description="COVID-19 vs No-findings vs Pneumonia"
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def parse_list(value: str | list[str] | None, known: list[str], what: str) -> list[str]:
    """'a,b' -> ['a', 'b'], each checked against `known` (case-insensitive), order kept, no duplicates."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [v for v in value.split(",")]
    lookup = {k.lower(): k for k in known}
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item.lower() not in lookup:
            raise UserError(f"unknown {what} {item!r}; known: {', '.join(known)}")
        if lookup[item.lower()] not in out:
            out.append(lookup[item.lower()])
    if not out:
        raise UserError(f"no {what} given")
    return out


def prob_suffix(label: str) -> str:
    """A class label as a column-name suffix (`prob_<suffix>` in scoring output and served predictions)."""
    return re.sub(r"[^a-z0-9]+", "_", str(label).lower()).strip("_") or "class"
