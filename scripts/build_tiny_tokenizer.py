"""Build the tiny XR0 tokenizer into assets/xr0-tiny/ (deterministic; nothing is downloaded).

    python scripts/build_tiny_tokenizer.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xr0.model.tokenizer import TINY_TOKENIZER_DIR, save_tiny_tokenizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_TOKENIZER_DIR, help="output directory")
    args = parser.parse_args(argv)
    for path in save_tiny_tokenizer(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
