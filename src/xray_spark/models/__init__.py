"""What a trained model is made of, apart from fitting it.

- `pipeline`          the stage order MLflow stores and scoring loads (decode -> featurize -> head -> labels);
- `frames`            the labelled rows every model is fitted and measured on, and predictions on them;
- `metadata_baseline` the metadata-only shortcut baseline's feature pipeline;
- `shift`, `shift_stage`, `shift_report`, `drift`: the shift reference fitted at training time, the stages
  that carry it inside the saved pipeline, and how a run's shift and drift are worded;
- `calibration`, `calibration_stage`: the temperature that rescales a head's probabilities (fitted by NLL on
  out-of-fold predictions) and the Spark stages that fit it and carry it after the head (config section
  `calibration`, registered here);
- `loading`           resolve a model URI (before Spark starts), load it, split it around the featurizer;
- `head_export`, `heads_numpy`, `serving_bundle`, `serving_mlflow`: the Spark-free export of a trained
  pipeline (its head as numpy arrays, the bundle folder) and that bundle in MLflow.

Floor 3 of DESIGN.md's floors: may import the core, `data` and `features`; never `evaluation`, `finetune`,
`train`, `scoring`, `serving` or the CLI, which import from here.
"""
