"""Output of headless commands: readable text by default, JSON with --json."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np


def _default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    return str(o)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, separators=(",", ":"))


def _write(stream, text: str) -> None:
    """Write and flush; if the reader has gone (the app that started a background job was
    closed), the stream goes to /dev/null from then on and the command carries on: a training run
    keeps its own events.jsonl, and must not die of a closed pipe."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)


def emit_json(obj: Any) -> None:
    """One JSON document per line on stdout, flushed (consumers stream it)."""
    _write(sys.stdout, dumps(obj) + "\n")


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def error(msg: str) -> None:
    _write(sys.stderr, f"error: {msg}\n")
