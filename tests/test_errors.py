"""Which failures a scheduler should retry (exit 75): connection failures anywhere in the cause chain."""

from __future__ import annotations

import pytest
import requests

from xray_spark.errors import TransientError, UserError, is_transient, one_line


def _raised(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def test_connection_failures_below_any_wrapper_are_transient():
    def mlflow_like():
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded")
        except requests.exceptions.ConnectionError:
            raise RuntimeError("API request failed")  # noqa: B904 (the implicit context is the point)

    assert is_transient(_raised(mlflow_like))  # the implicit context: how MLflow wraps requests' error
    assert is_transient(TransientError("lease held"))
    assert is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError("x"))  # an OSError, but not a connection failure
    assert not is_transient(ValueError("bad"))


def test_a_deliberate_from_none_is_not_retried():
    def user_error():
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError:
            raise UserError("model x does not exist") from None

    assert not is_transient(_raised(user_error))


def test_one_line_keeps_the_first_line_only():
    assert one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert one_line(ValueError()) == "ValueError: "
