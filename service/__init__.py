"""bnfold service: serve a model repository over the Open Inference Protocol."""
