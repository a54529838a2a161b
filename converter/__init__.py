"""bnfold converter: train BatchNorm networks, export, fold, verify, write the repository."""

__version__ = "0.1.0"
