"""spark-submit entry point: `spark-submit jobs/ingest.py ARGS` == `xray-spark ingest ARGS` (no logic
here)."""

import sys

from xray_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
