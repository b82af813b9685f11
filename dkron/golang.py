"""Go's formatting conventions that Dkron's messages are written in.

Dkron's error texts quote values with Go's ``strconv.Quote``; clients and
tests compare those texts, so every module that reproduces one uses this
single implementation.
"""

from __future__ import annotations

__all__ = ["go_quote"]

_QUOTE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote``: printable runes kept, the rest escaped as Go does."""
    out = ['"']
    for c in s:
        code = ord(c)
        if c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        elif c.isprintable() and not 0xD800 <= code <= 0xDFFF:
            out.append(c)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
