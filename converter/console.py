"""The console every converter command writes to, and the one torch check."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from bnfold.converter.errors import InputError


def _make_console() -> Console:
    """stderr; in a pipe, a file or CI, lines are never broken to fit 80 columns."""
    if sys.stderr is not None and sys.stderr.isatty():
        return Console(stderr=True)
    # Text is not wrapped (soft_wrap); tables lay out within COLUMNS when it is
    # set, else within a width no table here reaches.
    width = None if os.environ.get("COLUMNS") else 1000
    return Console(stderr=True, soft_wrap=True, width=width)


console = _make_console()


def require_torch(command: str) -> None:
    """The serving image has no torch; say so instead of a traceback."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise InputError(
            f"`bnfold {command}` trains or exports with PyTorch, which is not installed here; "
            "install the train extra: pip install -c constraints.txt 'bnfold[train]' "
            "(fold, verify and serve work without it)"
        )
