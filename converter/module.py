"""``bnfold.convert_module``: any PyTorch module into the repository, every BN folded.

The module is exported in eval mode with every BN kept (the
BatchNormalization count is checked against its BN layers), folded, and
verified three ways before anything is written: PyTorch eval vs
``reference.onnx`` vs ``model.onnx``, on the data given and on generated
rows. Needs torch (the ``train`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnfold.contract import DEFAULT_MAX_BATCH_SIZE, DEFAULT_RTOL
from bnfold.converter.errors import InputError
from bnfold.converter.export import INPUT_NAME, OUTPUT_NAME, export_module, torch_logits
from bnfold.converter.importer import N_RANDOM, ImportOptions, ImportResult, Log, import_model
from bnfold.converter.models import bn_modules
from bnfold.converter.repository import check_target


def convert_module(
    module: nn.Module,
    example_input: torch.Tensor | np.ndarray,
    *,
    repo: Path | str,
    name: str,
    data: np.ndarray | None = None,
    version: int | None = None,
    labels: Sequence[str] = (),
    n_random: int = N_RANDOM,
    seed: int = 0,
    rtol: float = DEFAULT_RTOL,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    log: Log = print,
) -> ImportResult:
    """Export ``module`` (one tensor in, one tensor out, batch first), fold
    every BN, verify and write ``<repo>/<name>/<version>/``.

    ``example_input`` fixes the shape after the batch axis; ``data`` (rows
    of that shape) is what parity is proven on, beside ``n_random``
    generated rows. Raises ParityFailure (nothing written) when any
    comparison fails. ``module`` is given back in the mode it came in
    (each layer's training flag as it was).
    """
    opts = ImportOptions(
        model=Path(f"{type(module).__name__}.onnx"),
        repo=Path(repo),
        name=name,
        version=version,
        n_random=n_random,
        seed=seed,
        rtol=rtol,
        max_batch_size=max_batch_size,
        labels=tuple(labels),
    )
    check_target(opts.repo, opts.name, opts.version)
    example = torch.as_tensor(example_input, dtype=torch.float32)
    # The caller's module keeps its mode: export and PyTorch eval need eval mode,
    # and a module in training is given back in training, layer by layer.
    modes = {m: m.training for m in module.modules()}
    try:
        return _convert(module, example, data, opts, log)
    finally:
        for m, training in modes.items():
            m.train(training)


def _convert(
    module: nn.Module,
    example: torch.Tensor,
    data: np.ndarray | None,
    opts: ImportOptions,
    log: Log,
) -> ImportResult:
    module.eval()
    layers = len(bn_modules(module))
    log(f"exporting {type(module).__name__} ({layers} BN layers kept)")
    reference = export_module(
        module, example, input_name=INPUT_NAME, output_name=OUTPUT_NAME, strict_bn_count=False
    )
    row_shape = tuple(example.shape[1:])
    parts = []
    given_rows = 0
    if data is not None:
        given = np.asarray(data, dtype=np.float32)
        if given.shape[1:] != row_shape:
            raise ValueError(
                f"data rows have shape {given.shape[1:]}; the module takes {row_shape}"
            )
        parts.append(given)
        given_rows = len(given)
    if opts.n_random > 0:
        rng = np.random.default_rng(opts.seed)
        parts.append(rng.standard_normal((opts.n_random, *row_shape)).astype(np.float32))
    if not parts:
        raise InputError("no inputs to prove parity on: give data or n_random above 0")
    x = np.concatenate(parts)
    expected = {OUTPUT_NAME: torch_logits(module, x)}
    source = {"module": f"{type(module).__module__}.{type(module).__qualname__}"}
    # What the proof ran on, as import records its --data.
    described = f"data= ({given_rows} rows)" if data is not None else None
    return import_model(
        reference,
        opts,
        source=source,
        feeds={INPUT_NAME: x},
        expected=expected,
        expected_bns=layers,
        data_given=described,
        log=log,
    )
