"""What a load reads before it changes anything: a model folder as one look
found it (``OnDisk``), and what the load will keep and open (``LoadPlan``,
made by ``Repository._plan``)."""

from __future__ import annotations

from dataclasses import dataclass

from bnfold.contract import ModelConfig, VersionPolicy

from .fingerprints import Fingerprint
from .model import ServedModel


@dataclass(frozen=True)
class OnDisk:
    """What one look at a model folder found (``Repository.look``)."""

    versions: list[int]
    refused: dict[str, str]  # folders that are not versions, and why
    outside: bool = False  # the model folder is a link out of the repository


@dataclass(frozen=True)
class LoadPlan:
    """What a load will do, decided before anything changes."""

    config: ModelConfig | None
    source: str
    config_print: Fingerprint
    policy: VersionPolicy
    keep: dict[int, ServedModel]  # serving, unchanged
    open: list[int]  # to open (new, changed, or the configuration changed)
    model_print: Fingerprint = ()  # the configuration's and every version's files
