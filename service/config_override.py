"""A load request's configuration override (Triton's ``parameters.config``).

``POST /v2/repository/models/{m}/load`` with ``{"parameters": {"config":
"<JSON>"}}``, or gRPC ``RepositoryModelLoad`` with ``parameters["config"]``,
loads the model with that configuration instead of its folder's. The JSON
is Triton's model configuration (``model_config.proto`` in protobuf's JSON
form, snake_case or lowerCamelCase keys), parsed against Triton's schema,
so a key Triton does not know is refused as Triton refuses it.

As in Triton, what the override leaves out is taken from the model's
current configuration (the one serving, else the folder's): an override of
``{"max_batch_size": 4}`` keeps the inputs, outputs, batching and labels.
When the override turns batching on or off without listing the inputs or
outputs, those are completed from the graph again (their dims change rank).

Everything is checked before anything changes: JSON and schema here, the
contract's rules (``from_proto``), then the graph itself when the versions
load; any failure is a 400 and the versions serving keep serving. As in
Triton, the override lasts until the model's files change after it: a
later load without one (or a look of ``--poll``) keeps serving it while
the folder's configuration and versions are as they were
(``Repository._plan``), and goes back to the folder once they changed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from bnfold.contract import PBTXT_FILE, ContractError, ModelConfig

from .errors import BadRequest, FilesRefused, LoadFailed, NotFound, Unavailable
from .model import ServedModel
from .model_config import read_model_config
from .proto import model_config_pb2 as mc
from .repository import Repository, valid_name
from .triton_config import from_proto

WHERE = "parameters.config"
# A model configuration nests a few levels (input -> reshape -> shape); far
# deeper is an attack on the parser's recursion (a RecursionError, a 500).
MAX_DEPTH = 32
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# Triton's top-level keys -> the ModelConfig fields they set.
MERGED = {
    "max_batch_size": ("max_batch_size",),
    "input": ("input",),
    "output": ("output", "labels"),
    "dynamic_batching": ("dynamic_batching",),
    "version_policy": ("version_policy",),
    "instance_group": ("instance_group",),
    "parameters": ("parameters", "fold_on_load"),
    "optimization": ("optimization",),
    "model_warmup": ("model_warmup",),
}


def _keys(data: dict[str, Any]) -> set[str]:
    """The top-level fields an override names, as model_config.proto's names."""
    descriptor = mc.ModelConfig.DESCRIPTOR
    names = set()
    for key in data:
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is not None:
            names.add(field.name)
    return names


def nesting(text: str) -> int:
    """How deep the arrays and objects of JSON ``text`` nest, strings aside
    (counted without parsing, so without recursion)."""
    codes = np.frombuffer(_STRING.sub("", text).encode(), dtype=np.uint8)
    if not codes.size:
        return 0
    opens = (codes == ord("{")) | (codes == ord("["))
    closes = (codes == ord("}")) | (codes == ord("]"))
    return int(np.cumsum(opens.astype(np.int64) - closes).max(initial=0))


def parse_override(text: object, model_dir: Path, root: Path) -> tuple[ModelConfig, set[str]]:
    """The override as a contract ModelConfig and the fields it names."""
    if isinstance(text, dict):  # a JSON object where Triton sends its text
        try:
            text = json.dumps(text)
        except (RecursionError, ValueError):
            raise BadRequest(f"{WHERE} is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(text, str):
        raise BadRequest(f"{WHERE} must be a JSON model configuration (a string)")
    if nesting(text) > MAX_DEPTH:
        raise BadRequest(f"{WHERE} is nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text)
    except RecursionError:  # unreachable after the depth check: kept as a guard
        raise BadRequest(f"{WHERE} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise BadRequest(f"{WHERE} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{WHERE} must be a JSON object (a model configuration)")
    try:
        message = json_format.ParseDict(data, mc.ModelConfig())
    except json_format.ParseError as e:
        raise BadRequest(f"{WHERE} is not a valid model configuration: {e}") from None
    try:
        config = from_proto(message, model_dir=model_dir, root=root)
    except ContractError as e:
        raise BadRequest(str(e).replace(PBTXT_FILE, WHERE)) from None
    return config, _keys(data)


def merge(base: ModelConfig | None, override: ModelConfig, keys: set[str]) -> ModelConfig:
    """``override``'s named fields over ``base`` (Triton's merge)."""
    if base is None:
        base = ModelConfig(name=override.name)
    changes: dict[str, Any] = {}
    for key in keys:
        for field in MERGED.get(key, ()):
            changes[field] = getattr(override, field)
    if "output" in keys and not override.labels:
        changes.pop("labels", None)  # outputs restated without label_filename: labels stay
    flips = (base.max_batch_size > 0) != (changes.get("max_batch_size", base.max_batch_size) > 0)
    if flips:  # the dims change rank: the graph completes what the override did not restate
        changes.setdefault("input", [])
        changes.setdefault("output", [])
    try:
        return dataclasses.replace(base, **changes)
    except ContractError as e:
        raise BadRequest(f"{WHERE}: {e}") from None


def current_config(repo: Repository, name: str) -> ModelConfig | None:
    """The configuration of the version serving ``name``, else its folder's."""
    served: ServedModel | None
    try:
        served = repo.get(name)
    except (NotFound, Unavailable):
        served = None
    if served is not None:
        return served.config
    try:
        return read_model_config(repo.root / name, repo.root)[0]
    except (ContractError, ValueError):
        return None  # a broken file: the override replaces it


async def load(repo: Repository, name: str, params: dict[str, Any]) -> ServedModel:
    """A load request with Triton's parameters (``config``; ``file:`` refused).
    Every refusal reads as Triton's: ``failed to load 'NAME', <reason>``;
    in model control modes none and poll the request itself is refused."""
    repo.check_control()
    files = sorted(k for k in params if k.startswith("file:"))
    if files:
        shown = ", ".join(f if len(f) <= 40 else f[:37] + "..." for f in files)
        raise FilesRefused(
            f"failed to load {name!r}, failed to poll from model repository: file overrides "
            f"({shown}) are not supported; write the model into the repository and load it "
            "by name"
        )
    text = params.get("config")
    if text is None:
        return await repo.load(name)
    if not valid_name(name) or not (repo.root / name).is_dir():
        return await repo.load(name)  # its own refusal of an unknown model
    try:
        override, keys = parse_override(text, repo.root / name, repo.root)
        config = merge(current_config(repo, name), override, keys)
    except BadRequest as e:
        raise LoadFailed(f"failed to load {name!r}, {e.message}") from None
    return await repo.load(name, config=config)
