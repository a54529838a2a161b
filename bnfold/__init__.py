"""bnfold: fold every BatchNorm of a network into its neighbours and serve the result.

One import root for the whole distribution:

- ``bnfold.contract``: the model repository contract, the one thing both
  wings share (stdlib and numpy only).
- ``bnfold.converter``: train, export, fold, verify, write the repository
  (``bnfold.converter.folding`` and ``verify`` need no torch).
- ``bnfold.service``: serve a repository over the Open Inference Protocol
  (never imports torch).
"""

__version__ = "0.1.0"
