"""``python -m bench.serve``: the serving benchmark (bench/serve/run.py)."""

from .run import main

main()
