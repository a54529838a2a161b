"""bnfold converter: train BatchNorm networks, export, fold, verify, write the repository."""
