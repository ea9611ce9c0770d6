"""The steps notebooks/*.ipynb call, one module per notebook: each notebook cell is one call here.

Why here and not code in cells: notebooks hold no logic, because notebooks are hard to test and review;
these functions are imported, linted and exercised by tests/test_notebooks.py like the rest of the package.

- `common`: what more than one notebook uses: `start` (config + SparkSession + logging), `load_dataset`
  (the ingested images table), the label colours, and pyplot-free figures.
- `dataset`: 01_dataset.ipynb (class counts, samples, duplicate groups, the metadata shortcut).
- `features`: 02_features.ipynb (`feature_table`: backbone features per image; their 2-D map).
- `results`: 03_results.ipynb (runs, champions and confusion matrices read back from MLflow).

Floor 8 of DESIGN.md's floors (beside the demo): may import every package but the CLI.
"""
