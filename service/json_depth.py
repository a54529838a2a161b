"""JSON nested deeper than a parser builds, made parseable by cutting it.

Triton reads a request body of any nesting depth and then checks the
fields it uses (``{"ready": [[[...]]]}`` on the repository index is
``Invalid value for 'ready': expected a boolean``); bnfold's parsers stop
at a depth (pydantic's at about 200 levels). ``cut_deep`` replaces each
array or object that opens deeper than a depth by ``null``: what is left
has the same members and the same kind of value at every shallower level
(a cut value was a container, never a boolean, string or number), so the
fields a route reads are checked as Triton checks them.

Vectorised with numpy (a body is up to ``--max-body-bytes``): a quote
counts when an even number of backslashes precedes it, a bracket when it
lies outside every string.
"""

from __future__ import annotations

import numpy as np

DEPTH = 64  # what is kept; far below every parser's limit


def cut_deep(raw: bytes, depth: int = DEPTH) -> bytes:
    """``raw`` with each array or object nested deeper than ``depth`` as
    ``null``; ``raw`` unchanged when its brackets do not balance (the
    parser then refuses it as it is)."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    index = np.arange(len(buf), dtype=np.int64)
    backslash = buf == ord("\\")
    last_plain = np.maximum.accumulate(np.where(backslash, -1, index))  # last non-backslash
    quotes = np.flatnonzero(buf == ord('"'))
    before = np.where(quotes > 0, last_plain[np.maximum(quotes - 1, 0)], -1)
    real = quotes[(quotes - 1 - before) % 2 == 0]  # not escaped
    toggles = np.zeros(len(buf), dtype=np.int8)
    toggles[real] = 1
    outside = np.cumsum(toggles, dtype=np.int64) % 2 == 0
    opens = ((buf == ord("[")) | (buf == ord("{"))) & outside
    closes = ((buf == ord("]")) | (buf == ord("}"))) & outside
    level = np.cumsum(opens.astype(np.int64) - closes, dtype=np.int64)  # after each byte
    starts = np.flatnonzero(opens & (level == depth + 1))
    ends = np.flatnonzero(closes & (level == depth))
    if len(starts) == 0 or len(starts) != len(ends) or (ends < starts).any():
        return raw
    pieces, position = [], 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        pieces += [raw[position:start], b"null"]
        position = end + 1
    pieces.append(raw[position:])
    return b"".join(pieces)
