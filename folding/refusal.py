"""A refusal: the value a check returns when a fold does not apply, with the reason.

Refusals are expected outcomes, never exceptions; the search collects their
reasons into the fold report (``BNOutcome.reasons``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    reason: str
