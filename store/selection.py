"""Episode selections as users type them: '1,3,5-9'."""

from __future__ import annotations


def parse_episode_ids(text: str) -> list[int]:
    """'1,3,5-9' -> [1, 3, 5, 6, 7, 8, 9] (order kept, repeats allowed; empty parts ignored).
    Raises ValueError naming the part that is not an id or a rising range."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                ids.extend(range(a, b + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise ValueError(f"cannot read {part!r} in the episode selection {text!r}: give ids "
                             f"and ranges like 1,3,5-9") from None
    return ids
