"""Chat with a BitingLip gateway through the official `openai` Python client.

Usage: python openai_chat.py BASE_URL MODEL API_KEY
Exits non-zero (with a message) if anything is off.
"""
import sys

from openai import OpenAI

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=api_key)

listed = [m.id for m in client.models.list()]
assert model in listed, f"{model} not in {listed}"

resp = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello there"}],
    max_tokens=6,
)
choice = resp.choices[0]
assert choice.message.role == "assistant", choice
assert choice.finish_reason in ("stop", "length"), choice
assert 1 <= resp.usage.completion_tokens <= 6, resp.usage
assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Stream please"}],
    max_tokens=6,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage is not None and not chunk.choices:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert finish in ("stop", "length"), finish
assert usage is not None and 1 <= usage.completion_tokens <= 6, usage

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("an unknown model must fail")
except Exception as err:  # openai.NotFoundError
    assert getattr(err, "status_code", None) == 404, err

print("ok", len(pieces), "chunks")
