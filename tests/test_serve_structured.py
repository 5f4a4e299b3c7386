"""`response_format` JSON output through the OpenAI API, driven by the `openai` client (tests/test_serve_api.py's
tiny random-weight models): with random weights the text still parses and validates, which only the grammar ensures."""

import json

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
pydantic = pytest.importorskip("pydantic")

import test_serve_api as api  # noqa: E402
from test_serve_api import GPT_ID, HI, LLAMA_ID  # noqa: E402

# The same tiny models and server fixtures as the rest of the API's tests (a server of this module's own).
models_dir, server, client, http = api.models_dir, api.server, api.client, api.http

pytestmark = pytest.mark.network_local

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "population": {"type": "integer"},
                   "size": {"enum": ["small", "large"]},
                   "districts": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}},
    "required": ["city", "population", "size", "districts"],
    "additionalProperties": False,
}


def schema_format(schema, strict=True):
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


@pytest.mark.parametrize("model", [GPT_ID, LLAMA_ID])
def test_json_schema_answers_validate_for_every_choice(client, model):
    r = client.chat.completions.create(model=model, messages=HI, max_tokens=200, n=4, seed=3,
                                       response_format=schema_format(CITY))
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), CITY)


def test_streamed_json_is_the_same_text_as_the_whole_answer(client):
    kwargs = dict(model=LLAMA_ID, messages=HI, max_tokens=200, seed=8, response_format=schema_format(CITY, False))
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason == "stop"
    jsonschema.validate(json.loads(streamed), CITY)


def test_json_object_is_an_object_and_max_tokens_can_cut_it(client):
    r = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=200, n=4, seed=1,
                                       response_format={"type": "json_object"})
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
    cut = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=3, seed=1,
                                         response_format=schema_format(CITY)).choices[0]
    assert cut.finish_reason == "length" and cut.message.content.startswith("{")  # not complete JSON yet


def test_the_sdk_parses_answers_into_a_pydantic_model(client):
    class Pet(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        species: str = pydantic.Field(max_length=8)
        legs: int
        indoor: bool

    r = client.chat.completions.parse(model=LLAMA_ID, messages=HI, max_tokens=200, seed=2, response_format=Pet)
    pet = r.choices[0].message.parsed
    assert isinstance(pet, Pet) and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("response_format, param", [
    (schema_format({"type": "frobnicate"}), "response_format.json_schema.schema"),
    (schema_format({"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}),
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1, 2]}}, "response_format.json_schema"),
])
def test_bad_schemas_are_400s_in_openais_shape(client, http, response_format, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=5, response_format=response_format)
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"
    streamed = http.post("/v1/chat/completions", json={"model": GPT_ID, "messages": HI, "stream": True,
                                                       "response_format": response_format})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == param  # refused before streaming
