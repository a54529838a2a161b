"""What the repository knows of one model: a ``ModelEntry`` (Triton's
``ModelInfo``), with each version's state as a ``VersionState``.

Reasons come in full (the index, behind the token when one is set) and
generic (the public routes: docs/service.md, "Threat model")."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bnfold.contract import ModelConfig, VersionPolicy

from .fingerprints import Fingerprint
from .model import ServedModel

READY = "READY"
LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"
# What a public route says of a version that failed for a reason read from
# the repository's files (which may name files, paths and hashes).
FAILED = "failed to load (the repository index gives the reason)"
LOADING_REASON = "loading"


@dataclass(frozen=True)
class VersionState:
    """A version's state; ``reason`` in full, ``public`` for token-free routes
    (None: the reason itself is public, as the repository's own words are)."""

    state: str
    reason: str = ""
    public: str | None = None

    def said(self, detailed: bool) -> str:
        return self.reason if detailed or self.public is None else self.public


def failed(reason: str) -> VersionState:
    """A version refused for a reason read from its files."""
    return VersionState(UNAVAILABLE, reason, FAILED)


@dataclass
class ModelEntry:
    """Everything the repository knows of one model (Triton's ``ModelInfo``)."""

    name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    served: dict[int, ServedModel] = field(default_factory=dict)  # ascending
    versions: dict[int, VersionState] = field(default_factory=dict)  # every version tried
    loaded_from: dict[int, Fingerprint] = field(default_factory=dict)  # versions serving
    attempted: dict[int, Fingerprint] = field(default_factory=dict)  # every version tried
    config_from: Fingerprint | None = None  # the configuration serving
    config_seen: Fingerprint | None = None  # what --poll last looked at
    config_source: str = ""  # config.json, config.pbtxt, override, or none
    # A load request's configuration override, kept by plain loads (and polls)
    # until the model's files change after it (Triton's rule), and those files.
    override: ModelConfig | None = None
    override_print: Fingerprint | None = None
    policy: VersionPolicy = field(default_factory=VersionPolicy)  # as last read
    problem: VersionState | None = None  # a model that no version can fix
    expected: bool = False  # should serve (readiness)
    loads: int = 0  # loads planned or running (or, at startup, about to be)

    @property
    def highest(self) -> ServedModel | None:
        return self.served[next(reversed(self.served))] if self.served else None

    @property
    def folding(self) -> dict[int, Any]:
        """Fold on load's outcome of each version serving (those it ran on)."""
        return {v: m.folding for v, m in self.served.items() if m.folding is not None}

    def latest_state(self) -> VersionState | None:
        return self.versions[max(self.versions)] if self.versions else None

    def why_not(self) -> VersionState:
        """Why the model does not serve."""
        if self.loads and not self.served:
            return VersionState(LOADING, LOADING_REASON)
        return self.problem or self.latest_state() or VersionState(UNAVAILABLE, "not loaded")
