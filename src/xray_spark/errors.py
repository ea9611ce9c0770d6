"""Errors the CLI turns into one clear line and an exit code a scheduler can act on.

Exit codes: 0 done; 2 the user must change something (a UserError: arguments, config, input location, a
model that does not exist); 75 (`EX_TEMPFAIL` from sysexits.h) an outage or a busy lease worth retrying
later (a TransientError, or a connection failure anywhere below: tracking server, registry, filesystem);
1 anything else.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RETRY = 75

# Exceptions that mean "could not reach it", by class name so this module imports nothing heavy: Python's
# own, requests' (MLflow's HTTP client) and urllib3's
_TRANSIENT_PY = {"ConnectionError", "ConnectionRefusedError", "ConnectionResetError",
                 "ConnectionAbortedError", "TimeoutError", "ConnectTimeout", "ReadTimeout", "Timeout",
                 "gaierror", "NewConnectionError", "MaxRetryError", "RemoteDisconnected"}
# ... and the JVM's, as they appear in a Py4JJavaError's text (Hadoop clients for HDFS, S3A, ABFS, DBFS)
_TRANSIENT_JAVA = ("java.net.ConnectException", "java.net.SocketTimeoutException",
                   "java.net.UnknownHostException", "java.net.NoRouteToHostException",
                   "org.apache.hadoop.ipc.RetriableException", "org.apache.hadoop.ipc.StandbyException",
                   "org.apache.hadoop.net.ConnectTimeoutException")


class UserError(Exception):
    """Bad arguments, config or input location: the user can fix it. The CLI exits 2 with one line."""


class ConfigError(UserError):
    """A config file or key is wrong; the message names the key and the file."""


class TransientError(Exception):
    """Nothing is wrong with the request, but it cannot be done now (outage, busy lease): exit 75."""


def is_transient(exc: BaseException) -> bool:
    """True if `exc` or anything it was raised from is a connection failure or a TransientError."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TransientError) or type(e).__name__ in _TRANSIENT_PY:
            return True
        if type(e).__name__ == "Py4JJavaError" and any(name in str(e) for name in _TRANSIENT_JAVA):
            return True
        todo.append(e.__cause__)
        if not e.__suppress_context__:  # `raise X from None` means the context is not the reason
            todo.append(e.__context__)
    return False


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`; for a Py4JJavaError the Java exception's own line (the Python one
    only says which JVM call failed)."""
    text = str(exc)
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            text = str(java.toString())
        except Exception:  # the JVM may be gone: keep the Python text
            pass
    lines = text.strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
