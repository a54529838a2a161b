"""Serving benchmarks: ``python -m bench.serve`` (see run.py), the soak
(``python -m bench.serve.soak``), and the load generator they share."""
