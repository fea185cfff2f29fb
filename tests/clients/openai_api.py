"""The OpenAI API beyond plain chat, through the official `openai` Python client: forced tool
calls (plain and streamed) whose arguments validate, structured output that validates,
log probabilities, legacy completions, the grammar extension, and refusals that name the
field. The model has random weights: only constrained decoding makes the JSON hold.

Usage: python openai_api.py BASE_URL MODEL API_KEY [EMBEDDING_MODEL]
Exits non-zero (with a message) if anything is off; prints one line per check.
"""
import base64
import json
import math
import struct
import sys
import urllib.request

import jsonschema
from openai import BadRequestError, OpenAI
from refusals import refused

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
embedder = sys.argv[4] if len(sys.argv) > 4 else None
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit", "hourly"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def check(name, cond, detail):
    if not cond:
        raise SystemExit(f"{name}: {detail}")
    print("ok", name)


def valid_call(name, fn_name, arguments):
    check(f"{name}: a known function", fn_name in SCHEMAS, fn_name)
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[fn_name])
    return args


def call_get_weather(**extra):
    """A chat completion of ASK that must call get_weather, with the `extra` arguments."""
    return client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        **extra,
    )


# 1. A named function, plain: its arguments are JSON valid against its schema.
resp = call_get_weather()
choice = resp.choices[0]
check("named: finish_reason", choice.finish_reason == "tool_calls", choice)
calls = choice.message.tool_calls
check("named: one call of get_weather", len(calls) == 1 and calls[0].function.name == "get_weather", calls)
check("named: no content", choice.message.content is None, choice.message)
valid_call("named", calls[0].function.name, calls[0].function.arguments)
first_call = calls[0]

# 2. The same, streamed: the call's id and name first, then its arguments in pieces.
stream = call_get_weather(stream=True)
name, call_id, pieces, finish = None, None, [], None
for chunk in stream:
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            if d.index != 0:
                raise SystemExit(f"streamed: a call index other than 0: {d}")
            if d.id:
                call_id = d.id
            if d.function and d.function.name:
                name = d.function.name
            if d.function and d.function.arguments:
                pieces.append(d.function.arguments)
        if c.finish_reason:
            finish = c.finish_reason
check("streamed: finish_reason", finish == "tool_calls", finish)
check("streamed: id and name", call_id and name == "get_weather", (call_id, name))
check("streamed: arguments in pieces", len(pieces) > 1, pieces)
valid_call("streamed", name, "".join(pieces))

# 3. `required`, one call (parallel calls off), plain.
resp = client.chat.completions.create(
    model=model, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=200
)
calls = resp.choices[0].message.tool_calls or []
check("required: one call", len(calls) == 1 and resp.choices[0].finish_reason == "tool_calls", resp.choices[0])
valid_call("required", calls[0].function.name, calls[0].function.arguments)

# 4. `required` with parallel calls, streamed: each call whole, each valid.
stream = client.chat.completions.create(
    model=model, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=300, stream=True
)
by_index, finish = {}, None
for chunk in stream:
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            entry = by_index.setdefault(d.index, {"name": None, "arguments": ""})
            if d.function and d.function.name:
                entry["name"] = d.function.name
            if d.function and d.function.arguments:
                entry["arguments"] += d.function.arguments
        if c.finish_reason:
            finish = c.finish_reason
check("required streamed: finish_reason", finish == "tool_calls", finish)
check("required streamed: at least one call", len(by_index) >= 1, by_index)
for i, call in sorted(by_index.items()):
    valid_call(f"required streamed call {i}", call["name"], call["arguments"])

# 5. A conversation that carries the call and the tool's answer: the model answers on.
resp = client.chat.completions.create(
    model=model,
    messages=ASK
    + [
        {"role": "assistant", "content": None, "tool_calls": [first_call.model_dump()]},
        {"role": "tool", "tool_call_id": first_call.id, "content": '{"temperature": 3}'},
    ],
    tools=TOOLS,
    max_tokens=8,
)
check("tool history: answered", resp.choices[0].finish_reason in ("stop", "length", "tool_calls"), resp)

# 6. Structured output: a json_schema answer parses and validates.
ANSWER = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no", "maybe"]}, "sure": {"type": "boolean"}},
    "required": ["verdict", "sure"],
    "additionalProperties": False,
}
resp = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Is it raining?"}],
    response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}},
    max_tokens=200,
)
content = resp.choices[0].message.content
jsonschema.validate(json.loads(content), ANSWER)
check("json_schema: valid", True, content)

# 7. Log probabilities, plain and streamed.
resp = client.chat.completions.create(
    model=model, messages=ASK, max_tokens=6, logprobs=True, top_logprobs=2
)
lps = resp.choices[0].logprobs.content
check("logprobs: one per token", len(lps) >= 1, resp.choices[0])
check("logprobs: at most 0", all(lp.logprob <= 0 for lp in lps), lps)
check("logprobs: top at most 2", all(len(lp.top_logprobs) <= 2 for lp in lps), lps)
stream = client.chat.completions.create(
    model=model, messages=ASK, max_tokens=6, logprobs=True, top_logprobs=1, stream=True
)
streamed = [lp for chunk in stream for c in chunk.choices if c.logprobs for lp in c.logprobs.content or []]
check("logprobs streamed", len(streamed) >= 1 and all(lp.logprob <= 0 for lp in streamed), streamed)

# 8. Legacy completions, plain and streamed; echo refused by name.
resp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, logprobs=2)
choice = resp.choices[0]
check("completions: text", isinstance(choice.text, str) and choice.finish_reason in ("stop", "length"), resp)
check("completions: object", resp.object == "text_completion", resp)
check("completions: logprobs", choice.logprobs is not None and len(choice.logprobs.tokens) >= 1, choice)
check("completions: usage", 1 <= resp.usage.completion_tokens <= 5, resp.usage)
stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, stream=True)
texts, finish = [], None
for chunk in stream:
    for c in chunk.choices:
        texts.append(c.text)
        finish = c.finish_reason or finish
check("completions streamed", finish in ("stop", "length") and len(texts) >= 1, texts)
err = refused(BadRequestError, lambda: client.completions.create(model=model, prompt="x", echo=True), "echo must be refused")
check("completions: echo refused", "echo" in str(err), err)

# 9. The grammar extension: a regular expression.
resp = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "yes or no?"}],
    max_tokens=10,
    extra_body={"grammar": {"type": "regex", "value": "(yes|no)"}},
)
check("grammar regex", resp.choices[0].message.content in ("yes", "no"), resp.choices[0].message)
resp = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "a color?"}],
    max_tokens=10,
    extra_body={"grammar": {"type": "lark", "value": 'start: "red" | "green" | "blue"'}},
)
check("grammar lark", resp.choices[0].message.content in ("red", "green", "blue"), resp.choices[0].message)

# 10. What BitingLip does not support is refused, naming the field.
for kwargs, field in [
    ({"n": 2}, "n"),
    ({"extra_body": {"audio": {"voice": "alloy", "format": "wav"}}}, "audio"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS}, "nope"),
]:
    err = refused(
        BadRequestError,
        lambda: client.chat.completions.create(model=model, messages=ASK, max_tokens=2, **kwargs),
        f"{field} must be refused",
    )
    check(f"refused: {field}", field in str(err), err)

if embedder:
    # 11. Embeddings, as floats and as base64, with `dimensions`; a chat model makes none.
    resp = client.embeddings.create(model=embedder, input=["the cat", "a dog", "the cat"], encoding_format="float")
    vectors = [d.embedding for d in resp.data]
    check("embeddings: one per input, in order", [d.index for d in resp.data] == [0, 1, 2], resp.data)
    check("embeddings: unit length", all(abs(math.sqrt(sum(v * v for v in vec)) - 1) < 1e-3 for vec in vectors), vectors)
    check("embeddings: the same text, the same vector", vectors[0] == vectors[2], vectors)
    check("embeddings: usage", resp.usage.prompt_tokens >= 3, resp.usage)
    # Without `encoding_format` the SDK asks for base64 and decodes it itself; over plain
    # HTTP the wire form shows.
    sdk = client.embeddings.create(model=embedder, input="the cat").data[0].embedding
    req = urllib.request.Request(
        base_url + "/embeddings",
        data=json.dumps({"model": embedder, "input": "the cat", "encoding_format": "base64"}).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    wire = json.load(urllib.request.urlopen(req))["data"][0]["embedding"]
    decoded = list(struct.unpack(f"<{len(base64.b64decode(wire)) // 4}f", base64.b64decode(wire)))
    check("embeddings base64: little-endian f32s", all(abs(a - b) < 1e-6 for a, b in zip(decoded, vectors[0])), (decoded[:4], vectors[0][:4]))
    check("embeddings: the SDK reads base64", all(abs(a - b) < 1e-6 for a, b in zip(sdk, vectors[0])), sdk[:4])
    short = client.embeddings.create(model=embedder, input="the cat", dimensions=8).data[0].embedding
    check("embeddings: dimensions", len(short) == 8 and abs(math.sqrt(sum(v * v for v in short)) - 1) < 1e-3, short)
    err = refused(
        BadRequestError, lambda: client.embeddings.create(model=model, input="x"), "a chat model must make no embeddings"
    )
    check("embeddings: a chat model refuses", "not an embedding model" in str(err), err)
    err = refused(
        BadRequestError,
        lambda: client.chat.completions.create(model=embedder, messages=ASK, max_tokens=2),
        "an embedding model must not chat",
    )
    check("chat: an embedding model refuses", "embedding model" in str(err), err)

print("ok all")
