"""Answers end where the model (or the grammar) ends them, on models whose files disagree
about the end token, through the official `openai` Python client: a forced tool call is
`tool_calls` (never text with `<|endoftext|>` after it), one cut by `max_tokens` keeps its
arguments so far with `finish_reason: "length"`, and no special token reaches a client as
text (chat, streamed or not, legacy completions, the Responses API).

Usage: python end_tokens.py BASE_URL API_KEY MODEL [MODEL ...]
Exits non-zero (with a message) if anything is off; prints one line per check.
"""
import json
import sys

import jsonschema
from openai import OpenAI

base_url, api_key, models = sys.argv[1], sys.argv[2], sys.argv[3:]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_forecast", "description": "A forecast", "parameters": FORECAST}}]
NAMED = {"type": "function", "function": {"name": "get_forecast"}}
SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
MESSAGES = [{"role": "user", "content": "What will the weather be in Oslo for the next four days?"}]


def fail(model, what, detail):
    print(f"FAIL {model} {what}: {detail}", flush=True)
    sys.exit(1)


def no_specials(model, what, text):
    for s in SPECIALS:
        if text and s in text:
            fail(model, what, f"{s!r} reached the client as text: {text!r}")


for model in models:
    # A forced named call: the calls, the reason, no text.
    r = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=200)
    choice = r.choices[0]
    if choice.finish_reason != "tool_calls" or not choice.message.tool_calls:
        fail(model, "forced call", f"{choice.finish_reason} content={choice.message.content!r}")
    if choice.message.content:
        fail(model, "forced call", f"content beside the call: {choice.message.content!r}")
    call = choice.message.tool_calls[0]
    no_specials(model, "forced call arguments", call.function.arguments)
    jsonschema.validate(json.loads(call.function.arguments), FORECAST)
    if call.function.name != "get_forecast":
        fail(model, "forced call", call.function.name)
    print(f"ok {model} forced call {call.function.arguments}", flush=True)

    # The same, streamed.
    args, reasons, text = "", [], ""
    for chunk in client.chat.completions.create(
        model=model, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=200, stream=True
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                args += (tc.function.arguments or "") if tc.function else ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    no_specials(model, "streamed forced call", text + args)
    jsonschema.validate(json.loads(args), FORECAST)
    if reasons != ["tool_calls"]:
        fail(model, "streamed forced call", reasons)
    print(f"ok {model} streamed forced call", flush=True)

    # `required`: a call of any tool.
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=200
    )
    choice = r.choices[0]
    if choice.finish_reason != "tool_calls" or not choice.message.tool_calls:
        fail(model, "required call", f"{choice.finish_reason} content={choice.message.content!r}")
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), FORECAST)
    print(f"ok {model} required call", flush=True)

    # Cut by max_tokens: the call so far, finishing by length.
    r = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=3)
    choice = r.choices[0]
    if choice.finish_reason != "length" or not choice.message.tool_calls:
        fail(model, "cut call", f"{choice.finish_reason} calls={choice.message.tool_calls} content={choice.message.content!r}")
    cut = choice.message.tool_calls[0]
    if cut.function.name != "get_forecast" or not cut.function.arguments.startswith("{"):
        fail(model, "cut call", cut)
    print(f"ok {model} cut call {cut.function.arguments!r}", flush=True)

    # Structured output ends with its JSON.
    fmt = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": FORECAST, "strict": True}}
    r = client.chat.completions.create(model=model, messages=MESSAGES, response_format=fmt, max_tokens=200)
    content = r.choices[0].message.content
    no_specials(model, "structured output", content)
    jsonschema.validate(json.loads(content), FORECAST)
    if r.choices[0].finish_reason != "stop":
        fail(model, "structured output", r.choices[0].finish_reason)
    print(f"ok {model} structured output", flush=True)

    # Free text, every way a client asks for it: no special token is text.
    for seed in range(3):
        r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40, seed=seed, temperature=1.0)
        no_specials(model, "chat", r.choices[0].message.content)
        streamed = ""
        for chunk in client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=40, seed=seed, temperature=1.0, stream=True
        ):
            for c in chunk.choices:
                streamed += c.delta.content or ""
        no_specials(model, "streamed chat", streamed)
        r = client.completions.create(model=model, prompt="The weather in Oslo", max_tokens=40, seed=seed, temperature=1.0)
        no_specials(model, "completion", r.choices[0].text)
        r = client.responses.create(model=model, input="The weather in Oslo?", max_output_tokens=40, temperature=1.0)
        no_specials(model, "response", r.output_text)
    print(f"ok {model} free text", flush=True)

print("ok all", flush=True)
