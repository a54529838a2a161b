"""The Open Inference Protocol (KServe V2), REST flavour, as pydantic models.

Docstrings quote the protocol's JSON shapes. These models document the API
(``/docs``) and validate the small bodies; the inference hot path decodes
tensors straight into numpy (``codec.py``) instead of validating a pydantic
object per element.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from bnfold.contract import DATATYPES

SERVER_NAME = "bnfold"
try:
    SERVER_VERSION = metadata.version("bnfold")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    SERVER_VERSION = "0+unknown"

# What ``GET /v2`` and gRPC's ServerMetadata announce.
EXTENSIONS = [
    "binary_tensor_data",
    "parameters",
    "model_repository",
    "model_configuration",
    "statistics",
    "classification",
    "system_shared_memory",
    "trace",
    "logging",
    "bnfold_parity",
    "bnfold_classify",
]

# Open Inference Protocol datatype -> numpy dtype: the contract's table.
DATATYPE_OF: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DATATYPES.items()}

# Triton's model configuration spells datatypes with a TYPE_ prefix, and
# BYTES as TYPE_STRING.
TRITON_DATATYPES: dict[str, str] = {
    name: "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}" for name in DATATYPES
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class ServerMetadata(_Model):
    """``$metadata_server_response = {"name": $string, "version": $string,
    "extensions": [$string, ...]}``"""

    name: str
    version: str
    extensions: list[str]
    parameters: dict[str, Any] = Field(default_factory=dict)


class TensorMetadata(_Model):
    """``$metadata_tensor = {"name": $string, "datatype": $string,
    "shape": [$number, ...]}``; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Model):
    """``$metadata_model_response = {"name": $string, "versions": [$string, ...],
    "platform": $string, "inputs": [$metadata_tensor, ...],
    "outputs": [$metadata_tensor, ...]}``"""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class RequestInput(_Model):
    """``$request_input = {"name": $string, "shape": [$number, ...],
    "datatype": $string, "parameters": $parameters, "data": $tensor_data}``

    ``data`` is flat or nested row-major; with the binary extension it is
    absent and ``parameters.binary_data_size`` gives the byte count."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(_Model):
    """``$request_output = {"name": $string, "parameters": $parameters}``;
    ``parameters.binary_data`` asks for this output in binary."""

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(_Model):
    """``$inference_request = {"id": $string, "parameters": $parameters,
    "inputs": [$request_input, ...], "outputs": [$request_output, ...]}``

    ``parameters.binary_data_output`` asks for every output in binary;
    ``parameters.timeout`` (microseconds) shortens the server's timeout."""

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] = Field(default_factory=list)


def _absent(schema: dict[str, Any]) -> None:
    """A response field the server leaves out when it has no value: no
    default (and no null) in the schema."""
    schema.pop("default", None)


class ResponseOutput(_Model):
    """``$response_output = {"name": $string, "shape": [$number, ...],
    "datatype": $string, "parameters": $parameters, "data": $tensor_data}``

    ``data`` is absent for an output returned in binary (its
    ``parameters.binary_data_size`` bytes follow the JSON)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_absent)


class InferenceResponse(_Model):
    """``$inference_response = {"model_name": $string, "model_version": $string,
    "id": $string, "parameters": $parameters, "outputs": [$response_output, ...]}``

    ``id`` echoes the request's ``id``, as the protocol asks; it is absent
    when the request had none."""

    model_name: str
    model_version: str
    id: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_absent)
    outputs: list[ResponseOutput]


class ErrorBody(_Model):
    """``$inference_error_response = {"error": $string}``; every error, every route."""

    error: str


class RepositoryIndexRequest(_Model):
    """``{"ready": $boolean}``: only models ready for inference when true."""

    ready: bool = False

    @field_validator("ready", mode="before")
    @classmethod
    def _a_json_boolean(cls, value: object) -> object:
        if not isinstance(value, bool):  # Triton's words; pydantic would take "yes" or 1
            raise PydanticCustomError("bool", "Invalid value for 'ready': expected a boolean")
        return value


class RepositoryModel(_Model):
    """``{"name": $string, "version": $string, "state": $string, "reason": $string}``;
    ``version`` is absent for a model folder without any version."""

    name: str
    version: str | None = None
    state: str
    reason: str = ""


class LoadRequest(_Model):
    """``{"parameters": $parameters}``; on load, ``parameters.config`` is a
    model configuration override (Triton's JSON, as a string)."""

    parameters: dict[str, Any] = Field(default_factory=dict)


class PredictRequestV1(_Model):
    """KServe V1: ``{"instances": [<row>, ...]}``; a row is a nested list, or
    ``{"<input name>": <value>, ...}`` for models with several inputs."""

    instances: list[Any]


class PredictResponseV1(_Model):
    """KServe V1: ``{"predictions": [<row>, ...]}``."""

    predictions: list[Any]


class ParityRequest(_Model):
    """``POST /v2/models/{m}/parity``: V2 ``inputs`` to run through both graphs,
    or ``n`` inputs drawn from N(0, 1) with ``seed``."""

    inputs: list[RequestInput] = Field(default_factory=list)
    n: Annotated[int, Field(ge=1)] = 64
    seed: int = 0
    rtol: Annotated[float | None, Field(gt=0)] = None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with every ``$ref`` inlined (for ``openapi_extra``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
