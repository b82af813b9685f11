"""The Go text/template subset: Dkron's payload syntax, Go's error texts, and robustness."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dkron.gotemplate import (
    TemplateError,
    TemplateExecError,
    TemplateParseError,
    parse,
    render_payload,
)

TYPE = "struct { JobName string; Success string; Output string; N int; Ok bool }"
DATA: dict[str, object] = {
    "JobName": "job1",
    "Success": "true",
    "Output": 'out "x"\nline',
    "N": 3,
    "Ok": False,
}


def render(text: str) -> str:
    return render_payload(text, DATA, type_name=TYPE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("{{.JobName}}", "job1"),
        ("{{ .JobName }}", "job1"),
        (
            '{"text":"{{.JobName}} finished with status {{.Success}}"}',
            '{"text":"job1 finished with status true"}',
        ),
        ("a  \n {{- .JobName -}} \n b", "ajob1b"),
        ("a {{- .JobName}} b", "ajob1 b"),
        ("a {{.JobName -}} b", "a job1b"),
        ("{{-3}}", "-3"),
        ('{{if eq .Success "true"}}ok{{else}}bad{{end}}', "ok"),
        ('{{if eq .Success "false"}}ok{{else}}bad{{end}}', "bad"),
        ('{{if eq .Success "false"}}a{{else if .JobName}}b{{else}}c{{end}}', "b"),
        ('{{if eq .Success "false"}}a{{else if .Ok}}b{{else}}c{{end}}', "c"),
        ("{{if .Ok}}yes{{end}}", ""),
        ("{{if .N}}yes{{end}}", "yes"),
        ('{{if ne .JobName "x"}}ne{{end}}', "ne"),
        ('{{if eq .JobName "a" "b" "job1"}}any{{end}}', "any"),
        ("{{if not .Ok}}not{{end}}", "not"),
        ('{{and .Ok "x"}}|{{or .Ok "" "z"}}', "false|z"),
        ("{{len .JobName}}", "4"),
        ("{{/* a comment */}}x", "x"),
        ("a {{- /* trimmed */ -}} b", "ab"),
        ('{{"}}"}}', "}}"),
        ("{{`raw\\n`}}", "raw\\n"),
        ('{{"tab\\there"}}', "tab\there"),
        ('{{printf "%q" .Output}}', '"out \\"x\\"\\nline"'),
        ('{{.Output | printf "%s!"}}', 'out "x"\nline!'),
        ('{{printf "%d-%t-%v-%%" .N .Ok .JobName}}', "3-false-job1-%"),
        ('{{printf "%d" .JobName}}', "%!d(string=job1)"),
        ('{{printf "%s %s" .JobName}}', "job1 %!s(MISSING)"),
        ('{{print 1 2 "a" 3 true}}', "1 2a3 true"),
        ("{{(eq .N 3)}}", "true"),
        ("{{$.JobName}}{{$}}", 'job1{job1 true out "x"\nline 3 false}'),
        ("{{.Ok}} {{.N}}", "false 3"),
    ],
)
def test_renders_like_go(text: str, expected: str) -> None:
    assert render(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{.JobName", "template: report:1: unclosed action"),
        ("{{if .Ok}}x", "template: report:1: unexpected EOF"),
        ("x\n{{end}}", "template: report:2: unexpected {{end}}"),
        ("{{else}}", "template: report:1: unexpected {{else}}"),
        ("{{foo .X}}", 'template: report:1: function "foo" not defined'),
        ("{{}}", "template: report:1: missing value for command"),
        ("{{if}}x{{end}}", "template: report:1: missing value for if"),
        ("{{if 1}}{{else}}{{else}}{{end}}", "template: report:1: expected end; found {{else}}"),
        ('{{"abc}}', "template: report:1: unterminated quoted string"),
        ("{{/* x }}", "template: report:1: unclosed comment"),
        ("{{$x}}", 'template: report:1: undefined variable "$x"'),
        ("{{range .X}}{{end}}", "template: report:1: {{range}} is not supported"),
        ("{{.A | .B}}", "template: report:1: non executable command in pipeline stage 2"),
        ("{{(eq 1 1}}", "template: report:1: unclosed left paren"),
        ("{{end 1}}", "template: report:1: unexpected {{end}}"),
    ],
)
def test_parse_errors_give_dkrons_body(text: str, message: str) -> None:
    with pytest.raises(TemplateParseError) as info:
        parse(text)
    assert str(info.value) == message
    assert render(text) == "Failed to parse template: " + message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{{.Nope}}",
            f'template: report:1:2: executing "report" at <.Nope>: '
            f"can't evaluate field Nope in type {TYPE}",
        ),
        (
            "line\n  {{.JobName.X}}",
            'template: report:2:4: executing "report" at <.JobName.X>: '
            "can't evaluate field X in type string",
        ),
        (
            "{{if eq .Success true}}x{{end}}",
            'template: report:1:5: executing "report" at <eq .Success true>: '
            "error calling eq: incompatible types for comparison",
        ),
        (
            "{{not 1 2}}",
            'template: report:1:2: executing "report" at <not>: '
            "wrong number of args for not: want 1 got 2",
        ),
        (
            '{{"a" "b"}}',
            'template: report:1:2: executing "report" at <"a">: '
            'can\'t give argument to non-function "a"',
        ),
        (
            "{{len .N}}",
            'template: report:1:2: executing "report" at <len .N>: '
            "error calling len: len of type int",
        ),
        (
            '{{eq "aaaaaaaaaaaaaaaaaaaaaaaaa" 1}}',
            'template: report:1:2: executing "report" at <eq "aaaaaaaaaaaaaaaa...>: '
            "error calling eq: incompatible types for comparison",
        ),
    ],
)
def test_execute_errors_give_dkrons_body(text: str, message: str) -> None:
    template = parse(text)
    with pytest.raises(TemplateExecError) as info:
        template.execute(DATA, type_name=TYPE)
    assert str(info.value) == message
    # Dkron glues the prefix to the message without a space.
    assert render(text) == "Failed to execute template:" + message


def test_on_error_sees_the_error() -> None:
    seen: list[TemplateError] = []
    render_payload("{{.Nope}}", DATA, on_error=seen.append)
    render_payload("{{", DATA, on_error=seen.append)
    assert [type(e) for e in seen] == [TemplateExecError, TemplateParseError]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    text = "{{" + "(" * 500 + "1" + ")" * 500 + "}}"
    with pytest.raises(TemplateParseError):
        parse(text)
    nested = "{{if 1}}" * 400 + "x" + "{{end}}" * 400
    assert render(nested) == "x"


@given(st.text().filter(lambda t: "{{" not in t))
@example("}} -}} {- /* */ }}")
@example("{")
def test_text_without_actions_renders_unchanged(text: str) -> None:
    assert render(text) == text


_PIECES = st.sampled_from(
    [
        "{{",
        "}}",
        "{{-",
        " -}}",
        ".JobName",
        ".Nope",
        ".",
        "$",
        " ",
        "\n",
        "if",
        "else",
        "end",
        "eq",
        "ne",
        "and",
        "or",
        "not",
        "len",
        "print",
        "printf",
        '"%q %d %"',
        '"x',
        "`",
        "(",
        ")",
        "|",
        "/*",
        "*/",
        "1",
        "-",
        "true",
        "range",
        "\\",
        "'",
        "é",
        "\x00",
        ".N",
        ".Ok",
    ]
)


@given(st.lists(st.one_of(_PIECES, st.text(max_size=3)), max_size=30).map("".join))
@example("{{if .Ok}}{{else if .N}}{{else}}{{end}}")
@example('{{"\\xff\\377\\U0010ffff"}}')
@example("{{printf}}")
@example("{{and}}")
def test_renderer_raises_only_its_own_error(text: str) -> None:
    try:
        template = parse(text)
    except TemplateParseError as exc:
        assert str(exc).startswith("template: report:")
        return
    try:
        out = template.execute(DATA, type_name=TYPE)
    except TemplateExecError as exc:
        assert str(exc).startswith("template: report:")
        return
    assert isinstance(out, str)
    rendered = render(text)
    assert rendered == out
