"""Backbones, weights and their pinning, inference engines, the featurizer and its feature cache, and the
Spark ML Params every stage of the package declares once (params.py).

Floor 2 of DESIGN.md's floors: may import the core and `data`.

Only names that light modules need live here (the CLI builds `--engine`'s choices from ENGINES): this file
imports nothing, so `xray-spark --help` does not load numpy, pyspark or TensorFlow through it.
"""

ENGINES = ("auto", "keras", "openvino")  # inference engines (engines.py), `--engine` of `xray-spark serve`
