"""A streamed chat through the official `openai` Python client, as a user runs it, with
each piece's arrival reported: for fault tests that kill a worker mid-stream and time
what the client saw.

Usage: python openai_stream.py BASE_URL API_KEY MODEL PROMPT MAX_TOKENS
Prints `task <id>` once the answer starts, then `chunk <monotonic seconds> <json text>`
for each piece of content, then `done <finish_reason>`.
"""
import json
import sys
import time

from openai import OpenAI

base_url, api_key, model, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

with client.chat.completions.with_streaming_response.create(
    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True
) as response:
    print(f"task {response.headers['x-task-id']}", flush=True)
    reason = None
    for chunk in response.parse():
        for c in chunk.choices:
            if c.delta.content:
                print(f"chunk {time.monotonic():.6f} {json.dumps(c.delta.content)}", flush=True)
            if c.finish_reason:
                reason = c.finish_reason
    print(f"done {reason}", flush=True)
