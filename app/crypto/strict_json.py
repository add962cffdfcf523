"""``json.loads`` with hooks, on one decoder built once.

``json.loads(text, object_pairs_hook=..., parse_constant=...)`` builds a new
``JSONDecoder`` on every call; the strict parsers of request bodies
(``app.jsonbody``) and of disclosures and fields (``app.crypto.envelope``) each
keep one :class:`StrictDecoder` instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class StrictDecoder:
    """One decoder with the given hooks; :meth:`loads` is ``json.loads`` with them."""

    def __init__(
        self,
        object_pairs_hook: Callable[[list[tuple[str, Any]]], Any],
        parse_constant: Callable[[str], Any],
    ) -> None:
        self._decoder = json.JSONDecoder(
            object_pairs_hook=object_pairs_hook, parse_constant=parse_constant
        )
        # the decoder's own scanner (json.scanner.make_scanner): one value at an index
        scan = self._decoder.scan_once  # type: ignore[attr-defined]
        self._scan: Callable[[str, int], tuple[Any, int]] = scan

    def loads(self, text: str) -> Any:
        """The values and errors of ``json.loads`` with the hooks (its refusal of a byte
        order mark included). A text that is one value from its first character to its
        last is scanned once; anything else (whitespace around it, extra data, no
        value) goes the way of ``json.loads``."""
        try:
            value, end = self._scan(text, 0)
        except StopIteration:
            end = -1
        if end == len(text):
            return value
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return self._decoder.decode(text)
