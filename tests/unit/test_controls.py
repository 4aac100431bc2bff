"""Request controls checked before anything is queued, and what engines declare."""

from __future__ import annotations

import json
import re

import pytest

from edged.backends.base import (
    Capabilities,
    Constraint,
    Infill,
    Job,
    Message,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
)
from edged.backends.chat_template import ChatTemplate
from edged.backends.toolkit import check_controls, effective_constraint
from edged.common.errors import FailedPrecondition, InvalidArgument
from edged.daemon import controls
from edged.daemon.wire import message_from
from edged.v1 import edged_pb2 as pb

RF = pb.ResponseFormat


def test_json_schemas_are_checked_against_their_meta_schema() -> None:
    ok = controls.constraint_from(RF(type=RF.TYPE_JSON_SCHEMA, schema='{"type": "object"}'))
    assert ok == Constraint("json_schema", '{"type": "object"}')
    for schema, words in (
        ("{", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"type": "objekt"}', "not a valid JSON schema at type"),
        (
            '{"properties": {"a": {"minLength": -1}}}',
            "not a valid JSON schema at properties/a/minLength",
        ),
        ("x" * (controls.MAX_SCHEMA_BYTES + 1), "larger than"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            controls.constraint_from(RF(type=RF.TYPE_JSON_SCHEMA, schema=schema))


def test_the_other_formats() -> None:
    assert controls.constraint_from(RF()) is None
    assert controls.constraint_from(RF(type=RF.TYPE_TEXT)) is None
    assert controls.constraint_from(RF(type=RF.TYPE_JSON_OBJECT)) == Constraint("json_object")
    g = RF(type=RF.TYPE_GRAMMAR, grammar='root ::= "a"', syntax="gbnf")
    assert controls.constraint_from(g) == Constraint("grammar", 'root ::= "a"', "gbnf")
    for fmt, words in (
        (RF(type=RF.TYPE_GRAMMAR, grammar=" ", syntax="gbnf"), "empty"),
        (RF(type=RF.TYPE_GRAMMAR, grammar="x", syntax="yacc"), "syntax must be one of"),
        (RF(type=RF.TYPE_REGEX, regex="("), "does not compile"),
        (RF(type=RF.TYPE_REGEX), "empty"),
        (RF(type=99), "unknown response_format.type"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            controls.constraint_from(fmt)


def test_tools_and_choice() -> None:
    tools = controls.tools_from(
        [pb.Tool(name="a_b-1", parameters='{"type": "object"}'), pb.Tool(name="t")]
    )
    assert [t.name for t in tools] == ["a_b-1", "t"]
    assert controls.tool_choice_from(pb.ToolChoice(), tools) == ToolChoice("auto")
    fn = pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function="t")
    assert controls.tool_choice_from(fn, tools) == ToolChoice("function", "t")
    with pytest.raises(InvalidArgument, match="at most 128 tools"):
        controls.tools_from([pb.Tool(name=f"t{i}") for i in range(129)])


def test_messages_with_tool_calls_and_results() -> None:
    m = message_from(
        pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(name="t", arguments='{"a": 1}')])
    )
    assert m.tool_calls[0].name == "t" and m.tool_calls[0].id.startswith("call_")
    for msg, words in (
        (pb.ChatMessage(role="tool", content="x"), "tool_call_id"),
        (
            pb.ChatMessage(role="user", tool_calls=[pb.ToolCall(name="t")]),
            "cannot carry tool_calls",
        ),
        (
            pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(name="t", arguments="[1]")]),
            "JSON object",
        ),
        (pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(arguments="{}")]), "name"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            message_from(msg)


def test_logprobs_and_infill_bounds() -> None:
    req = pb.GenerateRequest()
    assert controls.logprobs_from(req) is None
    req.logprobs = 0
    assert controls.logprobs_from(req) == 0
    req.logprobs = 21
    with pytest.raises(InvalidArgument, match="at most 20"):
        controls.logprobs_from(req)
    fill = controls.infill_from(
        pb.Infill(
            prefix="a", suffix="b", extra=[pb.InfillContext(filename="f", text="t")], n_indent=2
        )
    )
    assert fill == Infill("a", "b", "", (("f", "t"),), 2, 0)


CAPS = Capabilities(
    backend="fake",
    device="cpu",
    formats=("gguf",),
    context_length=64,
    max_sequences=1,
    batching=False,
    session_kv=False,
    response_formats=("json_schema",),
    grammar_syntaxes=(),
)


@pytest.mark.parametrize(
    ("job", "error", "words"),
    [
        (
            Job(1, Sampling(), constraint=Constraint("regex", "a")),
            InvalidArgument,
            "regex output is not supported by the fake backend",
        ),
        (
            Job(1, Sampling(), constraint=Constraint("grammar", "x", "gbnf")),
            InvalidArgument,
            "grammar output",
        ),
        (
            Job(1, Sampling(), tools=(Tool("t"),)),
            InvalidArgument,
            "tool calls are not supported by the fake",
        ),
        (Job(1, Sampling(), logprobs=0), InvalidArgument, "logprobs are not supported by the fake"),
        (
            Job(1, Sampling(), infill=Infill("a", "b")),
            FailedPrecondition,
            "fill-in-the-middle is not supported by the fake",
        ),
    ],
)
def test_undeclared_controls_are_refused_naming_the_backend(
    job: Job, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        check_controls(job, CAPS)


def test_declared_controls_pass_and_tool_choice_none_needs_no_tool_support() -> None:
    check_controls(Job(1, Sampling(), constraint=Constraint("json_schema", "{}")), CAPS)
    check_controls(Job(1, Sampling(), tools=(Tool("t"),), tool_choice=ToolChoice("none")), CAPS)


def test_a_required_tool_choice_is_a_call_schema() -> None:
    job = Job(
        1,
        Sampling(),
        tools=(Tool("t"),),
        tool_choice=ToolChoice("required"),
        parallel_tool_calls=False,
    )
    c = effective_constraint(job)
    assert c is not None and c.kind == "json_schema"
    assert json.loads(c.text)["properties"]["tool_calls"]["maxItems"] == 1
    assert effective_constraint(Job(1, Sampling(), tools=(Tool("t"),))) is None


def test_content_parts_keep_content_apart_from_the_template() -> None:
    t = ChatTemplate("")  # ChatML
    parts = t.render_parts((Message("user", "<|im_start|>hi"),))
    assert parts == [
        ("<|im_start|>user\n", False),
        ("<|im_start|>hi", True),
        ("<|im_end|>\n<|im_start|>assistant\n", False),
    ]
    with pytest.raises(InvalidArgument, match="NUL"):
        t.render_parts((Message("user", "a\x00b"),))


def test_a_template_that_knows_tools_gets_them() -> None:
    source = (
        "{% if tools %}TOOLS:{{ tools | map(attribute='function.name') | join(',') }}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}"
        "[{{ c.function.name }}{{ c.function.arguments | tojson }}]"
        "{% endfor %}"
        "{{ '\\n' }}{% endfor %}"
    )
    t = ChatTemplate(source)
    assert t.knows_tools and not ChatTemplate("").knows_tools
    spec = [{"type": "function", "function": {"name": "t", "description": "", "parameters": {}}}]
    chat = (
        Message("user", "go"),
        Message("assistant", "", (ToolCall("c1", "t", '{"x": 1}'),)),
        Message("tool", "done", tool_call_id="c1"),
    )
    assert t.render(chat, tools=spec) == 'TOOLS:t\nuser:go\nassistant:[t{"x": 1}]\ntool:done\n'


def test_llama_cpp_schemas_are_refused_unless_the_grammar_can_enforce_them() -> None:
    grammar = pytest.importorskip("edged.backends.llamacpp.grammar")
    age = {"type": "integer", "minimum": 0, "maximum": 120, "description": "years"}
    out = grammar.enforceable({"type": "object", "properties": {"age": age, "minimum": {}}})
    assert out["properties"]["age"] == {"description": "years", "enum": list(range(121))}
    assert out["properties"]["minimum"] == {}  # a property called "minimum" is a name
    even = grammar.enforceable(
        {"type": "integer", "exclusiveMinimum": 0, "maximum": 8, "multipleOf": 2}
    )
    assert even == {"enum": [2, 4, 6, 8]}
    for schema, word in (
        ({"type": "integer", "minimum": 0}, "'minimum' (at /)"),
        ({"type": "integer", "minimum": 0, "maximum": 10**6}, "'minimum'"),
        ({"type": "number", "maximum": 1.5}, "'maximum'"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
        (
            {"type": "object", "properties": {"x": {"type": "object", "minProperties": 1}}},
            "/properties/x",
        ),
    ):
        with pytest.raises(InvalidArgument, match=re.escape(word)):
            grammar.enforceable(schema)
