"""EDM's list syntax for seeds and classes: "0-63", "1,5,9", "0-9,100-109" (ranges inclusive)."""

from __future__ import annotations

import re
from collections import Counter

_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_numbers(text: str, what: str = "--seeds") -> list[int]:
    """The non-negative integers ``text`` lists, in order, each once. Raises ValueError naming ``what``
    and the bad part: an empty list, a reversed range, a repeated number, anything not a number."""
    values: list[int] = []
    for part in str(text).split(","):
        match = _ITEM.match(part.strip())
        if not match:
            raise ValueError(f"{what} {text!r}: {part.strip()!r} is not a number or a range like 0-63 (numbers >= 0, comma-separated)")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise ValueError(f"{what} {text!r}: the range {part.strip()!r} runs backwards")
        values.extend(range(first, last + 1))
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if repeated:
        raise ValueError(f"{what} {text!r}: {', '.join(map(str, repeated[:5]))} listed more than once")
    return values
