"""Triton's protocol definitions, vendored, and the modules generated from them."""
