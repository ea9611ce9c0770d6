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

# argv[1]: the commands as JSON; argv[2]: the prelude's Python code (its own step, exit code 0)
_DRIVER = f"""
import json, sys
from xray_spark.cli import main

def begin():
    for stream in (sys.stdout, sys.stderr):
        print({_MARK!r}, flush=True, file=stream)

begin()
exec(sys.argv[2])
print({_MARK!r} + " exit 0", flush=True)
for argv in json.loads(sys.argv[1]):
    begin()
    code = main(argv)
    print({_MARK!r} + " exit " + str(code), flush=True)
    if code:
        sys.exit(code)
"""


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
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argvs[1:]), prelude],
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

