"""spark-submit entry point: `spark-submit jobs/featurize.py ARGS` == `xray-spark featurize ARGS` (no logic
here)."""

import sys

from xray_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["featurize", *sys.argv[1:]]))
