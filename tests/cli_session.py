"""Several `xray-spark` commands in ONE fresh Python process (one JVM, one TensorFlow import), for the tests
whose point is a process unlike the suite's own: another pyspark, another default filesystem.

Each command runs through `xray_spark.cli.main`, exactly what the console script calls, so argument parsing,
exit codes and printed output are the user's; the commands share the session the first one starts (the CLI's
`get_spark` returns the active session), as they would in one notebook.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_MARK = "@@xray-spark-step@@"


def _drive(commands_json: str, prelude: str) -> None:
    """The subprocess's body: the prelude, then each command, with a marker line around each on both
    streams. Run as a file, not `python -c`: pyspark 4.3 takes a `__main__` without `__file__` for its own
    doctests and exits 0 at the first Spark Connect check (pyspark/sql/connect/utils.py)."""
    from xray_spark.cli import main

    def begin() -> None:
        for stream in (sys.stdout, sys.stderr):
            print(_MARK, flush=True, file=stream)

    begin()
    exec(prelude, {"__name__": "prelude"})
    print(f"{_MARK} exit 0", flush=True)
    for argv in json.loads(commands_json):
        begin()
        code = main(argv)
        print(f"{_MARK} exit {code}", flush=True)
        if code:
            sys.exit(code)


@dataclass
class Step:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli_steps(commands: Sequence[Sequence[str]], env: Mapping[str, str] | None = None,
                  timeout: float = 1200, prelude: str = "") -> list[Step]:
    """Run `prelude` (Python code, e.g. a probe that starts the session itself), then `commands` (argv lists
    without the program name) in order in one process; stop at the first non-zero exit code (asserted, with
    that step's stderr). Returns one Step for the prelude (argv []) then one per command."""
    argvs = [[], *(list(c) for c in commands)]
    proc = subprocess.run([sys.executable, __file__, json.dumps(argvs[1:]), prelude],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else None)
    outs = proc.stdout.split(_MARK + "\n")[1:]
    errs = proc.stderr.split(_MARK + "\n")[1:]
    steps = []
    for argv, out, err in zip(argvs, outs, errs, strict=False):
        body, _, code = out.rpartition(_MARK + " exit ")
        finished = bool(code.strip())
        steps.append(Step(argv, int(code) if finished else proc.returncode, body if finished else out, err))
    last = steps[-1] if steps else Step(["(start)"], proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 0 and len(steps) == len(argvs), (
        f"`{' '.join(last.argv) or 'prelude'}` exited {proc.returncode}:\n{last.stderr[-4000:]}")
    return steps


if __name__ == "__main__":
    _drive(sys.argv[1], sys.argv[2])
