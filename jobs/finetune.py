"""spark-submit entry point: `spark-submit jobs/finetune.py ARGS` == `xray-spark finetune ARGS` (no logic
here)."""

import sys

from xray_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
