"""A small subset of Go's ``text/template``, enough for Dkron's notification payloads.

Operators copy their ``webhook-payload`` and ``mail-payload`` templates from
Dkron's documentation and from existing ``dkron.yml`` files, so the syntax
those use must render byte for byte as Go renders it, and a broken template
must produce Dkron's body (``Failed to parse template: …``) rather than no
notification at all.  Supported:

* text, ``{{.Field}}`` and field chains, ``{{.}}``, ``$`` and ``$.Field``;
* trim markers ``{{- `` and `` -}}``, comments ``{{/* … */}}``;
* ``{{if p}}…{{else if p}}…{{else}}…{{end}}``;
* literals: Go strings (``"…"`` with escapes, raw `` `…` ``), integers,
  ``true``/``false``; parenthesised pipelines and ``|`` pipes;
* functions ``eq``, ``ne``, ``not``, ``and``, ``or``, ``len``, ``print`` and
  ``printf`` (verbs ``%v %s %d %t %q %%``).

``range``, ``with``, ``define``/``template``/``block``, variables other than
``$`` and the remaining built-in functions are parse errors.  Error texts
follow Go's (``template: report:1: unexpected EOF``, ``template: report:1:2:
executing "report" at <.Nope>: can't evaluate field Nope in type …``).

Pure: no I/O.  The only exception that leaves this module is
:class:`TemplateError` (and its two subclasses).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from dkron.golang import go_quote

__all__ = [
    "Template",
    "TemplateError",
    "TemplateExecError",
    "TemplateParseError",
    "parse",
    "render_payload",
]

_SPACE = " \t\r\n"
_KEYWORDS = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}
)
_UNSUPPORTED = frozenset({"block", "break", "continue", "define", "range", "template", "with"})
_FUNCS = frozenset({"and", "eq", "len", "ne", "not", "or", "print", "printf"})
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}
#: Pipelines nest through parentheses; bound the depth so that hostile input
#: cannot exhaust the interpreter's stack.
_MAX_DEPTH = 100


class TemplateError(ValueError):
    """A template that cannot be parsed or executed; ``str()`` is Go's error text."""


class TemplateParseError(TemplateError):
    """Go's ``template.Parse`` would refuse the text."""


class TemplateExecError(TemplateError):
    """Go's ``Template.Execute`` would stop with an error."""


# -- lexing ----------------------------------------------------------------------------


class _K(enum.Enum):
    FIELD = "field"  # .A.B (names in ``names``)
    DOT = "dot"
    VAR = "variable"  # $ or $.A.B
    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"
    IDENT = "identifier"
    PIPE = "|"
    LPAREN = "("
    RPAREN = ")"
    CHAR = "char"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tok:
    kind: _K
    text: str  # as written
    pos: int  # offset in the template
    value: object = None  # decoded literal; names tuple for fields and variables

    def describe(self) -> str:
        """Go's ``item.String()``: keywords in angle brackets, the rest quoted."""
        if self.kind is _K.IDENT and self.text in _KEYWORDS:
            return f"<{self.text}>"
        quoted = go_quote(self.text)
        if len(self.text) > 10:
            return go_quote(self.text[:10]) + "..."
        return quoted


# -- the tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Field:
    names: tuple[str, ...]
    pos: int
    root: bool = False  # ``$.A``: from the data root rather than dot

    def __str__(self) -> str:
        return ("$" if self.root else "") + "".join("." + n for n in self.names)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Dot:
    pos: int
    root: bool = False

    def __str__(self) -> str:
        return "$" if self.root else "."


@dataclass(frozen=True, slots=True, kw_only=True)
class _Literal:
    value: str | int | bool
    text: str
    pos: int

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ident:
    name: str
    pos: int

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class _Command:
    args: tuple[_Arg, ...]
    pos: int

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pipe:
    cmds: tuple[_Command, ...]
    pos: int

    def __str__(self) -> str:
        return " | ".join(str(c) for c in self.cmds)


_Arg = _Field | _Dot | _Literal | _Ident | _Pipe


@dataclass(frozen=True, slots=True, kw_only=True)
class _If:
    pipe: _Pipe
    then: tuple[_Node, ...]
    otherwise: tuple[_Node, ...]


_Node = str | _Pipe | _If


# -- values ---------------------------------------------------------------------------


def _go_type(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    return str(getattr(value, "go_type", type(value).__name__))


def _print(value: object) -> str:
    """``fmt.Print`` of a value: Go's ``true``/``false``, a struct as ``{a b}``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Struct):
        return "{" + " ".join(_print(v) for v in value.fields.values()) + "}"
    return str(value)


def _truth(value: object) -> bool:
    if isinstance(value, bool | int | str):
        return bool(value)
    return True


@dataclass(frozen=True, slots=True)
class _Struct:
    fields: Mapping[str, object]
    go_type: str


# -- parsing -------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name

    def fail(self, pos: int, message: str) -> TemplateParseError:
        line = self.text.count("\n", 0, min(pos, len(self.text))) + 1
        return TemplateParseError(f"template: {self.name}:{line}: {message}")

    # A template is a stream of text and actions; ``actions`` yields
    # ("text", str) and ("action", tokens, start) pairs with trim markers applied.
    def actions(self) -> Iterator[tuple[str, object, int]]:
        text = self.text
        i = 0
        trim_next = False
        while i <= len(text):
            j = text.find("{{", i)
            chunk = text[i:] if j < 0 else text[i:j]
            if trim_next:
                chunk = chunk.lstrip(_SPACE)
            trim_next = False
            if j < 0:
                if chunk:
                    yield "text", chunk, i
                return
            k = j + 2
            if text.startswith("-", k) and text[k + 1 : k + 2] in tuple(_SPACE):
                chunk = chunk.rstrip(_SPACE)
                k += 2
            if chunk:
                yield "text", chunk, i
            if text.startswith("/*", k):
                end = text.find("*/", k + 2)
                if end < 0:
                    raise self.fail(j, "unclosed comment")
                after = end + 2
                if text.startswith("}}", after):
                    i = after + 2
                elif text[after : after + 1] in tuple(_SPACE) and text.startswith("-}}", after + 1):
                    i, trim_next = after + 4, True
                else:
                    raise self.fail(j, "comment ends before closing delimiter")
                continue
            tokens, i, trim_next = self.lex_action(k, j)
            yield "action", tokens, j

    def lex_action(self, k: int, start: int) -> tuple[list[_Tok], int, bool]:
        text, n = self.text, len(self.text)
        tokens: list[_Tok] = []
        while True:
            if k >= n:
                raise self.fail(start, "unclosed action")
            c = text[k]
            if text.startswith("}}", k):
                return tokens, k + 2, False
            if c in _SPACE:
                if text.startswith("-}}", k + 1):
                    return tokens, k + 4, True
                k += 1
                continue
            if c == "|":
                tokens.append(_Tok(kind=_K.PIPE, text=c, pos=k))
                k += 1
            elif c == "(":
                tokens.append(_Tok(kind=_K.LPAREN, text=c, pos=k))
                k += 1
            elif c == ")":
                tokens.append(_Tok(kind=_K.RPAREN, text=c, pos=k))
                k += 1
            elif c == '"':
                k = self.lex_string(k, tokens)
            elif c == "`":
                end = text.find("`", k + 1)
                if end < 0:
                    raise self.fail(k, "unterminated raw quoted string")
                raw = text[k : end + 1]
                tokens.append(_Tok(kind=_K.STRING, text=raw, pos=k, value=raw[1:-1]))
                k = end + 1
            elif c in {".", "$"}:
                k = self.lex_field(k, tokens)
            elif c.isdigit() or (c in "+-" and text[k + 1 : k + 2].isdigit()):
                end = k + 1
                while end < n and (text[end].isalnum() or text[end] in "_."):
                    end += 1
                word = text[k:end]
                digits = word.lstrip("+-")
                if not (digits.isascii() and digits.isdigit()):
                    raise self.fail(k, f"bad number syntax: {go_quote(word)}")
                tokens.append(_Tok(kind=_K.NUMBER, text=word, pos=k, value=int(word)))
                k = end
            elif c.isalpha() or c == "_":
                end = k + 1
                while end < n and (text[end].isalnum() or text[end] == "_"):
                    end += 1
                word = text[k:end]
                if word in ("true", "false"):
                    tokens.append(_Tok(kind=_K.BOOL, text=word, pos=k, value=word == "true"))
                else:
                    tokens.append(_Tok(kind=_K.IDENT, text=word, pos=k))
                k = end
            elif c.isascii() and c.isprintable():
                tokens.append(_Tok(kind=_K.CHAR, text=c, pos=k))
                k += 1
            else:
                raise self.fail(k, f"bad character U+{ord(c):04X} {_go_rune(c)}")

    def lex_string(self, k: int, tokens: list[_Tok]) -> int:
        text, n = self.text, len(self.text)
        out: list[str] = []
        i = k + 1
        while True:
            if i >= n or text[i] == "\n":
                raise self.fail(k, "unterminated quoted string")
            c = text[i]
            if c == '"':
                tokens.append(_Tok(kind=_K.STRING, text=text[k : i + 1], pos=k, value="".join(out)))
                return i + 1
            if c != "\\":
                out.append(c)
                i += 1
                continue
            e = text[i + 1 : i + 2]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(e)
            if width is not None:
                digits = text[i + 2 : i + 2 + width]
                if len(digits) == width and all(d in "0123456789abcdefABCDEF" for d in digits):
                    code = int(digits, 16)
                    if e == "x":
                        # a \x escape is one byte; keep non-ASCII bytes as surrogates
                        out.append(chr(code) if code < 0x80 else chr(0xDC00 + code))
                        i += 2 + width
                        continue
                    if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
                        out.append(chr(code))
                        i += 2 + width
                        continue
            elif e and e in "01234567":
                digits = text[i + 1 : i + 4]
                if len(digits) == 3 and all(d in "01234567" for d in digits):
                    code = int(digits, 8)
                    if code <= 0xFF:
                        out.append(chr(code) if code < 0x80 else chr(0xDC00 + code))
                        i += 4
                        continue
            raise self.fail(k, "invalid syntax")

    def lex_field(self, k: int, tokens: list[_Tok]) -> int:
        text, n = self.text, len(self.text)
        start = k
        root = text[k] == "$"
        if root:
            k += 1
            end = k
            while end < n and (text[end].isalnum() or text[end] == "_"):
                end += 1
            if end > k:
                raise self.fail(start, f"undefined variable {go_quote(text[start:end])}")
        names: list[str] = []
        while k < n and text[k] == ".":
            end = k + 1
            while end < n and (text[end].isalnum() or text[end] == "_"):
                end += 1
            if end == k + 1:
                if names or root:
                    raise self.fail(k, "unexpected . after term")
                tokens.append(_Tok(kind=_K.DOT, text=".", pos=k))
                return k + 1
            names.append(text[k + 1 : end])
            k = end
        kind = _K.VAR if root else _K.FIELD
        tokens.append(_Tok(kind=kind, text=text[start:k], pos=start, value=tuple(names)))
        return k

    # -- grammar ------------------------------------------------------------------------

    def parse(self) -> tuple[_Node, ...]:
        stream = self.actions()
        nodes, stop = self.item_list(stream, top=True)
        del stop
        return nodes

    def item_list(
        self, stream: Iterator[tuple[str, object, int]], *, top: bool
    ) -> tuple[tuple[_Node, ...], tuple[str, list[_Tok], int]]:
        """Nodes up to ``{{end}}``/``{{else}}`` (returned as the stop) or EOF at the top."""
        nodes: list[_Node] = []
        for kind, payload, pos in stream:
            if kind == "text":
                assert isinstance(payload, str)
                nodes.append(payload)
                continue
            assert isinstance(payload, list)
            tokens: list[_Tok] = payload
            if not tokens:
                raise self.fail(pos, "missing value for command")
            head = tokens[0]
            if head.kind is _K.IDENT and head.text in ("end", "else"):
                if top:
                    raise self.fail(head.pos, f"unexpected {{{{{head.text}}}}}")
                return tuple(nodes), (head.text, tokens, pos)
            if head.kind is _K.IDENT and head.text == "if":
                nodes.append(self.parse_if(stream, tokens[1:], head.pos))
                continue
            nodes.append(self.pipeline(tokens, pos, context="command"))
        if not top:
            raise self.fail(len(self.text), "unexpected EOF")
        return tuple(nodes), ("eof", [], len(self.text))

    def parse_if(
        self, stream: Iterator[tuple[str, object, int]], tokens: list[_Tok], pos: int
    ) -> _If:
        if not tokens:
            raise self.fail(pos, "missing value for if")
        pipe = self.pipeline(tokens, pos, context="if")
        then, (stop, stop_tokens, stop_pos) = self.item_list(stream, top=False)
        if stop == "end":
            self.expect_alone(stop_tokens, "end")
            return _If(pipe=pipe, then=then, otherwise=())
        # else
        rest = stop_tokens[1:]
        if rest and rest[0].kind is _K.IDENT and rest[0].text == "if":
            # ``{{else if p}}`` is ``{{else}}{{if p}}…{{end}}{{end}}`` sharing one end.
            nested = self.parse_if(stream, rest[1:], rest[0].pos)
            return _If(pipe=pipe, then=then, otherwise=(nested,))
        self.expect_alone(stop_tokens, "else")
        otherwise, (stop, stop_tokens, stop_pos) = self.item_list(stream, top=False)
        if stop != "end":
            raise self.fail(stop_pos, "expected end; found {{else}}")
        self.expect_alone(stop_tokens, "end")
        return _If(pipe=pipe, then=then, otherwise=otherwise)

    def expect_alone(self, tokens: list[_Tok], keyword: str) -> None:
        if len(tokens) > 1:
            raise self.fail(tokens[1].pos, f"unexpected {tokens[1].describe()} in {keyword}")

    def pipeline(self, tokens: list[_Tok], pos: int, *, context: str, depth: int = 0) -> _Pipe:
        if depth > _MAX_DEPTH:
            raise self.fail(pos, "pipelines nested too deeply")
        pipe, rest = self.parse_pipe(tokens, 0, pos, context=context, depth=depth)
        if rest < len(tokens):
            tok = tokens[rest]
            if tok.kind is _K.RPAREN:
                raise self.fail(tok.pos, "unexpected right paren")
            raise self.fail(tok.pos, f"unexpected {tok.describe()} in {context}")
        return pipe

    def parse_pipe(
        self, tokens: list[_Tok], i: int, pos: int, *, context: str, depth: int
    ) -> tuple[_Pipe, int]:
        cmds: list[_Command] = []
        while True:
            args: list[_Arg] = []
            while i < len(tokens) and tokens[i].kind not in (_K.PIPE, _K.RPAREN):
                arg, i = self.operand(tokens, i, context=context, depth=depth)
                args.append(arg)
            if not args:
                where = tokens[i].pos if i < len(tokens) else pos
                if cmds or (i < len(tokens) and tokens[i].kind is _K.PIPE):
                    raise self.fail(where, "missing command")
                raise self.fail(where, f"missing value for {context}")
            cmd = _Command(args=tuple(args), pos=_pos(args[0]))
            if cmds and not isinstance(args[0], _Ident):
                raise self.fail(
                    cmd.pos, f"non executable command in pipeline stage {len(cmds) + 1}"
                )
            cmds.append(cmd)
            if i < len(tokens) and tokens[i].kind is _K.PIPE:
                i += 1
                continue
            return _Pipe(cmds=tuple(cmds), pos=cmds[0].pos), i

    def operand(self, tokens: list[_Tok], i: int, *, context: str, depth: int) -> tuple[_Arg, int]:
        tok = tokens[i]
        if tok.kind is _K.FIELD:
            assert isinstance(tok.value, tuple)
            return _Field(names=tok.value, pos=tok.pos), i + 1
        if tok.kind is _K.VAR:
            assert isinstance(tok.value, tuple)
            if not tok.value:
                return _Dot(pos=tok.pos, root=True), i + 1
            return _Field(names=tok.value, pos=tok.pos, root=True), i + 1
        if tok.kind is _K.DOT:
            return _Dot(pos=tok.pos), i + 1
        if tok.kind in (_K.STRING, _K.NUMBER, _K.BOOL):
            assert isinstance(tok.value, str | int)
            return _Literal(value=tok.value, text=tok.text, pos=tok.pos), i + 1
        if tok.kind is _K.IDENT:
            if tok.text in _UNSUPPORTED:
                raise self.fail(tok.pos, f"{{{{{tok.text}}}}} is not supported")
            if tok.text in _KEYWORDS:
                raise self.fail(tok.pos, f"unexpected {tok.describe()} in operand")
            if tok.text == "nil":
                raise self.fail(tok.pos, "nil is not a command")
            if tok.text not in _FUNCS:
                raise self.fail(tok.pos, f"function {go_quote(tok.text)} not defined")
            return _Ident(name=tok.text, pos=tok.pos), i + 1
        if tok.kind is _K.LPAREN:
            if depth >= _MAX_DEPTH:
                raise self.fail(tok.pos, "pipelines nested too deeply")
            pipe, j = self.parse_pipe(
                tokens, i + 1, tok.pos, context="parenthesized pipeline", depth=depth + 1
            )
            if j >= len(tokens) or tokens[j].kind is not _K.RPAREN:
                raise self.fail(tok.pos, "unclosed left paren")
            return pipe, j + 1
        raise self.fail(tok.pos, f"unexpected {tok.describe()} in operand")


def _pos(arg: _Arg) -> int:
    return arg.pos


def _go_rune(c: str) -> str:
    """Go's ``%#U`` tail: the rune quoted when printable."""
    return f"'{c}'" if c.isprintable() else ""


# -- execution ----------------------------------------------------------------------


class _Missing:
    """No value piped into a command."""


_NONE = _Missing()


class _Exec:
    def __init__(self, template: Template, data: _Struct) -> None:
        self.t = template
        self.data = data

    def fail(self, pos: int, context: str, message: str) -> TemplateExecError:
        text = self.t.source
        pos = min(pos, len(text))
        line_start = text.rfind("\n", 0, pos)
        line = text.count("\n", 0, pos) + 1
        col = (
            len(text[:pos].encode("utf-8", "surrogatepass"))
            if line_start < 0
            else (len(text[line_start + 1 : pos].encode("utf-8", "surrogatepass")))
        )
        if len(context) > 20:
            context = context[:20] + "..."
        name = self.t.name
        return TemplateExecError(
            f"template: {name}:{line}:{col}: executing {go_quote(name)} at <{context}>: {message}"
        )

    def walk(self, nodes: Sequence[_Node], out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Pipe):
                out.append(_print(self.pipe(node)))
            elif _truth(self.pipe(node.pipe)):
                self.walk(node.then, out)
            else:
                self.walk(node.otherwise, out)

    def pipe(self, pipe: _Pipe) -> object:
        value: object = _NONE
        for cmd in pipe.cmds:
            value = self.command(cmd, value)
        return value

    def command(self, cmd: _Command, final: object) -> object:
        first = cmd.args[0]
        if isinstance(first, _Ident):
            return self.call(first, cmd, cmd.args[1:], final)
        has_args = len(cmd.args) > 1 or final is not _NONE
        if isinstance(first, _Field) and has_args:
            raise self.fail(
                first.pos,
                str(first),
                f"{first.names[-1]} has arguments but cannot be invoked as function",
            )
        if has_args:
            raise self.fail(first.pos, str(first), f"can't give argument to non-function {first}")
        return self.arg(first)

    def arg(self, arg: _Arg) -> object:
        if isinstance(arg, _Literal):
            return arg.value
        if isinstance(arg, _Dot):
            return self.data
        if isinstance(arg, _Field):
            value: object = self.data
            for name in arg.names:
                if not isinstance(value, _Struct):
                    raise self.fail(
                        arg.pos, str(arg), f"can't evaluate field {name} in type {_go_type(value)}"
                    )
                if name not in value.fields:
                    raise self.fail(
                        arg.pos, str(arg), f"can't evaluate field {name} in type {value.go_type}"
                    )
                value = value.fields[name]
            return value
        if isinstance(arg, _Ident):
            return self.call(arg, _Command(args=(arg,), pos=arg.pos), (), _NONE)
        return self.pipe(arg)

    def call(self, ident: _Ident, cmd: _Command, args: Sequence[_Arg], final: object) -> object:
        name = ident.name
        count = len(args) + (final is not _NONE)

        def values() -> Iterator[object]:
            for a in args:
                yield self.arg(a)
            if final is not _NONE:
                yield final

        def want(n: int, *, at_least: bool = False) -> None:
            if count < n or (count > n and not at_least):
                shape = f"at least {n}" if at_least else str(n)
                raise self.fail(
                    ident.pos, name, f"wrong number of args for {name}: want {shape} got {count}"
                )

        def error(message: str) -> TemplateExecError:
            return self.fail(cmd.pos, str(cmd), f"error calling {name}: {message}")

        if name in ("and", "or"):
            want(1, at_least=True)
            value: object = _NONE
            for value in values():
                if _truth(value) != (name == "and"):
                    return value
            return value
        if name == "not":
            want(1)
            return not _truth(next(values()))
        if name == "len":
            want(1)
            (item,) = values()
            if isinstance(item, str):
                return len(item.encode("utf-8", "surrogateescape"))
            raise error(f"len of type {_go_type(item)}")
        if name in ("eq", "ne"):
            if name == "ne":
                want(2)
            else:
                want(1, at_least=True)
            first, *rest = list(values())
            if not rest:
                raise error("missing argument for comparison")
            for other in rest:
                if _basic(first) != _basic(other):
                    raise error("incompatible types for comparison")
                if first == other:
                    return name == "eq"
            return name == "ne"
        if name == "print":
            return _sprint(list(values()))
        # printf
        want(1, at_least=True)
        fmt, *rest = list(values())
        if not isinstance(fmt, str):
            raise self.fail(
                ident.pos, name, f"wrong type for value; expected string; got {_go_type(fmt)}"
            )
        return _sprintf(fmt, rest)


def _basic(value: object) -> str:
    """Go's ``basicKind``: ints of any sign compare with each other, nothing else mixes."""
    return _go_type(value)


def _sprint(args: Sequence[object]) -> str:
    """``fmt.Sprint``: a space between operands when neither side is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_print(arg))
    return "".join(out)


def _sprintf(fmt: str, args: Sequence[object]) -> str:
    """``fmt.Sprintf`` for the verbs a payload needs, with Go's ``%!`` error forms."""
    out: list[str] = []
    used = 0
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(fmt):
            out.append("%!(NOVERB)")
            break
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[used]
        used += 1
        out.append(_format_verb(verb, arg))
    if used < len(args):
        extra = ", ".join(f"{_go_type(a)}={_print(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_verb(verb: str, arg: object) -> str:
    bad = f"%!{verb}({_go_type(arg)}={_print(arg)})"
    if verb == "v":
        return _print(arg)
    if verb == "s":
        return bad if isinstance(arg, bool | int) else _print(arg)
    if verb == "d":
        return str(arg) if isinstance(arg, int) and not isinstance(arg, bool) else bad
    if verb == "t":
        return _print(arg) if isinstance(arg, bool) else bad
    if verb == "q":
        if isinstance(arg, str):
            return go_quote(arg)
        if isinstance(arg, bool):
            return bad
        if isinstance(arg, int):
            return "'" + chr(arg) + "'" if 0 <= arg <= 0x10FFFF else bad
        return go_quote(_print(arg))
    return bad


# -- the public face -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template; :meth:`execute` renders it against named fields."""

    name: str
    source: str
    nodes: tuple[_Node, ...]

    def execute(self, data: Mapping[str, object], *, type_name: str = "struct") -> str:
        """Render with ``data`` as the struct ``.``; ``type_name`` is its Go type in errors.

        Values are ``str``, ``bool``, ``int`` or any object whose ``str()`` is
        its Go ``String()`` (an optional ``go_type`` attribute names its type).
        """
        out: list[str] = []
        try:
            _Exec(self, _Struct(dict(data), type_name)).walk(self.nodes, out)
        except RecursionError:
            raise TemplateExecError(
                f"template: {self.name}: executing {go_quote(self.name)}: nested too deeply"
            ) from None
        return "".join(out)


def parse(text: str, *, name: str = "report") -> Template:
    """Parse ``text``; :class:`TemplateParseError` carries Go's message."""
    try:
        nodes = _Parser(text, name).parse()
    except RecursionError:
        raise TemplateParseError(f"template: {name}: nested too deeply") from None
    return Template(name, text, nodes)


def render_payload(
    text: str,
    data: Mapping[str, object],
    *,
    name: str = "report",
    type_name: str = "struct",
    on_error: Callable[[TemplateError], None] | None = None,
) -> str:
    """Dkron's ``buildTemplate``: the rendered text, or the error as the body.

    A broken template still sends a notification (its body says what is
    wrong), which is how Dkron tells an operator about the mistake.
    """
    try:
        template = parse(text, name=name)
    except TemplateParseError as exc:
        if on_error is not None:
            on_error(exc)
        return f"Failed to parse template: {exc}"
    try:
        return template.execute(data, type_name=type_name)
    except TemplateExecError as exc:
        if on_error is not None:
            on_error(exc)
        return f"Failed to execute template:{exc}"
