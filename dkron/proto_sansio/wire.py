"""Type-directed, strict CBOR encoding for protocol messages.

Every message on the wire is a frozen dataclass.  Its schema *is* its type
hints: :class:`Codec` compiles one encoder and one validating decoder per class
from them, so a message class cannot drift from its wire form.  A top-level
message travels as a CBOR array ``[kind, field1, field2, ...]``; a nested
struct as ``[field1, field2, ...]``.  Arrays beat maps here: they are smaller
and faster, and strictness does not need names (the arity is checked).

Decoding untrusted bytes raises :class:`RemoteProtocolError` and nothing else:
wrong types, wrong arity, unknown kinds, invalid enum values and any failure of
the CBOR parser itself are all reported the same way.

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``bytes``,
``X | None``, ``tuple[X, ...]``, ``frozenset[X]``, ``dict[K, V]``, enums whose
values are ints or strings, and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Codec"]

_Enc = Callable[[Any], Any]
_Dec = Callable[[Any], Any]


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what)


def _dec_int(v: Any) -> int:
    if type(v) is not int:
        raise _bad(f"expected int, got {type(v).__name__}")
    return v


def _dec_float(v: Any) -> float:
    if type(v) is float:
        return v
    if type(v) is int:
        return float(v)
    raise _bad(f"expected float, got {type(v).__name__}")


def _dec_bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _bad(f"expected bool, got {type(v).__name__}")
    return v


def _dec_str(v: Any) -> str:
    if type(v) is not str:
        raise _bad(f"expected str, got {type(v).__name__}")
    return v


def _dec_bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise _bad(f"expected bytes, got {type(v).__name__}")
    return v


def _identity(v: Any) -> Any:
    return v


_SCALARS: dict[Any, tuple[_Enc, _Dec]] = {
    int: (_identity, _dec_int),
    float: (_identity, _dec_float),
    bool: (_identity, _dec_bool),
    str: (_identity, _dec_str),
    bytes: (_identity, _dec_bytes),
}


class Codec:
    """Encoder and strict decoder for one family of messages.

    ``kinds`` maps the small integer that identifies each message type on the
    wire to its dataclass.  Each protocol (Raft RPC, gossip, execution) owns
    one codec; kinds are only unique within a codec.
    """

    def __init__(self, kinds: Mapping[int, type]) -> None:
        self._by_kind: dict[int, tuple[type, tuple[_Dec, ...]]] = {}
        self._by_class: dict[type, tuple[int, tuple[str, ...], tuple[_Enc, ...]]] = {}
        self._structs: dict[type, tuple[_Enc, _Dec]] = {}
        for kind, cls in kinds.items():
            names, encs, decs = self._compile_fields(cls)
            self._by_kind[kind] = (cls, decs)
            self._by_class[cls] = (kind, names, encs)

    # -- public API ---------------------------------------------------------

    def encode(self, msg: object) -> bytes:
        """Serialise a registered message; misuse is the caller's bug."""
        return cbor2.dumps(self.to_wire(msg))

    def to_wire(self, msg: object) -> list[Any]:
        """The CBOR-ready array of a message, for embedding in a larger frame."""
        try:
            kind, names, encs = self._by_class[type(msg)]
        except KeyError:
            raise LocalProtocolError(
                f"{type(msg).__name__} is not a message of this codec"
            ) from None
        out: list[Any] = [kind]
        for name, enc in zip(names, encs, strict=True):
            out.append(enc(getattr(msg, name)))
        return out

    def decode(self, body: bytes) -> object:
        """Parse one message body; anything malformed raises RemoteProtocolError."""
        try:
            raw = cbor2.loads(body)
        except Exception as exc:  # the parser's failure modes are many; all are the peer's
            raise RemoteProtocolError(f"undecodable CBOR: {exc}") from None
        return self.from_wire(raw)

    def from_wire(self, raw: Any) -> object:
        """Validate an already-parsed array into a message."""
        if type(raw) is not list or not raw:
            raise _bad("a message is a non-empty array")
        kind = raw[0]
        if type(kind) is not int:
            raise _bad("message kind must be an int")
        entry = self._by_kind.get(kind)
        if entry is None:
            raise _bad(f"unknown message kind {kind}")
        cls, decs = entry
        return self._build(cls, decs, raw, 1)

    # -- compilation ----------------------------------------------------------

    def _build(self, cls: type, decs: tuple[_Dec, ...], raw: list[Any], start: int) -> object:
        if len(raw) - start != len(decs):
            raise _bad(f"{cls.__name__}: expected {len(decs)} fields, got {len(raw) - start}")
        values = [dec(raw[start + i]) for i, dec in enumerate(decs)]
        try:
            return cls(*values)
        except (TypeError, ValueError) as exc:  # dataclass validation in __post_init__
            raise _bad(f"{cls.__name__}: {exc}") from None

    def _compile_fields(
        self, cls: type
    ) -> tuple[tuple[str, ...], tuple[_Enc, ...], tuple[_Dec, ...]]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        if any(f.kw_only for f in fields):
            raise TypeError(f"{cls.__name__}: wire messages take positional fields")
        names = tuple(f.name for f in fields)
        pairs = [self._compile(hints[f.name]) for f in fields]
        return names, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

    def _compile(self, tp: Any) -> tuple[_Enc, _Dec]:
        if tp in _SCALARS:
            return _SCALARS[tp]
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1 or len(args) != 2:
                raise TypeError(f"only X | None unions are supported, not {tp!r}")
            inner_enc, inner_dec = self._compile(rest[0])

            def enc_opt(v: Any) -> Any:
                return None if v is None else inner_enc(v)

            def dec_opt(v: Any) -> Any:
                return None if v is None else inner_dec(v)

            return enc_opt, dec_opt
        if origin is tuple:
            if len(args) != 2 or args[1] is not Ellipsis:
                raise TypeError(f"only tuple[X, ...] is supported, not {tp!r}")
            return self._sequence(args[0], tuple)
        if origin is frozenset:
            return self._sequence(args[0], frozenset)
        if origin is dict:
            return self._mapping(args[0], args[1])
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._enum(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._struct(tp)
        raise TypeError(f"unsupported wire type {tp!r}")

    def _sequence(self, item: Any, build: Callable[[Any], Any]) -> tuple[_Enc, _Dec]:
        item_enc, item_dec = self._compile(item)
        if item_enc is _identity:

            def enc_seq(v: Any) -> Any:
                return list(v)
        else:

            def enc_seq(v: Any) -> Any:
                return [item_enc(x) for x in v]

        def dec_seq(v: Any) -> Any:
            if type(v) is not list:
                raise _bad(f"expected array, got {type(v).__name__}")
            return build(item_dec(x) for x in v)

        return enc_seq, dec_seq

    def _mapping(self, key: Any, value: Any) -> tuple[_Enc, _Dec]:
        key_enc, key_dec = self._compile(key)
        val_enc, val_dec = self._compile(value)

        def enc_map(v: Any) -> Any:
            return {key_enc(k): val_enc(x) for k, x in v.items()}

        def dec_map(v: Any) -> Any:
            if type(v) is not dict:
                raise _bad(f"expected map, got {type(v).__name__}")
            return {key_dec(k): val_dec(x) for k, x in v.items()}

        return enc_map, dec_map

    def _enum(self, tp: type[enum.Enum]) -> tuple[_Enc, _Dec]:
        def enc_enum(v: Any) -> Any:
            return v.value

        def dec_enum(v: Any) -> Any:
            if type(v) not in (int, str):
                raise _bad(f"{tp.__name__}: expected int or str")
            try:
                return tp(v)
            except ValueError:
                raise _bad(f"{tp.__name__}: invalid value {v!r}") from None

        return enc_enum, dec_enum

    def _struct(self, tp: type) -> tuple[_Enc, _Dec]:
        cached = self._structs.get(tp)
        if cached is not None:
            return cached
        # Placeholders let recursive structs refer to themselves.
        slot: list[tuple[_Enc, _Dec]] = []

        def enc_struct(v: Any) -> Any:
            return slot[0][0](v)

        def dec_struct(v: Any) -> Any:
            return slot[0][1](v)

        self._structs[tp] = (enc_struct, dec_struct)
        names, encs, decs = self._compile_fields(tp)

        def enc_real(v: Any) -> Any:
            return [enc(getattr(v, n)) for n, enc in zip(names, encs, strict=True)]

        def dec_real(v: Any) -> Any:
            if type(v) is not list:
                raise _bad(f"{tp.__name__}: expected array")
            return self._build(tp, decs, v, 0)

        slot.append((enc_real, dec_real))
        return enc_struct, dec_struct
