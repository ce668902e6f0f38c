"""What the command line accepts: argparse ``type=`` functions for numbers, the checks
of output and input paths made before any work starts, and the help formatter.

A bad number is refused by argparse itself (one line, exit status 2):

>>> positive_int("3")
3
>>> positive_int("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be a positive integer, got '0'
>>> non_negative_float("0")
0.0
>>> positive_float("nan")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be a positive finite number, got 'nan'
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile


class CliError(Exception):
    """A problem the command line reports as one line on stderr (no traceback) and
    exits with ``status`` (2: a bad option, 1: a failure while working)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.message = message
        self.status = status


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _number(text: str, low: float, strict: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (epochs, batch size, repeats, runs)."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    return _integer(text, 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    return _number(text, 0.0, True, "a positive finite number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (seconds of budget or waiting)."""
    return _number(text, 0.0, False, "a non-negative finite number")


def writable_dir(path: str, option: str = "--out") -> str:
    """Make sure results can be written under the directory ``path``: create it when
    absent and write (then remove) a temporary file in it. Raises CliError (status 2)
    naming ``option``, the path and the reason otherwise; returns ``path``.

    >>> import tempfile, os
    >>> d = os.path.join(tempfile.mkdtemp(), "new", "run")
    >>> writable_dir(d) == d and os.path.isdir(d)
    True
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{option} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise CliError(f"{option} {path}: cannot create it or write in it "
                       f"({e.strerror or e})") from None
    return path


def writable_file(path: str, option: str) -> str:
    """Make sure the file ``path`` can be written: not a directory, and its directory
    (created when absent) writable. Raises CliError (status 2); returns ``path``."""
    if os.path.isdir(path):
        raise CliError(f"{option} {path}: is a directory; give a file path")
    writable_dir(os.path.dirname(path) or ".", option=f"{option} {path}: directory")
    return path


def readable_file(path: str, option: str) -> str:
    """Make sure ``path`` is a file this process can read; CliError (status 2) if not."""
    if not os.path.exists(path):
        raise CliError(f"{option} {path}: no such file")
    if not os.path.isfile(path):
        raise CliError(f"{option} {path}: not a file")
    if not os.access(path, os.R_OK):
        raise CliError(f"{option} {path}: not readable (permission denied)")
    return path


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter that appends "(default: ...)" to every option's help,
    except for flags (default False), options without a default (None, explained in
    the help text) and help texts that already say their default."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if (action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or "(default" in help_text):
            return help_text
        shown = action.default
        if isinstance(shown, list | tuple):
            shown = " ".join(map(str, shown))
        return f"{help_text} (default: {str(shown).replace('%', '%%')})".lstrip()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser using :class:`HelpFormatter` unless told otherwise (the
    subcommands' parsers are made with it too)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
