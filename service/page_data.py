"""What the web page says about a version, in words: where it came from, and
its stored parity as rows a person reads.

Each writer records its proof in the manifest's ``parity`` (the contract's
``ParityReport`` verdict) with its comparisons beside it, in one of three
layouts:

- ``bnfold convert``: ``{"torch_vs_reference": Parity, "reference_vs_folded":
  Parity, "torch_vs_folded": Parity}``, one output (the logits);
- ``bnfold import`` and ``bnfold.convert_module``: ``{"reference_vs_folded":
  {output: Parity}}``, plus ``pytorch_vs_reference`` (the module's outputs)
  or ``original_vs_reference`` (the graph before ``--normalize`` put its
  normalisation in front), per output;
- a quantized version (docs/quantization.md): ``{"float32_vs_as_written:<output>":
  Parity, "torch_vs_as_served:<output>": Parity, ...}``.

:func:`parity_rows` reads all three (and a verdict without comparisons, as
older manifests have) into one list of rows, each with a label, the output
it compares when the version has several, and the numbers. A manifest is
repository data: anything that is not a number where one is expected is
left out, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from bnfold.contract import Manifest

Kind = Literal["converted", "imported", "module", "bnfold", "bare"]

# What each writer's comparison keys compare, as the page says it.
COMPARISONS = {
    "torch_vs_reference": "PyTorch vs reference.onnx",
    "reference_vs_folded": "reference.onnx vs model.onnx",
    "torch_vs_folded": "PyTorch vs model.onnx",
    "pytorch_vs_reference": "PyTorch module vs reference.onnx",
    "original_vs_reference": "original graph vs reference.onnx",
}
# The sides of a quantized version's gate (``<side>_vs_<how>:<output>``).
SIDES = {"float32": "float32 graph", "torch": "PyTorch"}
HOW = {"as_written": "as written", "as_served": "as served"}
NUMBERS = ("n_samples", "max_abs_error", "max_rel_error", "top1_agreement")

# A quantized version's gate thresholds (converter/quantize.py), as the page says them.
GATE_THRESHOLDS = {
    "max_rel_error": lambda x: f"max rel error ≤ {x:g}",
    "min_agreement": lambda x: f"top-1 agreement ≥ {x * 100:g}%",
    "max_accuracy_drop": lambda x: f"accuracy drop ≤ {x:g} pt",
}


def version_kind(manifest: Manifest | None) -> Kind:
    """How the version came to be: ``bnfold convert`` (trained here),
    ``bnfold import`` (an ONNX file), ``bnfold.convert_module`` (a PyTorch
    module), a manifest that does not say (``bnfold``), or no manifest at
    all (``bare``: a Triton repository's model.onnx as it is)."""
    if manifest is None:
        return "bare"
    source = manifest.source or {}
    if "module" in source:
        return "module"
    if manifest.training:
        return "converted"
    if source:
        return "imported"
    return "bnfold"


def parity_rows(
    parity: Mapping[str, Any] | None, precision: str | None = None
) -> list[dict[str, Any]]:
    """The stored comparisons of ``parity`` (a manifest's), one row each."""
    if not isinstance(parity, Mapping):
        return []
    rows: list[dict[str, Any]] = []
    comparisons = parity.get("comparisons")
    for key, value in comparisons.items() if isinstance(comparisons, Mapping) else []:
        if not isinstance(value, Mapping):
            continue
        base, _, output = str(key).partition(":")
        if _is_parity(value):  # convert's, or a quantized version's '<a>_vs_<b>:<output>'
            rows.append(_row(base, output or None, value, precision))
            continue
        for name, p in value.items():  # import's and convert_module's: per output
            if isinstance(p, Mapping) and _is_parity(p):
                rows.append(_row(base, str(name), p, precision))
    if not rows and _is_parity(parity):  # a verdict alone
        rows.append(_row("reference_vs_folded", None, parity, precision))
    if len({r.get("output") for r in rows}) <= 1:  # one output: its name says nothing
        for r in rows:
            r.pop("output", None)
    return rows


def comparison_label(key: str, precision: str | None = None) -> str:
    """``torch_vs_reference`` -> ``PyTorch vs reference.onnx``; a key no
    writer uses is shown with its words."""
    if key in COMPARISONS:
        return COMPARISONS[key]
    side, sep, how = key.partition("_vs_")
    if sep and side in SIDES and how in HOW:
        return f"{SIDES[side]} vs {precision or 'quantized'} model.onnx ({HOW[how]})"
    return key.replace("_vs_", " vs ").replace("_", " ")


def parity_notes(parity: Mapping[str, Any] | None) -> list[str]:
    """What the rows were and what held them, as the manifest records it."""
    if not isinstance(parity, Mapping):
        return []
    notes = []
    rtol = _number(parity.get("rtol"))
    if rtol is not None:
        notes.append(f"threshold {rtol:g} (max error relative to the output's scale)")
    heldout, random = _number(parity.get("n_heldout")), _number(parity.get("n_random"))
    if heldout is not None and random is not None:
        notes.append(f"{heldout:g} held-out + {random:g} random inputs")
    data = parity.get("data")
    if data == "generated":
        notes.append("on generated inputs")
    elif isinstance(data, str) and data:
        notes.append(f"on the rows of {data}")
    against = parity.get("against")
    if isinstance(against, str) and against:
        notes.append(f"against {against}")
    return notes


def quantization_facts(quantization: Any) -> dict[str, str]:
    """An int8 or fp16 version's calibration and its gate's thresholds, in
    words (the manifest's ``quantization``, docs/quantization.md); what is
    missing or not a number is left out."""
    if not isinstance(quantization, Mapping):
        return {}
    facts: dict[str, str] = {}
    calibration = quantization.get("calibration")
    if isinstance(calibration, Mapping) and isinstance(calibration.get("method"), str):
        words = [calibration["method"]]
        rows, batch = _number(calibration.get("rows")), _number(calibration.get("batch"))
        if rows is not None:
            words.append(f"on {rows:g} rows")
        if batch is not None:
            words.append(f"in batches of {batch:g}")
        if isinstance(calibration.get("data"), str) and calibration["data"]:
            words.append(f"({calibration['data']})")
        facts["calibration"] = " ".join(words)
    gate = quantization.get("gate")
    thresholds = gate.get("thresholds") if isinstance(gate, Mapping) else None
    if isinstance(thresholds, Mapping):
        said = []
        for key, words_of in GATE_THRESHOLDS.items():
            number = _number(thresholds.get(key))
            if number is not None:
                said.append(words_of(number))
        if said:
            facts["gate"] = ", ".join(said)
    return facts


def _is_parity(value: Mapping[str, Any]) -> bool:
    return _number(value.get("max_rel_error")) is not None or isinstance(value.get("passed"), bool)


def _row(
    key: str, output: str | None, p: Mapping[str, Any], precision: str | None
) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "label": comparison_label(key, precision)}
    if output is not None:
        row["output"] = output
    for name in NUMBERS:
        number = _number(p.get(name))
        if number is not None:
            row[name] = number
    if isinstance(p.get("passed"), bool):
        row["passed"] = p["passed"]
    return row


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value
