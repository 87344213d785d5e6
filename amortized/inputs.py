"""What callers give the package, read strictly and quoted back safely: JSON objects' keys, text in error messages.

The trainer reads variant specs from files and the service reads request
bodies; both refuse what is ambiguous and explain what they refuse by quoting
it, so both use these.

- :func:`unique_keys`: a ``json.loads`` hook that refuses a key given twice in
  one object (:class:`DuplicateKey`). RFC 8259 (section 4) says the names
  within an object SHOULD be unique and leaves what a duplicate means to the
  receiver; Python's decoder keeps the last value without a word.
- :func:`shown` and :func:`quoted`: a caller's text as an error message quotes
  it, bounded (an unknown key of a megabyte is quoted by its first
  :data:`SHOWN_NAME` characters and its length) and encodable (a JSON string
  may carry the escape of a lone surrogate, which decodes to a Python str that
  UTF-8 cannot encode: orjson and ``str.encode`` raise on it, so an error
  quoting one became a 500; it is quoted as that escape).
"""

from __future__ import annotations

from typing import Any

SHOWN_NAME = 200  # characters of a caller's name (a key, a header, a value) an error quotes; a longer one is cut


class DuplicateKey(ValueError):
    """A key given twice in one JSON object (``key``: the key, as written)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {quoted(key)} appears more than once in one object")
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object as a dict; raises :class:`DuplicateKey` for a repeated key.

    One dict is built, as the default decoder builds it; the keys are scanned only when the dict came out shorter.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def encodable(text: str) -> str:
    """``text`` with every lone surrogate (U+D800 to U+DFFF, which UTF-8 cannot encode) written as its escape."""
    if text.isascii():  # the common case, in one pass
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def shown(text: str, limit: int = SHOWN_NAME) -> str:
    """``text`` as an error quotes it: its first ``limit`` characters and its length when longer, and encodable."""
    cut = text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    return encodable(cut)


def quoted(value: object, limit: int = SHOWN_NAME) -> str:
    """``repr`` of a caller's value as an error quotes it (``'gmmm'``), bounded and encodable.

    A str is cut to ``limit`` characters, and its length said; anything else to ``limit`` characters of its ``repr``.
    """
    if isinstance(value, str):
        more = f"... ({len(value)} characters)" if len(value) > limit else ""
        return encodable(f"{value[:limit]!r}{more}")
    return shown(repr(value), limit)
