"""bnfold: fold every BatchNorm of a network into its neighbours and serve the result.

One import root for the whole distribution:

- ``bnfold.contract``: the model repository contract, the one thing both
  wings share (stdlib and numpy only).
- ``bnfold.converter``: train, export, fold, verify, write the repository
  (``bnfold.folding`` and ``verify`` need no torch).
- ``bnfold.service``: serve a repository over the Open Inference Protocol
  (never imports torch).

``bnfold.convert_module(module, example_input, repo=..., name=...)`` and
``bnfold.import_onnx(ImportOptions(...))`` bring a user's own model in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "convert_module", "import_onnx"]

if TYPE_CHECKING:
    from bnfold.converter.importer import import_onnx
    from bnfold.converter.module import convert_module


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import bnfold` stays free of torch and onnxruntime.
    if name == "convert_module":
        from bnfold.converter.module import convert_module

        return convert_module
    if name == "import_onnx":
        from bnfold.converter.importer import import_onnx

        return import_onnx
    raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
