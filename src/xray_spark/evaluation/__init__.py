"""Measuring a model on labelled data, one way everywhere.

- `metrics`                metrics with 95% intervals (bootstrap over groups, Wilson), numpy only;
- `report_parts`           a metric with its interval, markdown tables, the confusion plot, side by side;
- `reliability`            reliability diagrams and the ECE with and without a model's temperature;
- `leave_one_source_out`   which sources can be held out, and the split that holds one out;
- `external`               `xray-spark evaluate`: a registered model's metrics on any labelled folder;
- `int8_gate`, `int8_config` whether int8 features leave a model's held-out decisions unchanged (the gate
                           `train` runs, and its config section `int8`).

Floor 4 of DESIGN.md's floors: may import the core, `data`, `features` and `models`; `finetune`, `train`,
the demo and the CLI import from here.
"""
