"""`xray-spark train`: every backbone x MLlib head x task fitted on one persisted grouped split, compared with
95% intervals beside the metadata-only baseline, the comparison report written and each task's champion
registered in MLflow. `--heads finetune` trains a backbone end to end through `finetune`.

- `heads`    registry of MLlib heads (short name -> estimator);
- `fit`      fit one head on a task's train side, predict its test side;
- `calibrate` a fitted head's temperature from out-of-fold predictions of the training side;
- `compare`  every head x task on one feature set, measured; the champion choice (pure compute);
- `report`   the comparison table, its plot and report.md; `calibration_report` its calibration section;
- `options`  CLI arguments + config -> a validated TrainSpec;
- `run`      the command: featurize, fit, log to MLflow, write the report, register champions;
- `int8`     the int8 gate wired into the run: measured per model, recorded, int8 only for models that pass.

Floor 6 of DESIGN.md's floors: may import the core, `data`, `features`, `models`, `evaluation` and `finetune`.
"""
