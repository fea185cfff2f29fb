"""The Files and Batch APIs through the official `openai` Python client, in two steps so
that the test can restart the worker and the nats-server in between.

Usage:
  python openai_batch.py BASE_URL MODEL API_KEY create [BODY_JSON]  prints the batch id
                                                    (BODY_JSON: fields added to each line's body)
  python openai_batch.py BASE_URL MODEL API_KEY finish BATCH   waits for it, checks the output
Exits non-zero (with a message) if anything is off.
"""
import io
import json
import sys
import time

from openai import NotFoundError, OpenAI
from refusals import refused

base_url, model, api_key, step = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=3, timeout=60)
LINES = 3
MAX_TOKENS = 300


def check(name, cond, detail):
    if not cond:
        raise SystemExit(f"{name}: {detail}")
    print("ok", name, file=sys.stderr)


if step == "create":
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Say {i}"}], "max_tokens": MAX_TOKENS, **extra},
        }
        for i in range(LINES)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    check("file: uploaded", uploaded.id.startswith("file-") and uploaded.bytes == len(data), uploaded)
    check("file: read back", client.files.retrieve(uploaded.id).filename == "requests.jsonl", uploaded)
    check("file: content", client.files.content(uploaded.id).read() == data, None)
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"purpose": "test"},
    )
    check("batch: created", batch.status in ("validating", "in_progress") and batch.request_counts.total == LINES, batch)
    check("batch: listed", any(b.id == batch.id for b in client.batches.list()), None)
    print(batch.id)
elif step == "finish":
    batch_id = sys.argv[5]
    deadline = time.time() + 180
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            break
        if time.time() > deadline:
            raise SystemExit(f"batch not done in time: {batch}")
        time.sleep(0.5)
    check("batch: completed", batch.status == "completed", batch)
    counts = batch.request_counts
    check("batch: counts", (counts.total, counts.completed, counts.failed) == (LINES, LINES, 0), counts)
    check("batch: no error file", batch.error_file_id is None, batch)
    check("batch: metadata kept", batch.metadata == {"purpose": "test"}, batch)
    output = client.files.content(batch.output_file_id).read().decode()
    rows = [json.loads(line) for line in output.splitlines()]
    check("output: one row per line", sorted(r["custom_id"] for r in rows) == [f"line-{i}" for i in range(LINES)], rows)
    for r in rows:
        check(f"output {r['custom_id']}: 200", r["response"]["status_code"] == 200, r)
        body = r["response"]["body"]
        check(f"output {r['custom_id']}: a chat completion", body["object"] == "chat.completion", body)
        check(f"output {r['custom_id']}: usage", 1 <= body["usage"]["completion_tokens"] <= MAX_TOKENS + 8, body)
        # The test bans the end tokens with `logit_bias`: every line runs long (a random
        # model left alone often ends after a token or two).
        check(f"output {r['custom_id']}: long", body["usage"]["completion_tokens"] >= MAX_TOKENS // 3, body["usage"])
        check(f"output {r['custom_id']}: request id", r["response"]["request_id"] == f"{batch_id}-{r['custom_id'][5:]}", r)
    info = client.files.retrieve(batch.output_file_id)
    check("output file: its record", info.purpose == "batch_output", info)
    client.files.delete(batch.output_file_id)
    refused(NotFoundError, lambda: client.files.retrieve(batch.output_file_id), "a deleted file must be gone")
    check("output file: deleted", True, None)
    print("ok all")
else:
    raise SystemExit(f"unknown step {step}")
