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

The per-class encoders and decoders are generated as Python source once, when
the codec is built (as :mod:`dataclasses` generates ``__init__``): one function
per class that reads or checks every field inline, with no per-call dispatch
on type hints and no ``getattr`` by name.  Every log entry is decoded on every
server and every execution message once per hop, so this is the hottest code
of a busy cluster; the generated functions accept and produce exactly what a
field-by-field interpretation of the hints would.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Codec", "plain_twin", "slot_copier", "slot_maker"]

_Enc = Callable[[Any], Any]
_Dec = Callable[[Any], Any]


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what)


# Types whose wire form is the value itself and whose check is a bare type test.
_CHECKED = {int: "int", bool: "bool", str: "str", bytes: "bytes"}


def _optional_of(tp: Any) -> Any | None:
    """``X`` for ``X | None`` (``None`` for anything else); other unions are refused."""
    if typing.get_origin(tp) not in (types.UnionType, typing.Union):
        return None
    args = typing.get_args(tp)
    rest = [a for a in args if a is not type(None)]
    if len(rest) != 1 or len(args) != 2:
        raise TypeError(f"only X | None unions are supported, not {tp!r}")
    return rest[0]


def _is_named_tuple(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _slot_setters(cls: type) -> list[Callable[[Any, Any], None]] | None:
    """Per-field slot setters when building ``cls`` field by field is exactly its ``__init__``.

    That holds for a dataclass whose ``__init__`` is the generated one (its
    code comes from ``exec``, not from a source file), every field of which
    is an ``__init__`` parameter stored in a slot, and whose ``__setattr__``
    is either the frozen guard (which the generated ``__init__`` bypasses) or
    ``object``'s.  Anything else is built by calling the class.
    """
    params = getattr(cls, "__dataclass_params__", None)
    code = getattr(vars(cls).get("__init__"), "__code__", None)
    if params is None or code is None or code.co_filename != "<string>":
        return None
    if not params.frozen and any("__setattr__" in vars(k) for k in cls.__mro__[:-1]):
        return None
    setters = []
    for f in dataclasses.fields(cls):
        slot = getattr(cls, f.name, None)
        if not f.init or type(slot) is not types.MemberDescriptorType:
            return None
        setters.append(slot.__set__)
    return setters


def plain_twin(cls: type) -> type | None:
    """A plain class with the slot layout of the slots class ``cls``, or None.

    An instance of the twin, filled by ordinary attribute stores and then
    given ``__class__ = cls``, is ``cls`` built slot by slot.  The stores are
    the interpreter's specialised slot writes; the frozen guard of ``cls``
    leaves a builder nothing faster than one call through a slot's
    ``__set__`` per field (each packing its arguments in a tuple), which
    costs several times more for classes built on every record of every
    replica.  None when the layouts are not compatible for ``__class__``
    assignment (the assignment is tried here, once, on an empty instance).
    """
    slots = vars(cls).get("__slots__")
    if cls.__bases__ != (object,) or not isinstance(slots, tuple):
        return None
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": slots, "__module__": cls.__module__})
    probe: Any = object.__new__(twin)
    try:
        probe.__class__ = cls
    except TypeError:
        return None
    return twin


def _required_twin(cls: type) -> type:
    twin = plain_twin(cls)
    if twin is None:
        raise TypeError(f"{cls.__name__} is not a plain slots dataclass")
    return twin


def slot_maker(cls: type, *, validated: bool = False) -> Callable[..., Any]:
    """``f(*values)``: a new instance of a frozen slots dataclass, its fields given
    positionally; exactly what its ``__init__`` would build.

    Generated once, it is a straight line of slot stores into the class's
    plain twin (:func:`plain_twin`), which then becomes the class: about a
    third of the cost of a frozen ``__init__``, whose every field is an
    ``object.__setattr__`` call.  For records built on every datagram, state
    change or applied entry.  A class with ``__post_init__`` checks is only
    built this way from values that already passed the same checks
    (``validated``).
    """
    assert validated or not hasattr(cls, "__post_init__")
    names = [f.name for f in dataclasses.fields(cls)]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_twin": _required_twin(cls)}
    lines = [f"def make({', '.join(names)}):", "    n = _new(_twin)"]
    lines.extend(f"    n.{name} = {name}" for name in names)
    lines.append("    n.__class__ = _cls")
    lines.append("    return n")
    exec("\n".join(lines), env)  # source built here from field names only
    fn: Callable[..., Any] = env["make"]
    return fn


def slot_copier(cls: type, changed: tuple[str, ...]) -> Callable[..., Any]:
    """``f(obj, *values)``: a copy of a frozen slots dataclass with ``changed``
    fields replaced, built as :func:`slot_maker` builds.

    Only for copies of an already validated object whose new values the
    caller has validated itself: nothing is checked.
    """
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_twin": _required_twin(cls)}
    lines = [f"def copy(o, {', '.join(changed)}):", "    n = _new(_twin)"]
    for f in dataclasses.fields(cls):
        value = f.name if f.name in changed else f"o.{f.name}"
        lines.append(f"    n.{f.name} = {value}")
    lines.append("    n.__class__ = _cls")
    lines.append("    return n")
    exec("\n".join(lines), env)  # source built here from field names only
    fn: Callable[..., Any] = env["copy"]
    return fn


class _Source:
    """Generated functions and the objects they refer to by name."""

    def __init__(self) -> None:
        self.env: dict[str, Any] = {"_bad": _bad}
        self._names = itertools.count()

    def ref(self, obj: Any) -> str:
        name = f"_r{next(self._names)}"
        self.env[name] = obj
        return name

    def var(self) -> str:
        return f"_v{next(self._names)}"

    def build(self, name: str, lines: list[str]) -> Callable[[Any], Any]:
        env = dict(self.env)
        exec("\n".join(lines), env)  # source built here from type hints only
        fn: Callable[[Any], Any] = env[name]
        return fn


# Struct nesting inlined into one generated function; deeper levels are calls.
_INLINE_DEPTH = 6


def _plain_named_tuple(cls: type) -> bool:
    """Is ``cls(*fields)`` exactly ``tuple.__new__(cls, fields)``?

    True for a named tuple whose ``__new__`` is the one :mod:`collections`
    generates (a one-line wrapper around ``tuple.__new__``) and that has no
    ``__init__`` of its own: calling ``tuple.__new__`` directly skips a
    Python-level call per key decoded.
    """
    new = getattr(cls, "__new__", None)
    code = getattr(new, "__code__", None)
    if code is None or code.co_filename != "<string>":
        return False
    if getattr(cls, "__init__", None) is not object.__init__:
        return False
    if getattr(new, "__globals__", {}).get("_tuple_new") is not tuple.__new__:
        return False
    fields: tuple[str, ...] = getattr(cls, "_fields", ())
    return bool(code.co_varnames[1 : code.co_argcount] == fields)


class Codec:
    """Encoder and strict decoder for one family of messages.

    ``kinds`` maps the small integer that identifies each message type on the
    wire to its dataclass.  Each protocol (Raft RPC, gossip, execution) owns
    one codec; kinds are only unique within a codec.

    :attr:`to_wire` and :attr:`from_wire` are each one generated function
    with every message class and every nested struct inline (a branch per
    kind, no call per nested struct, container or key): a Python call costs
    as much as checking a dozen fields, and every execution message and log
    entry crosses these once per hop.
    """

    to_wire: Callable[[object], list[Any]]
    """The CBOR-ready array of a message, for embedding in a larger frame;
    a class not of this codec raises LocalProtocolError (the caller's bug)."""

    from_wire: Callable[[Any], object]
    """Validate an already-parsed array into a message; anything malformed
    raises RemoteProtocolError."""

    def __init__(self, kinds: Mapping[int, type]) -> None:
        self._src = _Source()
        self._src.env["_local"] = LocalProtocolError
        self._structs: dict[type, tuple[_Enc, _Dec]] = {}
        self._compiling: set[type] = set()
        self._kinds = dict(kinds)
        for cls in self._kinds.values():
            self._fields(cls)  # refuse what is not a struct before generating anything
        self.from_wire = self._build_from_wire()
        self.to_wire = self._build_to_wire()

    # -- public API ---------------------------------------------------------

    @property
    def kinds(self) -> Mapping[int, type]:
        """The message classes of this codec by wire kind."""
        return types.MappingProxyType(self._kinds)

    def encode(self, msg: object) -> bytes:
        """Serialise a registered message; misuse is the caller's bug."""
        return cbor2.dumps(self.to_wire(msg))

    def decode(self, body: bytes) -> object:
        """Parse one message body; anything malformed raises RemoteProtocolError."""
        try:
            raw = cbor2.loads(body)
        except Exception as exc:  # the parser's failure modes are many; all are the peer's
            raise RemoteProtocolError(f"undecodable CBOR: {exc}") from None
        return self.from_wire(raw)

    # -- compilation ----------------------------------------------------------

    @staticmethod
    def _fields(tp: type) -> list[tuple[str, Any]]:
        if _is_named_tuple(tp):
            # A NamedTuple key hashes and compares in C: worth it for the
            # small records that are dictionary keys on every hot path.
            hints = typing.get_type_hints(tp)
            return [(name, hints[name]) for name in tp._fields]  # type: ignore[attr-defined]
        if not dataclasses.is_dataclass(tp):
            raise TypeError(f"{tp!r} is not a dataclass")
        hints = typing.get_type_hints(tp)
        fields = [f for f in dataclasses.fields(tp) if f.init]
        if any(f.kw_only for f in fields):
            raise TypeError(f"{tp.__name__}: wire messages take positional fields")
        return [(f.name, hints[f.name]) for f in fields]

    def _build_from_wire(self) -> Callable[[Any], object]:
        lines = [
            "def from_wire(raw):",
            "    if type(raw) is not list or not raw:",
            "        raise _bad('a message is a non-empty array')",
            "    kind = raw[0]",
            "    if type(kind) is not int:",
            "        raise _bad('message kind must be an int')",
        ]
        lines.extend(self._kind_branches(sorted(self._kinds), "    "))
        lines.append("    raise _bad(f'unknown message kind {kind}')")
        fn: Callable[[Any], object] = self._src.build("from_wire", lines)
        return fn

    def _kind_branches(self, kinds: list[int], pad: str) -> list[str]:
        """Bisect on the kind (a few int comparisons), then decode inline."""
        if len(kinds) > 3:
            mid = kinds[len(kinds) // 2]
            return [
                f"{pad}if kind < {mid}:",
                *self._kind_branches(kinds[: len(kinds) // 2], pad + "    "),
                f"{pad}else:",
                *self._kind_branches(kinds[len(kinds) // 2 :], pad + "    "),
            ]
        lines = []
        for kind in kinds:
            cls = self._kinds[kind]
            lines.append(f"{pad}if kind == {kind}:")
            lines.extend(self._struct_lines(cls, "raw", pad + "    ", top=True, inlined=()))
            lines.append(f"{pad}    return raw")
        return lines

    def _build_to_wire(self) -> Callable[[object], list[Any]]:
        src = self._src
        lines = ["def to_wire(v):", "    t = type(v)"]
        for kind, cls in sorted(self._kinds.items()):
            items = [str(kind)] + [
                self._enc_expr(tp, f"v.{name}", (cls,)) for name, tp in self._fields(cls)
            ]
            lines.append(f"    if t is {src.ref(cls)}:")
            lines.append(f"        return [{', '.join(items)}]")
        lines.append("    raise _local(f'{t.__name__} is not a message of this codec')")
        fn: Callable[[object], list[Any]] = src.build("to_wire", lines)
        return fn

    def _struct(self, tp: type) -> tuple[_Enc, _Dec]:
        """Standalone encoder and decoder of a struct, for the levels not inlined."""
        done = self._structs.get(tp)
        if done is not None:
            return done
        if tp in self._compiling:
            # A struct that contains itself: resolve through the table once built.
            structs = self._structs

            def enc_late(v: Any) -> Any:
                return structs[tp][0](v)

            def dec_late(v: Any) -> Any:
                return structs[tp][1](v)

            return enc_late, dec_late
        self._compiling.add(tp)
        try:
            src = self._src
            items = [self._enc_expr(t, f"v.{name}", (tp,)) for name, t in self._fields(tp)]
            enc = src.build("enc", ["def enc(v):", f"    return [{', '.join(items)}]"])
            body = self._struct_lines(tp, "v", "    ", top=False, inlined=())
            dec = src.build("dec", ["def dec(v):", *body, "    return v"])
        finally:
            self._compiling.discard(tp)
        self._structs[tp] = (enc, dec)
        return enc, dec

    def _struct_lines(
        self, cls: type, var: str, pad: str, *, top: bool, inlined: tuple[type, ...]
    ) -> list[str]:
        """Statements that check the array ``var`` and replace it with a ``cls``.

        ``top``: a message, whose first element is its kind (already checked).
        """
        src = self._src
        fields = self._fields(cls)
        n = len(fields)
        name = src.ref(cls.__name__)
        cls_ref = src.ref(cls)
        offset = 1 if top else 0
        inlined = (*inlined, cls)
        lines = []
        if not top:
            lines.append(
                f"{pad}if type({var}) is not list: raise _bad({name} + ': expected array')"
            )
        lines.append(f"{pad}if len({var}) != {n + offset}:")
        got = f"{{len({var}) - {offset}}}"
        lines.append(f"{pad}    raise _bad(f'{{{name}}}: expected {n} fields, got {got}')")
        args = [src.var() for _ in range(n)]
        targets = (["_"] if top else []) + args
        if targets:
            lines.append(f"{pad}{', '.join(targets)}, = {var}")
        for arg, (_, tp) in zip(args, fields, strict=True):
            lines.extend(self._check_lines(tp, arg, pad, inlined))
        if _is_named_tuple(cls) and _plain_named_tuple(cls):
            # Nothing to validate and nothing that can raise.
            values = "".join(f"{a}, " for a in args)
            lines.append(f"{pad}{var} = {src.ref(tuple.__new__)}({cls_ref}, ({values}))")
            return lines
        lines.append(f"{pad}try:")
        setters = _slot_setters(cls)
        twin = None if setters is None else plain_twin(cls)
        inner = pad + "    "
        if setters is None:
            lines.append(f"{inner}{var} = {cls_ref}({', '.join(args)})")
        else:
            # What the generated __init__ does, minus its per-field name lookups.
            o = src.var()
            if twin is not None:
                lines.append(f"{inner}{o} = {src.ref(object.__new__)}({src.ref(twin)})")
                for arg, (field, _) in zip(args, fields, strict=True):
                    lines.append(f"{inner}{o}.{field} = {arg}")
                lines.append(f"{inner}{o}.__class__ = {cls_ref}")
            else:
                lines.append(f"{inner}{o} = {src.ref(object.__new__)}({cls_ref})")
                for arg, setter in zip(args, setters, strict=True):
                    lines.append(f"{inner}{src.ref(setter)}({o}, {arg})")
            if hasattr(cls, "__post_init__"):
                lines.append(f"{inner}{o}.__post_init__()")
            lines.append(f"{inner}{var} = {o}")
        lines.append(f"{pad}except (TypeError, ValueError) as exc:  # __post_init__ validation")
        lines.append(f"{pad}    raise _bad(f'{{{name}}}: {{exc}}') from None")
        return lines

    # -- decoding ---------------------------------------------------------------

    def _check_lines(self, tp: Any, var: str, pad: str, inlined: tuple[type, ...]) -> list[str]:
        """Statements that validate ``var`` in place (converting it where needed)."""
        checked = _CHECKED.get(tp)
        if checked is not None:
            return [
                f"{pad}if type({var}) is not {checked}:",
                f"{pad}    raise _bad(f'expected {checked}, got {{type({var}).__name__}}')",
            ]
        if tp is float:
            return [
                f"{pad}if type({var}) is not float:",
                f"{pad}    if type({var}) is not int:",
                f"{pad}        raise _bad(f'expected float, got {{type({var}).__name__}}')",
                f"{pad}    {var} = float({var})",
            ]
        inner = _optional_of(tp)
        if inner is not None:
            return [
                f"{pad}if {var} is not None:",
                *self._check_lines(inner, var, pad + "    ", inlined),
            ]
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is tuple:
            if len(args) != 2 or args[1] is not Ellipsis:
                raise TypeError(f"only tuple[X, ...] is supported, not {tp!r}")
            return self._sequence_lines(args[0], tuple, var, pad, inlined)
        if origin is frozenset:
            return self._sequence_lines(args[0], frozenset, var, pad, inlined)
        if origin is dict:
            return self._mapping_lines(args[0], args[1], var, pad, inlined)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return [f"{pad}{var} = {self._src.ref(self._enum_decoder(tp))}({var})"]
        if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_named_tuple(tp)):
            if tp in inlined or len(inlined) >= _INLINE_DEPTH:
                return [f"{pad}{var} = {self._src.ref(self._struct(tp)[1])}({var})"]
            return self._struct_lines(tp, var, pad, top=False, inlined=inlined)
        raise TypeError(f"unsupported wire type {tp!r}")

    def _pure(self, tp: Any) -> bool:
        """Is the decoded value the wire value itself (checks, no conversion)?"""
        if tp in _CHECKED:
            return True
        inner = _optional_of(tp)
        return inner is not None and self._pure(inner)

    def _sequence_lines(
        self, item: Any, build: Callable[[Any], Any], var: str, pad: str, inlined: tuple[type, ...]
    ) -> list[str]:
        src = self._src
        build_ref = src.ref(build)
        x = src.var()
        lines = [
            f"{pad}if type({var}) is not list:",
            f"{pad}    raise _bad(f'expected array, got {{type({var}).__name__}}')",
        ]
        if self._pure(item):
            lines.append(f"{pad}for {x} in {var}:")
            lines.extend(self._check_lines(item, x, pad + "    ", inlined))
            lines.append(f"{pad}{var} = {build_ref}({var})")
        else:
            acc = src.var()
            lines.append(f"{pad}{acc} = []")
            lines.append(f"{pad}for {x} in {var}:")
            lines.extend(self._check_lines(item, x, pad + "    ", inlined))
            lines.append(f"{pad}    {acc}.append({x})")
            lines.append(f"{pad}{var} = {build_ref}({acc})")
        return lines

    def _mapping_lines(
        self, key: Any, value: Any, var: str, pad: str, inlined: tuple[type, ...]
    ) -> list[str]:
        src = self._src
        k, x = src.var(), src.var()
        lines = [
            f"{pad}if type({var}) is not dict:",
            f"{pad}    raise _bad(f'expected map, got {{type({var}).__name__}}')",
        ]
        if self._pure(key) and self._pure(value):
            lines.append(f"{pad}for {k}, {x} in {var}.items():")
            lines.extend(self._check_lines(key, k, pad + "    ", inlined))
            lines.extend(self._check_lines(value, x, pad + "    ", inlined))
            lines.append(f"{pad}{var} = dict({var})")
        else:
            # The key is decoded before its value, as a dict comprehension would.
            acc = src.var()
            lines.append(f"{pad}{acc} = {{}}")
            lines.append(f"{pad}for {k}, {x} in {var}.items():")
            lines.extend(self._check_lines(key, k, pad + "    ", inlined))
            lines.extend(self._check_lines(value, x, pad + "    ", inlined))
            lines.append(f"{pad}    {acc}[{k}] = {x}")
            lines.append(f"{pad}{var} = {acc}")
        return lines

    @staticmethod
    def _enum_decoder(tp: type[enum.Enum]) -> _Dec:
        members = {m.value: m for m in tp}
        name = tp.__name__

        def dec_enum(v: Any) -> Any:
            if type(v) is not int and type(v) is not str:
                raise _bad(f"{name}: expected int or str")
            member = members.get(v)
            if member is not None:
                return member
            try:
                return tp(v)
            except ValueError:
                raise _bad(f"{name}: invalid value {v!r}") from None

        return dec_enum

    # -- encoding ---------------------------------------------------------------

    def _enc_expr(self, tp: Any, expr: str, inlined: tuple[type, ...]) -> str:
        """An expression for the wire form of ``expr`` (itself when nothing changes).

        ``expr`` may be evaluated more than once (it is an attribute read or
        a variable) and nested structs are written out field by field, bound
        once with ``:=``, instead of calling an encoder per struct.
        """
        if tp in _CHECKED or tp is float:
            return expr
        src = self._src
        inner = _optional_of(tp)
        if inner is not None:
            y = src.var()
            inner_expr = self._enc_expr(inner, y, inlined)
            if inner_expr == y:
                return expr
            return f"(None if ({y} := {expr}) is None else {inner_expr})"
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is tuple or origin is frozenset:
            if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
                raise TypeError(f"only tuple[X, ...] is supported, not {tp!r}")
            y = src.var()
            item = self._enc_expr(args[0], y, inlined)
            return f"list({expr})" if item == y else f"[{item} for {y} in {expr}]"
        if origin is dict:
            k, x = src.var(), src.var()
            key = self._enc_expr(args[0], k, inlined)
            val = self._enc_expr(args[1], x, inlined)
            if key == k and val == x:
                return f"dict({expr})"
            return f"{{{key}: {val} for {k}, {x} in {expr}.items()}}"
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return f"{expr}.value"
        if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_named_tuple(tp)):
            if tp in inlined or len(inlined) >= _INLINE_DEPTH:
                return f"{src.ref(self._struct(tp)[0])}({expr})"
            y = expr if expr.isidentifier() else src.var()
            nested = (*inlined, tp)
            items = [self._enc_expr(t, f"{y}.{name}", nested) for name, t in self._fields(tp)]
            if y == expr:
                return f"[{', '.join(items)}]"
            # The condition binds the struct once, before the fields are read
            # (a one-element tuple is always true).
            return f"([{', '.join(items)}] if (({y} := {expr}),) else None)"
        raise TypeError(f"unsupported wire type {tp!r}")
