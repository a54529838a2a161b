"""Triton's vendored QA files (qa/) are run by run_qa.py against a server of
their own, never collected here: their names (``infer_test.py``) match
pytest's patterns."""

collect_ignore_glob = ["qa/*"]
