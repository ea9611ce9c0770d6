"""spark-submit entry point: `spark-submit jobs/train.py ARGS` == `xray-spark train ARGS` (no logic here)."""

import sys

from xray_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
