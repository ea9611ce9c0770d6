"""Serving one image at a time without Spark: the HTTP app and its page, the predictor (decode -> featurize ->
Spark-free head -> shift check), the heatmap, the MLflow pyfunc entry, and `xray-spark serve`.

Floor 7 of DESIGN.md's floors (beside `scoring`): may import the core, `data`, `features` and `models` (the
serving bundle, its export and the numpy heads live in `models`: `train` writes them). Nothing below imports
from here.
"""
