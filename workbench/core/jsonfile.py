"""JSON from files anyone can edit (reports, splits, model metadata), read within bounds."""

from __future__ import annotations

import json
from typing import Any

# Deepest nesting of lists and objects read from a JSON file (reports, model metadata).
MAX_JSON_DEPTH = 64


def parse_json(text: str | bytes) -> Any:
    """`json.loads` for files anyone can edit: too deep a nesting is a ValueError like any
    bad JSON.

    Python's parser recurses once per bracket, so 200,000 nested brackets (a few hundred KB)
    raise RecursionError; a few hundred levels parse but break what walks the data next
    (writing it out again, rendering it). Nothing workbench writes nests more than a handful
    of levels, so more than MAX_JSON_DEPTH is refused.
    """
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
            items = value.values() if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items if isinstance(item, dict | list))
    return data
