"""Build src/xray_spark/features/imagenet_class_index.json from timm's ImageNet-1k synset files.

Why: Keras' `decode_predictions` downloads `imagenet_class_index.json` at run time, which air-gapped clusters
(and this project's CI) cannot do. timm (Apache-2.0, on PyPI) ships the 1000 WordNet ids in class order
(`timm/data/_info/imagenet_synsets.txt`) and each id's WordNet lemmas (`imagenet_synset_to_lemma.txt`).
The index maps class i to [wnid, first lemma with spaces as underscores], the shape of Keras' file.

    pip download --no-deps timm==1.0.31 -d /tmp/timm
    python scripts/build_imagenet_index.py /tmp/timm/timm-1.0.31-py3-none-any.whl
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "xray_spark" / "features" / "imagenet_class_index.json"
INFO = "timm/data/_info/"


def build(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        wnids = zf.read(INFO + "imagenet_synsets.txt").decode().split()
        lemmas = dict(line.split("\t", 1) for line in zf.read(INFO + "imagenet_synset_to_lemma.txt")
                      .decode().splitlines() if "\t" in line)
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise SystemExit("expected 1000 sorted WordNet ids")
    return {str(i): [w, lemmas[w].split(",")[0].strip().replace(" ", "_")] for i, w in enumerate(wnids)}


def main(argv: list[str]) -> int:
    index = build(Path(argv[1]))
    OUT.write_text(json.dumps(index, separators=(",", ":"), sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
