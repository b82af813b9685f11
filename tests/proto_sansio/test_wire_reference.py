"""The generated codec against a plain interpreter of the same type hints.

:class:`~dkron.proto_sansio.wire.Codec` generates one encoder and decoder per
class.  :class:`ReferenceCodec` below is the straightforward reading of the
schema rules (one closure per type, one call per field) that the generated
code must agree with: the same bytes for every message of every real codec,
the same message or the same refusal for any input, however mangled.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkron.proto_sansio.codec import RAFT_CODEC
from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.execution import EXECUTION_CODEC
from dkron.proto_sansio.swim_wire import _STREAM_KINDS
from dkron.proto_sansio.wire import Codec, _is_named_tuple
from dkron.state import _SNAPSHOTS, COMMANDS

_Enc = Callable[[Any], Any]
_Dec = Callable[[Any], Any]


# -- the reference: one closure per type, interpreted per call ------------------------


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


def _field_names(cls: type) -> tuple[str, ...]:
    """The positional wire fields: a named tuple's, or a dataclass's init fields."""
    if _is_named_tuple(cls):
        return tuple(cls._fields)  # type: ignore[attr-defined]
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if any(f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: wire messages take positional fields")
    return tuple(f.name for f in fields)


class ReferenceCodec:
    """The codec as a plain interpreter of type hints, field by field."""

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
        if not (dataclasses.is_dataclass(cls) or _is_named_tuple(cls)):
            raise TypeError(f"{cls!r} is not a dataclass")
        hints = typing.get_type_hints(cls)
        names = _field_names(cls)
        pairs = [self._compile(hints[name]) for name in names]
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
        if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_named_tuple(tp)):
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


# -- strategies: any instance of a wire class, from its type hints --------------------

_WORDS = ["", "a", "schedule", "manual", "retry", "catchup", "dependent", "lost", "cancelled"]
_WORDS += ["allow", "forbid", "skip", "all", "latest", "success", "failed", "1h", "@every 5s"]


def _values(tp: Any) -> st.SearchStrategy[Any]:
    if tp is int:
        return st.integers(-3, 2**62) | st.integers(-(2**70), 2**70)
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is bool:
        return st.booleans()
    if tp is str:
        return st.sampled_from(_WORDS) | st.text(max_size=4)
    if tp is bytes:
        return st.binary(max_size=8)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in args if a is not type(None))
        return st.none() | _values(inner)
    if origin is tuple:
        return st.lists(_values(args[0]), max_size=2).map(tuple)
    if origin is frozenset:
        return st.frozensets(_values(args[0]), max_size=2)
    if origin is dict:
        return st.dictionaries(_values(args[0]), _values(args[1]), max_size=2)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    assert isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_named_tuple(tp)), tp
    return _instances(tp)


def _deferred(tp: Any) -> st.SearchStrategy[Any]:
    return st.deferred(lambda: _values(tp))  # recursive structs refer to themselves


def _build(cls: type, values: tuple[Any, ...]) -> Any:
    try:
        return cls(*values)
    except (TypeError, ValueError):  # the class's own validation refused them
        return None


def _instances(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    parts = st.tuples(*(_deferred(hints[name]) for name in _field_names(cls)))
    return parts.map(lambda v: _build(cls, v)).filter(lambda m: m is not None)


CODECS = {
    "commands": COMMANDS,
    "execution": EXECUTION_CODEC,
    "raft": RAFT_CODEC,
    "swim": Codec(_STREAM_KINDS),
    "snapshot": _SNAPSHOTS,
}
REFERENCES = {name: ReferenceCodec(codec.kinds) for name, codec in CODECS.items()}


def _message(name: str) -> st.SearchStrategy[Any]:
    classes = sorted(CODECS[name].kinds.values(), key=lambda c: c.__name__)
    return st.sampled_from(classes).flatmap(_instances)


_GARBAGE: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, False, 0, -1, 2**64, 1.5, "", "x", b"", b"x", [], {}]
)


@st.composite
def _mangled(draw: st.DrawFn, raw: Any) -> Any:
    """``raw`` with one element somewhere replaced, dropped or added."""
    if not isinstance(raw, list | dict):
        return draw(_GARBAGE)
    if isinstance(raw, dict):
        if not raw or draw(st.booleans()):
            return {**raw, draw(_GARBAGE.filter(lambda g: g.__hash__ is not None)): 1}
        key = draw(st.sampled_from(list(raw)))
        return {**raw, key: draw(_mangled(raw[key]))}
    how = draw(st.sampled_from(["replace", "dive", "drop", "add"]))
    if how == "add" or not raw:
        return [*raw, draw(_GARBAGE)]
    i = draw(st.integers(0, len(raw) - 1))
    if how == "drop":
        return raw[:i] + raw[i + 1 :]
    new = draw(_GARBAGE) if how == "replace" else draw(_mangled(raw[i]))
    return [*raw[:i], new, *raw[i + 1 :]]


def _outcome(codec: Any, body: bytes) -> Any:
    try:
        return codec.decode(body)
    except RemoteProtocolError:
        return RemoteProtocolError


# Five codecs, deep messages: half the profile's examples per codec keeps CI quick.
_SETTINGS = settings(
    max_examples=max(10, settings().max_examples // 2),
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


@pytest.mark.parametrize("name", sorted(CODECS))
@_SETTINGS
@given(data=st.data())
def test_same_bytes_and_round_trip(name: str, data: st.DataObject) -> None:
    msg = data.draw(_message(name))
    body = CODECS[name].encode(msg)
    assert body == REFERENCES[name].encode(msg)
    assert CODECS[name].to_wire(msg) == REFERENCES[name].to_wire(msg)
    assert CODECS[name].decode(body) == msg


@pytest.mark.parametrize("name", sorted(CODECS))
@_SETTINGS
@given(data=st.data())
def test_mangled_input_is_refused_or_read_alike(name: str, data: st.DataObject) -> None:
    msg = data.draw(_message(name))
    raw = data.draw(_mangled(CODECS[name].to_wire(msg)))
    body = cbor2.dumps(raw)
    assert _outcome(CODECS[name], body) == _outcome(REFERENCES[name], body)


# -- compilation corner cases ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Tree:
    label: str
    children: tuple[Tree, ...]
    parent: Tree | None


@dataclasses.dataclass(frozen=True)
class NoSlots:
    n: int
    ratio: float


@dataclasses.dataclass(frozen=True, slots=True)
class OwnInit:
    n: int

    def __init__(self, n: int) -> None:
        object.__setattr__(self, "n", n * 2)


@dataclasses.dataclass(slots=True)
class Mutable:
    n: int
    tags: dict[str, tuple[int, ...]]


class Loose(enum.Enum):
    ONE = 1
    TWO = "two"

    @classmethod
    def _missing_(cls, value: object) -> Loose | None:
        return cls.ONE if value == "one" else None


@dataclasses.dataclass(frozen=True, slots=True)
class WithEnum:
    loose: Loose
    many: frozenset[Loose]


def test_recursive_structs() -> None:
    codec = Codec({1: Tree})
    leaf = Tree("leaf", (), None)
    tree = Tree("root", (leaf, Tree("mid", (leaf,), leaf)), None)
    assert codec.decode(codec.encode(tree)) == tree
    assert codec.encode(tree) == ReferenceCodec({1: Tree}).encode(tree)
    with pytest.raises(RemoteProtocolError):
        codec.decode(cbor2.dumps([1, "root", [["leaf", [], 5]], None]))


def test_classes_without_slots_or_with_their_own_init_are_built_by_calling_them() -> None:
    codec = Codec({1: NoSlots, 2: OwnInit, 3: Mutable})
    assert codec.decode(cbor2.dumps([1, 3, 2])) == NoSlots(3, 2.0)
    assert codec.decode(cbor2.dumps([2, 4])) == OwnInit(4)  # its __init__ doubled it once
    own = codec.decode(cbor2.dumps([2, 4]))
    assert isinstance(own, OwnInit)
    assert own.n == 8
    assert codec.decode(cbor2.dumps([3, 1, {"a": [1, 2]}])) == Mutable(1, {"a": (1, 2)})


def test_enum_values_go_through_the_enum() -> None:
    codec = Codec({1: WithEnum})
    assert codec.decode(cbor2.dumps([1, "one", []])) == WithEnum(Loose.ONE, frozenset())
    assert codec.decode(cbor2.dumps([1, "two", [1, "two"]])) == WithEnum(
        Loose.TWO, frozenset({Loose.ONE, Loose.TWO})
    )
    for bad in ([1, 3, []], [1, True, []], [1, 1, [1.0]]):
        with pytest.raises(RemoteProtocolError):
            codec.decode(cbor2.dumps(bad))


def test_kinds_and_misuse() -> None:
    codec = Codec({1: NoSlots})
    assert dict(codec.kinds) == {1: NoSlots}
    with pytest.raises(LocalProtocolError):
        codec.to_wire(Mutable(1, {}))
    with pytest.raises(TypeError):
        Codec({1: int})


class _Pair(NamedTuple):
    p: int
    q: str


class Doubled(_Pair):
    """A named tuple with its own ``__new__``: decoded by calling the class."""

    def __new__(cls, p: int, q: str) -> Doubled:
        return super().__new__(cls, p * 2, q)


@dataclasses.dataclass(frozen=True, slots=True)
class Pairs:
    plain: _Pair
    doubled: Doubled
    keyed: dict[str, _Pair]


def test_named_tuples_are_built_as_their_class_builds_them() -> None:
    codec = Codec({1: Pairs})
    reference = ReferenceCodec({1: Pairs})
    body = cbor2.dumps([1, [1, "a"], [3, "b"], {"k": [5, "c"]}])
    assert codec.decode(body) == reference.decode(body)
    msg = codec.decode(body)
    assert isinstance(msg, Pairs)
    assert msg.doubled == (6, "b") and type(msg.doubled) is Doubled
    assert type(msg.plain) is _Pair and type(msg.keyed["k"]) is _Pair


def _chain(depth: int) -> type:
    """Structs nested ``depth`` deep, each led by a map of the one below."""
    cls = dataclasses.make_dataclass("D0", [("n", int)], frozen=True, slots=True)
    for i in range(1, depth):
        fields = [("first", dict[str, cls]), ("inner", cls | None)]  # type: ignore[valid-type]
        cls = dataclasses.make_dataclass(f"D{i}", fields, frozen=True, slots=True)
    return cls


@pytest.mark.parametrize("depth", [1, 3, 9])
def test_structs_nested_deeper_than_inlined_read_alike(depth: int) -> None:
    top = _chain(depth)
    codec, reference = Codec({1: top}), ReferenceCodec({1: top})

    def value(cls: Any, level: int) -> Any:
        if level == 0:
            return cls(7)
        below = typing.get_type_hints(cls)["inner"].__args__[0]
        return cls({"a": value(below, level - 1)}, value(below, level - 1))

    msg = value(top, depth - 1)
    body = codec.encode(msg)
    assert body == reference.encode(msg)
    assert codec.decode(body) == msg
    raw = codec.to_wire(msg)
    leaf = raw
    while len(leaf) > 2:  # down the inner chain to the innermost struct
        leaf = leaf[-1]
    leaf[-1] = "seven"
    bad = cbor2.dumps(raw)
    assert _outcome(codec, bad) == _outcome(reference, bad) == RemoteProtocolError
