"""How an image becomes a model input for sparkdl's named-image stages: `colorMode` and `scaleHint`, and the
checks their Params run when a stage is built.

`colorMode`:
- `grey` (the featurizer's default, the X-ray path): decode.py's normalisation, one luminance channel
  stretched to 8 bits and replicated to RGB, resized by the one path every xray-spark model uses (PIL
  bilinear). `scaleHint` is checked but does not change the resize here: training, the feature cache, batch
  scoring and `xray-spark serve` all resize this way, so a stage can never resize differently from them.
- `RGB` (the predictor's default; sparkdl's behaviour): the image's own RGB pixels (data/colour.py), resized
  with the filter `scaleHint` names; an image already at the model's input size reaches it unchanged.

`scaleHint`, sparkdl's names for Java AWT's `Image.SCALE_*` hints, which its Scala featurizer passed to
`Image.getScaledInstance`; the JDK implements them with two filters, and so does this:
- `SCALE_AREA_AVERAGING` (default): area averaging, each output pixel the mean of the source area it covers
  (Pillow BOX, as Java's AreaAveragingScaleFilter);
- `SCALE_SMOOTH`: "smoothness over speed", which the JDK serves with area averaging: the same;
- `SCALE_REPLICATE`: pixel replication, each output pixel a copy of the source pixel under its centre
  (Pillow NEAREST, as Java's ReplicateScaleFilter);
- `SCALE_FAST`: "speed over smoothness", which the JDK serves with replication: the same;
- `SCALE_DEFAULT`: the JDK's default filter, replication: the same.
`SCALE_AREA_AVERAGE`, this package's spelling before sparkdl's, is accepted as an alias of
`SCALE_AREA_AVERAGING`, so saved pipelines and configs that carry it still load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xray_spark.data.colour import decode_rgb, image_struct_to_rgb, resize_rgb
from xray_spark.data.decode import decode_for_model, image_struct_to_gray, resize, to_rgb
from xray_spark.features.backbones import backbone_names

SCALE_HINTS: dict[str, str] = {  # sparkdl's scaleHint -> resize filter (data/colour.py RESIZE_FILTERS)
    "SCALE_AREA_AVERAGING": "area",
    "SCALE_DEFAULT": "nearest",
    "SCALE_FAST": "nearest",
    "SCALE_REPLICATE": "nearest",
    "SCALE_SMOOTH": "area",
}
SCALE_HINT_ALIASES = {"SCALE_AREA_AVERAGE": "SCALE_AREA_AVERAGING"}
COLOR_MODES = ("grey", "RGB")
_COLOR_SPELLINGS = {"grey": "grey", "gray": "grey", "l": "grey", "rgb": "RGB"}


def to_scale_hint(value: Any) -> str:
    """Param converter: a sparkdl scaleHint (or the alias), else ValueError when the stage is built."""
    hint = str(value)
    if hint not in SCALE_HINTS and hint not in SCALE_HINT_ALIASES:
        raise ValueError(f"scaleHint must be one of {', '.join(SCALE_HINTS)}, got {value!r}")
    return hint


def to_color_mode(value: Any) -> str:
    """Param converter: 'grey' (also 'gray', 'L') or 'RGB', any case, stored in that spelling."""
    mode = _COLOR_SPELLINGS.get(str(value).strip().lower())
    if mode is None:
        raise ValueError(f"colorMode must be one of {', '.join(COLOR_MODES)}, got {value!r}")
    return mode


def to_model_name(value: Any) -> str:
    """Param converter: a known backbone name (any case), else ValueError when the stage is built, as
    sparkdl refused it; the value is kept as given."""
    name = str(value)
    if name.strip().lower() not in {n.lower() for n in backbone_names()}:
        raise ValueError(f"modelName must be one of {', '.join(backbone_names())}, got {value!r}")
    return name


@dataclass(frozen=True)
class ImageInput:
    """Bytes or image-struct fields -> (size, size, 3) uint8 model input; picklable (shipped in the UDF)."""

    color_mode: str = "grey"
    scale_hint: str = "SCALE_AREA_AVERAGING"

    @property
    def resize_filter(self) -> str:
        return SCALE_HINTS[SCALE_HINT_ALIASES.get(self.scale_hint, self.scale_hint)]

    def from_bytes(self, data: bytes, size: int) -> np.ndarray:
        if self.color_mode == "grey":
            return decode_for_model(data, size)
        return resize_rgb(decode_rgb(data), size, self.resize_filter)

    def from_struct(self, height: int, width: int, n_channels: int, mode: int, data: bytes,
                    size: int) -> np.ndarray:
        if self.color_mode == "grey":
            return to_rgb(resize(image_struct_to_gray(height, width, n_channels, mode, data), size))
        return resize_rgb(image_struct_to_rgb(height, width, n_channels, mode, data), size,
                          self.resize_filter)
