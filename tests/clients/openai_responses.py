"""The Responses API through the official `openai` Python client: a conversation continued
with `previous_response_id`, streamed typed events, a forced function call, structured
output, read back and deleted, and another key's response out of reach.

Usage: python openai_responses.py BASE_URL MODEL API_KEY OTHER_API_KEY
Exits non-zero (with a message) if anything is off; prints one line per check.
"""
import json
import sys

import jsonschema
from openai import BadRequestError, NotFoundError, OpenAI
from refusals import refused

base_url, model, api_key, other_key = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
other = OpenAI(base_url=base_url, api_key=other_key, max_retries=0, timeout=120)


def check(name, cond, detail):
    if not cond:
        raise SystemExit(f"{name}: {detail}")
    print("ok", name)


# 1. A response, then one that continues it.
first = client.responses.create(model=model, input="Hello there", instructions="Be brief.", max_output_tokens=8)
check("first: completed or incomplete", first.status in ("completed", "incomplete"), first)
check("first: an id", first.id.startswith("resp_"), first.id)
check("first: one message", first.output[0].type == "message" and first.output[0].role == "assistant", first.output)
check("first: output_text", isinstance(first.output_text, str), first)
check("first: usage", first.usage.output_tokens >= 1 and first.usage.input_tokens >= 1, first.usage)
second = client.responses.create(
    model=model, input=[{"role": "user", "content": "And again?"}], previous_response_id=first.id, max_output_tokens=8
)
check("second: continues", second.previous_response_id == first.id, second)
# The continued conversation is longer than the new input alone: the earlier turns were
# in the prompt.
alone = client.responses.create(model=model, input=[{"role": "user", "content": "And again?"}], max_output_tokens=8)
check(
    "second: the earlier turns are in its prompt",
    second.usage.input_tokens > alone.usage.input_tokens,
    (second.usage, alone.usage),
)

# 2. Read back and delete; another key sees nothing.
back = client.responses.retrieve(first.id)
check("retrieve: the same response", back.id == first.id and back.output_text == first.output_text, back)
refused(NotFoundError, lambda: other.responses.retrieve(first.id), "another key must not read the response")
check("retrieve: another key gets 404", True, None)
refused(
    NotFoundError,
    lambda: other.responses.create(model=model, input="x", previous_response_id=first.id, max_output_tokens=2),
    "another key must not continue the response",
)
check("continue: another key gets 404", True, None)
client.responses.delete(alone.id)
refused(NotFoundError, lambda: client.responses.retrieve(alone.id), "a deleted response must be gone")
check("delete: gone", True, None)

# 3. Streamed: typed events in order, text deltas adding up to the final text.
events = list(
    client.responses.create(model=model, input="Stream please", max_output_tokens=8, stream=True)
)
types = [e.type for e in events]
check("stream: created first", types[:2] == ["response.created", "response.in_progress"], types)
check("stream: ends completed", types[-1] in ("response.completed", "response.incomplete"), types)
check("stream: sequence numbers", [e.sequence_number for e in events] == list(range(len(events))), types)
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
final = events[-1].response
check("stream: deltas are the text", deltas == final.output_text, (deltas, final.output_text))
for kind in ["response.output_item.added", "response.content_part.added", "response.output_text.done", "response.output_item.done"]:
    check(f"stream: {kind}", kind in types, types)
check("stream: stored", client.responses.retrieve(final.id).id == final.id, final.id)

# 4. A forced function call, plain and streamed: arguments valid against the schema.
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}, "metric": {"type": "boolean"}},
    "required": ["city", "metric"],
    "additionalProperties": False,
}
tools = [{"type": "function", "name": "get_weather", "description": "weather", "parameters": WEATHER}]
resp = client.responses.create(
    model=model, input="Weather in Oslo?", tools=tools, tool_choice={"type": "function", "name": "get_weather"},
    max_output_tokens=100,
)
calls = [o for o in resp.output if o.type == "function_call"]
check("function call: one", len(calls) == 1 and calls[0].name == "get_weather", resp.output)
jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
check("function call: arguments valid", True, None)
# Its output goes back as a function_call_output, continuing the stored conversation.
after = client.responses.create(
    model=model,
    previous_response_id=resp.id,
    input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"celsius": 3}'}],
    max_output_tokens=6,
)
check("function call output: answered", after.status in ("completed", "incomplete"), after)
events = list(
    client.responses.create(
        model=model, input="Weather?", tools=tools, tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=100, stream=True,
    )
)
args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
jsonschema.validate(json.loads(args), WEATHER)
done = [e for e in events if e.type == "response.function_call_arguments.done"]
check("function call streamed: deltas and done agree", done and done[0].arguments == args, (args, done))

# 5. Structured output through text.format.
ANSWER = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}
resp = client.responses.create(
    model=model, input="Is it raining?", max_output_tokens=100,
    text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}},
)
jsonschema.validate(json.loads(resp.output_text), ANSWER)
check("text.format json_schema: valid", True, resp.output_text)

# 6. Refusals name the field.
image = [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]
err = refused(BadRequestError, lambda: client.responses.create(model=model, input=image), "an image part must be refused")
check("refused: input_image", "input[0].content[0].type" in str(err), err)
refused(
    NotFoundError,
    lambda: client.responses.create(model=model, input="x", previous_response_id="resp_nope"),
    "an unknown previous response must be refused",
)
check("refused: unknown previous_response_id", True, None)

print("ok all")
