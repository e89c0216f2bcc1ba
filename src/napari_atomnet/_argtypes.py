"""Argument types for the ``atomnet`` subcommands: one line of explanation for a bad value.

argparse turns an :class:`argparse.ArgumentTypeError` into ``atomnet <cmd>: error: argument
--x: <message>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["count", "fraction", "positive", "positive_int", "probability"]


def _integer(text: str, minimum: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
    return value


def _real(text: str, ok: Callable[[float], bool], words: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
    return value


def positive_int(text: str) -> int:
    """Parse a whole number ≥ 1."""
    return _integer(text, 1, "at least 1")


def count(text: str) -> int:
    """Parse a whole number ≥ 0."""
    return _integer(text, 0, "0 or more")


def positive(text: str) -> float:
    """Parse a finite number > 0."""
    return _real(text, lambda v: v > 0, "a positive number")


def fraction(text: str) -> float:
    """Parse a number in [0, 1)."""
    return _real(text, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def probability(text: str) -> float:
    """Parse a number strictly between 0 and 1."""
    return _real(text, lambda v: 0.0 < v < 1.0, "between 0 and 1")
