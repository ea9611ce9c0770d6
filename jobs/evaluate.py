"""spark-submit entry point: `spark-submit jobs/evaluate.py ARGS` == `xray-spark evaluate ARGS` (no logic)."""

import sys

from xray_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
