"""JSON output by grammar-constrained decoding: valid by construction, whatever the model's weights."""

import json

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer import Engine, SamplingParams
from llmlab.infer.constrained import (ANY_OBJECT, GrammarConstraint, allowed_tokens, closed, json_constraint,
                                     tool_call_grammar)
from llmlab.model import GPT, preset
from llmlab.serve.tiny import tiny_tokenizer

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
pytestmark = pytest.mark.usefixtures("one_thread")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                                      "verified": {"type": "boolean"}},
                    "required": ["zip", "verified"], "additionalProperties": False},
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(512)


@pytest.fixture(scope="module")
def engine(tokenizer):
    torch.manual_seed(0)
    return Engine(GPT(preset("tiny-llama", vocab_size=tokenizer.vocab_size)).eval(), tokenizer)


def mask_of(constraint, tokenizer):
    return constraint.allowed(tokenizer.vocab_size)


def test_a_random_model_writes_schema_valid_json_for_every_seed(engine):
    params = [SamplingParams(max_new_tokens=200, temperature=1.0, seed=s, json_schema=PERSON) for s in range(40)]
    for c in engine.generate(["Describe a person:"] * len(params), params):
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), PERSON)


def test_any_object_parses_as_an_object_and_length_cuts_are_reported(engine):
    params = [SamplingParams(max_new_tokens=60, temperature=1.0, seed=s, json_schema=ANY_OBJECT) for s in range(20)]
    completions = engine.generate(["{"] * len(params), params)
    for c in completions:
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)
        else:  # cut by max_new_tokens: a prefix of JSON, not yet complete
            assert c.finish_reason == "length" and c.completion_tokens == 60 and c.text.startswith("{")
    assert any(c.finish_reason == "stop" for c in completions)


def test_the_mask_admits_a_valid_document_token_by_token_and_eos_only_at_its_end(tokenizer):
    document = {"name": "Ada", "age": 36, "color": "green", "tags": ["x", "math"],
                "address": {"zip": "02139", "verified": True}}
    ids = tokenizer.encode(json.dumps(document))  # json.dumps spaces ", " and ": " as the grammar's layout does
    constraint = json_constraint(tokenizer, PERSON, {tokenizer.eos_id})
    for token in ids:
        allowed = mask_of(constraint, tokenizer)
        assert allowed[token], tokenizer.decode([token])
        assert not allowed[tokenizer.eos_id] and not constraint.finished
        assert not any(allowed[t] for t in tokenizer.special_tokens.values())
        constraint.advance(token)
    assert constraint.finished  # nothing may follow the closing brace


@pytest.mark.parametrize("valid_prefix, wrong", [
    ('{"name": "Ada", "age": ', '"'),  # a string where an integer belongs
    ('{"name": "Ada", "age": 3, "color": "', "p"),  # not one of the enum's values
    ('{"name": "Ada", "age": 3, "color": "red", "tags": [], "address": {"zip": "1', "a"),  # zip is digits
    ('{"name": "Ada"', "}"),  # required fields missing
    ('{"name": "Ada", "', "z"),  # no additional properties
])
def test_the_mask_refuses_what_breaks_the_schema(tokenizer, valid_prefix, wrong):
    constraint = json_constraint(tokenizer, PERSON, {tokenizer.eos_id})
    for token in tokenizer.encode(valid_prefix):
        constraint.advance(token)
    allowed = mask_of(constraint, tokenizer)
    bad = [t for t in range(tokenizer.vocab_size) if tokenizer.decode([t]).startswith(wrong)]
    assert bad and not any(allowed[t] for t in bad)
    assert allowed.any()


def test_eos_is_allowed_where_the_json_may_end_and_more_may_still_follow(tokenizer):
    constraint = json_constraint(tokenizer, {"type": "integer"}, {tokenizer.eos_id})
    assert not mask_of(constraint, tokenizer)[tokenizer.eos_id]
    constraint.advance(tokenizer.encode("1")[0])
    allowed = mask_of(constraint, tokenizer)
    assert allowed[tokenizer.eos_id] and allowed[tokenizer.encode("2")[0]] and not constraint.finished


def test_forcing_the_end_token_with_logit_bias_cannot_end_the_json_early(engine, tokenizer):
    params = SamplingParams(max_new_tokens=200, temperature=0.7, seed=5, json_schema=PERSON,
                            logit_bias={tokenizer.eos_id: 100})
    c = engine.generate(["x"], params)[0]
    assert c.finish_reason == "stop"
    jsonschema.validate(json.loads(c.text), PERSON)


def test_unconstrained_rows_are_unchanged_by_constrained_rows_in_their_batch(engine):
    plain = [SamplingParams(max_new_tokens=30, temperature=0.9, seed=s) for s in range(3)]
    plain.append(SamplingParams(max_new_tokens=30, temperature=0, repetition_penalty=1.2))  # samples alone
    guided = [SamplingParams(max_new_tokens=200, temperature=1.0, seed=s, json_schema=PERSON) for s in range(3)]
    guided.append(SamplingParams(max_new_tokens=200, temperature=1.0, seed=9, json_schema=PERSON, logprobs=True))
    prompts = ["The cat", "A long time ago in", "x", "def f():"]
    alone = engine.generate(prompts, plain)
    mixed = engine.generate(prompts + prompts, plain + guided)
    assert [c.token_ids for c in mixed[:4]] == [c.token_ids for c in alone]
    guided_alone = engine.generate(prompts, guided)  # and the constrained rows do not depend on the batch either
    assert [c.token_ids for c in mixed[4:]] == [c.token_ids for c in guided_alone]


def test_the_recompute_path_decodes_the_same_constrained_tokens(engine):
    params = SamplingParams(max_new_tokens=200, temperature=0, json_schema=PERSON)
    cached = engine.generate(["Name:"], params)[0]
    recomputed = Engine(engine.model, engine.tokenizer, use_kv_cache=False).generate(["Name:"], params)[0]
    assert recomputed.token_ids == cached.token_ids and cached.finish_reason == "stop"
    jsonschema.validate(json.loads(cached.text), PERSON)


def test_masks_cover_a_padded_embedding_and_never_allow_ids_past_the_vocabulary(tokenizer):
    constraint = json_constraint(tokenizer, ANY_OBJECT, {tokenizer.eos_id})
    allowed = allowed_tokens([constraint, constraint], tokenizer.vocab_size + 40, "cpu")
    assert allowed.shape == (2, tokenizer.vocab_size + 40)
    assert allowed[:, : tokenizer.vocab_size].any() and not allowed[:, tokenizer.vocab_size :].any()
    assert allowed[0, tokenizer.encode("{")[0]] and not allowed[0, tokenizer.encode("[")[0]]


@pytest.mark.parametrize("schema, words", [
    ({"type": "frobnicate"}, "frobnicate"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
])
def test_unsupported_schemas_are_clear_errors(tokenizer, schema, words):
    with pytest.raises(ConfigError, match=words):
        json_constraint(tokenizer, schema, {tokenizer.eos_id})


def test_a_schema_that_is_not_an_object_is_refused_by_the_params():
    with pytest.raises(ConfigError, match="json_schema"):
        SamplingParams(json_schema="{}")


# ---------------------------------------------------------------- tool calls

TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string", "maxLength": 10}}, "required": ["expression"]}}},
    {"type": "function", "function": {"name": "clock"}}]  # no parameters: an empty object


def _consumes(tokenizer, grammar: str, text: str) -> GrammarConstraint | None:
    """The constraint after `text`, None when some token of it is refused."""
    constraint = GrammarConstraint(tokenizer, grammar, {tokenizer.eos_id})
    for token in tokenizer.encode_ordinary(text):
        if not constraint.allowed(tokenizer.vocab_size)[token]:
            return None
        constraint.advance(token)
    return constraint


@pytest.mark.parametrize("text, ok", [
    ("free text only", True),
    ('sure <tool_call>\n{"name": "clock", "arguments": {}}\n</tool_call> and more text', True),
    ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>', True),
    ('<tool_call>\n{"name": "shell"', False),  # not a tool it was given
    ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7", "x"', False),  # undeclared key
    ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "12345678901', False),  # over maxLength
    ('<tool_call>\n{"name": "clock", "arguments": []', False),  # arguments are an object
])
def test_auto_tool_grammar_leaves_text_free_and_makes_each_opened_call_valid(tokenizer, text, ok):
    constraint = _consumes(tokenizer, tool_call_grammar(TOOLS, "auto"), text)
    assert (constraint is not None) == ok
    if ok:  # an end token is allowed outside a call ...
        assert constraint.allowed(tokenizer.vocab_size)[tokenizer.eos_id]
    inside = _consumes(tokenizer, tool_call_grammar(TOOLS, "auto"), 'x <tool_call>\n{"name": "clock", "arguments": {')
    assert not inside.allowed(tokenizer.vocab_size)[tokenizer.eos_id]  # ... and refused inside one


@pytest.mark.parametrize("mode, tools", [("required", TOOLS), ("named", TOOLS[:1])])
def test_a_random_model_always_writes_one_valid_call_when_one_is_required(engine, tokenizer, mode, tools):
    from llmlab.tokenizer.chat_tools import parse_tool_calls

    start = {"required": "<tool_call>\n", "named": '<tool_call>\n{"name": "calculator", "arguments": '}[mode]
    params = [SamplingParams(max_new_tokens=120, temperature=1.0, seed=s, grammar=tool_call_grammar(tools, mode, parallel=False))
              for s in range(12)]
    for c in engine.generate([start] * len(params), params):
        assert c.finish_reason == "stop", c.text
        rest, calls = parse_tool_calls(start + c.text)
        assert len(calls) == 1 and rest == "", c.text
        for call in calls:
            assert call.name in {"calculator", "clock"}
            schema = {"calculator": TOOLS[0]["function"]["parameters"], "clock": {"type": "object", "maxProperties": 0}}
            jsonschema.validate(call.arguments, schema[call.name])


def test_tool_parameters_that_are_not_a_schema_and_both_constraints_at_once_are_refused():
    with pytest.raises(ConfigError, match="parameters of tool 'f'"):
        tool_call_grammar([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "auto")
    with pytest.raises(ConfigError, match="not both"):
        SamplingParams(json_schema=ANY_OBJECT, grammar=tool_call_grammar(TOOLS, "auto"))


def test_closed_schemas_forbid_unlisted_keys_but_keep_what_the_schema_says():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}},
                                               "c": {"const": {"properties": 1}}},
              "$defs": {"d": {"type": "object", "properties": {}, "additionalProperties": True}}}
    out = closed(schema)
    assert out["additionalProperties"] is False and out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["c"] == {"const": {"properties": 1}} and out["$defs"]["d"]["additionalProperties"] is True
