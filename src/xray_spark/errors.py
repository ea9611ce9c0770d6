"""Errors the CLI turns into one clear line and an exit code.

Exit codes: 0 success, 2 bad arguments/config/input location (a UserError), 1 anything else.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad arguments, config or input location: the user can fix it. The CLI exits 2 with one line."""


class ConfigError(UserError):
    """A config file or key is wrong; the message names the key and the file."""
