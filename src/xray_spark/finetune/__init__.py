"""Fine-tuning a backbone end to end across Spark barrier tasks.

config.py (settings, registered as config section `finetune`) -> data.py (the driver writes per-worker shards;
workers read theirs) -> distributed.py (barrier tasks launch one TensorFlow worker each) -> trainer.py (the
training loop in that worker, with checkpoints) ; export.py (the trained model as the Spark PipelineModel
every command accepts) ; run.py wires them for the CLI and tracks the result in MLflow.

Floor 5 of DESIGN.md's floors: may import the core, `data`, `features`, `models` and `evaluation`; `train`
(`--heads finetune`) imports from here.
"""
