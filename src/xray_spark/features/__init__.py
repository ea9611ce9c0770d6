"""Backbones, weights and their pinning, inference engines (keras | openvino fp32/bf16/int8: the int8 model,
quantised by NNCF on a calibration sample drawn from the training split, in quantize.py, calibration.py and
calibrate.py), the featurizer (its int8 Params in int8_params.py) and its feature cache (keyed by precision:
cache_precision.py), and the Spark ML Params every stage of the package declares once (params.py).

Floor 2 of DESIGN.md's floors: may import the core and `data`.

Only names that light modules need live here (the CLI builds `--engine`'s choices from ENGINES): this file
imports nothing, so `xray-spark --help` does not load numpy, pyspark or TensorFlow through it.
"""

ENGINES = ("auto", "keras", "openvino")  # inference engines (engines.py), `--engine` of `xray-spark serve`
