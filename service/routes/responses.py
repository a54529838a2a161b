"""The error responses routes document: each status they send, with the
``{"error": "..."}`` body every error has (no 422: service/openapi.py)."""

from __future__ import annotations

from typing import Any

from ..protocol import ErrorBody

Responses = dict[int | str, dict[str, Any]]

# What routes about one model send; their .../versions/{version}/... twin
# can also be handed a version that is not one.
MODEL = {
    404: "Unknown model, or a version that is not served.",
    503: "Model not loaded or broken, or the server is starting.",
}
VERSION = {400: "A version that is not a positive integer."}


def errors(described: dict[int, str]) -> Responses:
    """OpenAPI ``responses`` for error statuses and what each one means."""
    return {
        status: {"model": ErrorBody, "description": text}
        for status, text in sorted(described.items())
    }
