"""``python -m bnfold.service --repo models``: the server without the bnfold CLI."""

from __future__ import annotations

import typer

from .cli import serve

if __name__ == "__main__":
    typer.run(serve)
