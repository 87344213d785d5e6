"""What callers give the package, read strictly and quoted back safely: JSON objects' keys, text in error messages.

The trainer reads variant specs from files and the service reads request
bodies; both refuse what is ambiguous and explain what they refuse by quoting
it, so both use these.

- :func:`strict_json`: JSON text as data, refusing a key given twice in one
  object (:class:`DuplicateKey`, through the hook :func:`unique_keys`) and a
  lone surrogate in a key or string (:class:`LoneSurrogate`), each with its
  place in the document. RFC 8259 says the names within an object SHOULD be
  unique and leaves what a duplicate means to the receiver (section 4);
  Python's decoder keeps the last value without a word. A lone surrogate
  (an escape of U+D800 to U+DFFF not paired as UTF-16) is not a character
  (section 8.2): decoded, it is a str
  that UTF-8 cannot encode, and pydantic refused it as "unable to parse raw
  data as a unicode string" at the whole body, or mangled a key into U+FFFD.
- :func:`shown` and :func:`quoted`: a caller's text as an error message quotes
  it, bounded (an unknown key of a megabyte is quoted by its first
  :data:`SHOWN_NAME` characters and its length) and encodable (a JSON string
  may carry the escape of a lone surrogate, which decodes to a Python str that
  UTF-8 cannot encode: orjson and ``str.encode`` raise on it, so an error
  quoting one became a 500; it is quoted as that escape).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

SHOWN_NAME = 200  # characters of a caller's name (a key, a header, a value) an error quotes; a longer one is cut


Location = list[str | int]  # where in a JSON document: keys and list indices from the top


class DuplicateKey(ValueError):
    """A key given twice in one JSON object (``key``: the key, as written; ``path``: its place, once known)."""

    kind = "duplicate_key"

    def __init__(self, key: str, path: Location | None = None) -> None:
        super().__init__(
            f"key {quoted(key)} appears more than once in one object: JSON leaves which value counts open (RFC 8259, 4)"
        )
        self.key, self.path = key, (path or []) + [key]


class LoneSurrogate(ValueError):
    """A key or string of a JSON document holding a lone surrogate (``path``: where, the key itself for a key)."""

    kind = "invalid_unicode"

    def __init__(self, path: Location) -> None:
        super().__init__(
            "a lone surrogate (an escape \\ud800 to \\udfff not paired as UTF-16) is not a character: JSON text "
            "is Unicode (RFC 8259, 8.2), so this string cannot be read"
        )
        self.path = path


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


class _Pairs(list):
    """An object as decoded for :func:`_duplicate_at`: its (key, value) pairs, in order, repeats kept."""


def _members(node: Any) -> list[tuple[str | int, Any]]:
    """An object's (key, value) pairs (a dict or :class:`_Pairs`), a list's (index, value) pairs; else none."""
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, _Pairs):
        return list(node)
    return list(enumerate(node)) if isinstance(node, list) else []


def _post_order(node: Any, path: Location) -> Iterator[tuple[Location, Any]]:
    """Every value of a decoded document with its place, each after its members.

    That is the order in which the decoder completes objects: innermost first, then in document order.
    """
    for key, value in _members(node):
        yield from _post_order(value, [*path, key])
    yield path, node


def _duplicate_at(document: Any) -> Location | None:
    """The place of the key :func:`unique_keys` refused, in a document decoded into :class:`_Pairs`; else None."""
    for path, node in _post_order(document, []):
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key, _ in node:
                if key in seen:
                    return [*path, key]
                seen.add(key)
    return None


def _lone_surrogate_at(document: Any) -> Location | None:
    """The place of the first key or string holding a lone surrogate (the key itself for a key); else None."""
    for path, node in _post_order(document, []):
        if isinstance(node, str) and encodable(node) is not node:
            return path
        if isinstance(node, dict):
            for key in node:
                if encodable(key) is not key:
                    return [*path, key]
    return None


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the start of an escape of U+D800 to U+DFFF
SURROGATE_ESCAPE_BYTES = re.compile(SURROGATE_ESCAPE.pattern.encode())


def strict_json(text: str | bytes) -> Any:
    """JSON text as Python data, refusing what it leaves ambiguous: a repeated key, a lone surrogate.

    Raises :class:`DuplicateKey` and :class:`LoneSurrogate` (ValueErrors) with the place in the document
    (``path``), and ``json.JSONDecodeError`` for text that is not JSON. The common case costs one pass of the
    standard decoder and one regular-expression scan: a lone surrogate can only arrive as an escape (UTF-8
    cannot encode one), so the decoded data are walked only when the text holds such an escape, and the text is
    decoded again (with every pair kept) only to locate a repeated key.
    """
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as error:
        error.path = _duplicate_at(json.loads(text, object_pairs_hook=_Pairs)) or error.path
        raise
    pattern = SURROGATE_ESCAPE_BYTES if isinstance(text, bytes) else SURROGATE_ESCAPE
    if pattern.search(text):  # type: ignore[arg-type]
        path = _lone_surrogate_at(data)
        if path is not None:
            raise LoneSurrogate(path)
    return data


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
