"""Reading a benchmark's data files row by row (NAB, SKAB): every error is a ``ValueError`` that names
the file, and the line where one is to blame.

>>> number("f.csv", 7, "2.5")
2.5
>>> number("f.csv", 7, "nan", what="value ")
Traceback (most recent call last):
    ...
ValueError: f.csv line 7: value 'nan' is not a finite number
"""

from __future__ import annotations

import math

import numpy as np


def unreadable(path, exc: Exception) -> ValueError:
    """The error for a file that cannot be opened or decoded (``OSError``, ``UnicodeDecodeError``, a
    parser's error)."""
    return ValueError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}")


def check_width(path, line: int, fields: list[str], width: int) -> None:
    """A row with as many fields as the header."""
    if len(fields) != width:
        raise ValueError(f"{path} line {line}: {len(fields)} fields, the header has {width}")


def time(path, line: int, text: str, unit: str) -> np.datetime64:
    """A ``YYYY-MM-DD HH:MM:SS[.ffffff]`` time at ``unit`` resolution."""
    try:
        return np.datetime64(text.strip().replace(" ", "T"), unit)
    except ValueError:
        raise ValueError(f"{path} line {line}: {text!r} is not a time (YYYY-MM-DD HH:MM:SS)") from None


def number(path, line: int, text: str, what: str = "") -> float:
    """A finite number (``what``: words before the value in the error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{path} line {line}: {what}{text!r} is not a finite number")
    return value
