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
import math
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any

SHOWN_NAME = 200  # characters of a caller's name (a key, a header, a value) an error quotes; a longer one is cut


Location = list[str | int]  # where in a JSON document: keys and list indices from the top


# what each syntax says of a repeated key and of text that is not Unicode
RULES = {
    "JSON": ("JSON leaves which value counts open (RFC 8259, 4)", "JSON text is Unicode (RFC 8259, 8.2)"),
    "YAML": ("YAML requires a mapping's keys to be unique (YAML 1.2.2, 3.2.1.1)", "YAML text is Unicode (5.1)"),
}


class DuplicateKey(ValueError):
    """A key given twice in one object (``key``: the key, as written; ``path``: its place, once known)."""

    kind = "duplicate_key"

    def __init__(self, key: Any, path: Location | None = None, syntax: str = "JSON") -> None:
        super().__init__(f"key {quoted(key)} appears more than once in one object: {RULES[syntax][0]}")
        self.key, self.path = key, (path or []) + [key]


class LoneSurrogate(ValueError):
    """A key or string holding a lone surrogate (``path``: where, the key itself for a key)."""

    kind = "invalid_unicode"

    def __init__(self, path: Location, syntax: str = "JSON") -> None:
        super().__init__(
            "a lone surrogate (an escape \\ud800 to \\udfff not paired as UTF-16) is not a character: "
            f"{RULES[syntax][1]}, so this string cannot be read"
        )
        self.path = path


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object as a dict; raises :class:`DuplicateKey` for a repeated key.

    One dict is built, as the default decoder builds it; the keys are scanned only when the dict came out shorter.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateKey(_first_repeated(pairs))
    return obj


def _first_repeated(pairs: list[tuple[Any, Any]]) -> Any:
    """The first key of ``pairs`` that an earlier pair already had (asked once a repeat is known: a key may be None)."""
    seen: set[Any] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


class _Pairs(list):
    """An object as decoded for :func:`_duplicate_at`: its (key, value) pairs, in order, repeats kept."""


CONTAINERS = (dict, _Pairs, list)  # what a decoded document's values are made of, beside str and numbers
WALKED = frozenset({str, dict, _Pairs, list})  # the kinds of value a walk visits: text and containers


def _members(node: Any) -> list[tuple[str | int, Any]]:
    """The members of an object (a dict or :class:`_Pairs`) or list worth visiting: containers and strings.

    Numbers, booleans and null hold no key and no text: a list of half a million numbers is passed over at C
    speed (``map(type, ...)``) rather than visited one by one.
    """
    if isinstance(node, dict):
        return [(key, value) for key, value in node.items() if value.__class__ in WALKED]
    if isinstance(node, _Pairs):
        return [(key, value) for key, value in node if value.__class__ in WALKED]
    kinds = list(map(type, node))
    return [(i, node[i]) for i, kind in enumerate(kinds) if kind in WALKED]


def _post_order(document: Any, parents: list[tuple[int, str | int]]) -> Iterator[tuple[int, Any]]:
    """Every container and string of a decoded document, each after its members, with the number of its place.

    That is the order in which the decoder completes objects: innermost first, then in document order. The walk
    keeps its own stack (a document may nest as deep as the decoder allows) and fills ``parents`` with each
    place's (parent, key), not its path, so a document of n values nested d deep costs O(n), not O(n d):
    :func:`_place` builds a place's path when it is asked for. Place 0 is the document.
    """
    parents[:] = [(-1, "")]
    stack: list[tuple[Any, int, bool]] = [(document, 0, False)]
    while stack:
        node, here, done = stack.pop()
        if done or not isinstance(node, CONTAINERS):
            yield here, node
            continue
        stack.append((node, here, True))
        for key, value in reversed(_members(node)):
            parents.append((here, key))
            stack.append((value, len(parents) - 1, False))


def _place(parents: list[tuple[int, str | int]], here: int) -> Location:
    """The path of place ``here`` of :func:`_post_order`: keys and indices from the top."""
    keys: Location = []
    while here > 0:
        here, key = parents[here]
        keys.append(key)
    return keys[::-1]


def _duplicate_at(document: Any) -> Location | None:
    """The place of the key :func:`unique_keys` refused, in a document decoded into :class:`_Pairs`; else None."""
    parents: list[tuple[int, str | int]] = []
    for here, node in _post_order(document, parents):
        if isinstance(node, _Pairs) and len({key for key, _ in node}) < len(node):
            return [*_place(parents, here), _first_repeated(node)]
    return None


def _lone_surrogate_at(document: Any) -> Location | None:
    """The place of the first key or string holding a lone surrogate (the key itself for a key); else None."""
    parents: list[tuple[int, str | int]] = []
    for here, node in _post_order(document, parents):
        if isinstance(node, str) and encodable(node) is not node:
            return _place(parents, here)
        if isinstance(node, dict):
            for key in node:
                if isinstance(key, str) and encodable(key) is not key:
                    return [*_place(parents, here), key]
    return None


def _has_lone_surrogate(data: Any) -> bool:
    """Whether any key or string of decoded JSON holds a lone surrogate: one pass of the C encoder and of UTF-8's."""
    try:  # str() for what only YAML holds (dates, sets): their text holds no surrogate a key or string did not
        json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the start of an escape of U+D800 to U+DFFF
SURROGATE_ESCAPE_BYTES = re.compile(SURROGATE_ESCAPE.pattern.encode())


def _loads(text: str | bytes, pairs: Any) -> Any:
    """``json.loads`` with ``pairs`` as its object_pairs_hook, integers of any length read.

    An integer too long for Python's int() (sys.get_int_max_str_digits()) is read as :func:`float` reads it (plus
    or minus infinity), so that the field holding it is refused by its own rules (out of range, not a whole
    number) at its place, rather than the whole body by the decoder.
    """
    try:
        return json.loads(text, object_pairs_hook=pairs)
    except ValueError as error:
        if "integer string conversion" not in str(error):  # not JSON, or a repeated key: raised as it is
            raise
    return json.loads(text, object_pairs_hook=pairs, parse_int=_integer_or_float)


def beyond_any_integer(item: Mapping[str, Any]) -> str | None:
    """What to say of a pydantic error where an integer field got a number no integer field holds; else None.

    Infinity, 1e400, or an integer longer than int() reads (read as float() reads it, :func:`_loads`) come to an
    integer field as an infinite float, which pydantic calls "not a valid integer": it is one, beyond any bound.
    One rule for the service's bodies and the trainer's spec files.
    """
    value = item.get("input")
    if item.get("type") != "int_type" or not isinstance(value, float) or math.isfinite(value):
        return None
    return (
        "out of range: not a finite number (NaN, infinity, beyond about 1.8e308, or an integer of more than "
        f"{sys.get_int_max_str_digits()} digits); this field takes a whole number within its bounds"
    )


def _integer_or_float(digits: str) -> int | float:
    return int(digits) if len(digits.lstrip("-")) <= sys.get_int_max_str_digits() else float(digits)


def strict_json(text: str | bytes) -> Any:
    """JSON text as Python data, refusing what it leaves ambiguous: a repeated key, a lone surrogate.

    Raises :class:`DuplicateKey` and :class:`LoneSurrogate` (ValueErrors) with the place in the document
    (``path``), and ``json.JSONDecodeError`` for text that is not JSON. The common case costs one pass of the
    standard decoder and one regular-expression scan: a lone surrogate can only arrive as an escape (UTF-8
    cannot encode one), so the decoded data are walked only when the text holds such an escape, and the text is
    decoded again (with every pair kept) only to locate a repeated key.
    """
    try:
        data = _loads(text, unique_keys)
    except DuplicateKey as error:
        error.path = _duplicate_at(_loads(text, _Pairs)) or error.path
        raise
    pattern = SURROGATE_ESCAPE_BYTES if isinstance(text, bytes) else SURROGATE_ESCAPE
    if pattern.search(text):  # type: ignore[arg-type]
        path = _lone_surrogate_at(data) if _has_lone_surrogate(data) else None
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


def strict_yaml(text: str) -> Any:
    """YAML as plain data (PyYAML's SafeLoader), refusing what :func:`strict_json` refuses, with its place.

    PyYAML keeps the last of a repeated key without a word (YAML 1.2 requires unique keys), and passes a lone
    surrogate (the escape of U+D800 in a double-quoted string) on. Mappings are read as their pairs first, so a repeated
    key is located as in JSON. Raises :class:`DuplicateKey` and :class:`LoneSurrogate`, ImportError without
    PyYAML, and ``yaml.YAMLError`` for text that is not YAML.
    """
    import yaml  # PyYAML, optional: only YAML files need it

    class PairsLoader(yaml.SafeLoader):
        """SafeLoader (plain data only) whose mappings are their pairs, repeats kept."""

    def pairs(loader: PairsLoader, node: yaml.MappingNode) -> _Pairs:
        loader.flatten_mapping(node)  # merge keys (<<) first, as SafeLoader does
        construct = loader.construct_object
        return _Pairs((construct(key, deep=True), construct(value, deep=True)) for key, value in node.value)

    PairsLoader.add_constructor("tag:yaml.org,2002:map", pairs)
    document = yaml.load(text, Loader=PairsLoader)  # a SafeLoader: plain data only
    place = _duplicate_at(document)
    if place is not None:
        raise DuplicateKey(place[-1], place[:-1], "YAML")
    data = _plain(document)
    if _has_lone_surrogate(data):
        raise LoneSurrogate(_lone_surrogate_at(data) or [], "YAML")
    return data


def _plain(node: Any) -> Any:
    """A document read by :func:`strict_yaml`'s loader with its mappings as dicts (a spec file: shallow)."""
    if isinstance(node, _Pairs):
        return {key: _plain(value) for key, value in node}
    return [_plain(value) for value in node] if isinstance(node, list) else node
