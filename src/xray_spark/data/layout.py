"""Where an ingest's outputs live: the one place that knows the folder layout (ingest writes it; featurize,
train, demo and notebooks read it). Paths are qualified URIs, so the folder may be on any Hadoop scheme."""

from __future__ import annotations

from dataclasses import dataclass

from xray_spark import paths

INGEST_SUBDIR = "ingest"  # under a command's --out, when a raw data folder is ingested on the way


@dataclass(frozen=True)
class IngestLayout:
    root: str

    @classmethod
    def under(cls, out_dir: str) -> IngestLayout:
        """The ingest folder that `train`, `featurize` and `demo` create under their --out."""
        return cls(paths.join(out_dir, INGEST_SUBDIR))

    def _at(self, name: str) -> str:
        return paths.join(self.root, name)

    @property
    def images(self) -> str:
        """Parquet: one row per file read (ok and quarantined), with group, fold and split."""
        return self._at("images")

    @property
    def split_csv(self) -> str:
        return self._at("split.csv")

    @property
    def quarantine_csv(self) -> str:
        return self._at("quarantine.csv")

    @property
    def summary_json(self) -> str:
        return self._at("summary.json")

    @property
    def duplicates(self) -> str:
        return self._at("duplicates")

    @property
    def work(self) -> str:
        """Scratch space of one ingest (decoded thumbnails); `_` hides it from Spark readers."""
        return self._at("_work")
