"""`component_io.number_argument`: the argument check every method and control shares."""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
from component_io import number_argument  # noqa: E402


@pytest.mark.parametrize("given, kind, bounds, expected", [
    (None, int, {"low": 1}, 10),                      # unset: the default
    (3, int, {"low": 1}, 3),
    (0.0, float, {"low": 0.0}, 0.0),
    (0.5, float, {"low": 0.0, "high": 1.0, "high_open": True}, 0.5),
    (1, float, {"low": 0.0}, 1.0),                    # an integer is a number
])
def test_accepted_values(given, kind, bounds, expected):
    value = number_argument({"x": given}, "x", 10 if kind is int else 0.0, kind, **bounds)
    assert value == expected and type(value) is kind


@pytest.mark.parametrize("given, kind, bounds, message", [
    (0, int, {"low": 1}, "--x is 0, expected an integer >= 1"),
    (2.5, int, {"low": 1}, "--x is 2.5, expected an integer >= 1"),
    (True, int, {"low": 0}, "--x is True, expected an integer >= 0"),
    (float("nan"), float, {"low": 0.0}, "--x is nan, expected a number >= 0.0"),
    (1.0, float, {"low": 0.0, "high": 1.0, "high_open": True}, "--x is 1.0, expected a number >= 0.0 and < 1.0"),
    ("7", int, {}, "--x is '7', expected an integer"),
])
def test_refused_values_stop_with_one_line(capsys, given, kind, bounds, message):
    with pytest.raises(SystemExit) as stop:
        number_argument({"x": given}, "x", 1, kind, **bounds)
    assert stop.value.code == 1
    assert capsys.readouterr().err == f"[error] {message}\n"
