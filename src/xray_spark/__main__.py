"""`python -m xray_spark` == the `xray-spark` console script."""

from xray_spark.cli import main

raise SystemExit(main())
