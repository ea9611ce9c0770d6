"""spark-submit entry point: `spark-submit jobs/score.py ARGS` == `xray-spark score ARGS` (no logic here)."""

import sys

from xray_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
