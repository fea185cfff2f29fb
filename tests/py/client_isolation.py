"""Two NATS client identities, as nats.py sees them: each owns its tasks, and neither can
read, list, cancel or charge the other's, nor act as an API key.

Usage: client_isolation.py URL CREDENTIALS_DIR EVENTS_STREAM KEY_ID

`alpha` (client-alpha.nk) submits a long task; `beta` (client-beta.nk) then tries
everything it should not. Prints one JSON line per check: {"check", "ok", "detail"}.
"""

import asyncio
import json
import sys
import time

import msgpack
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy, AckPolicy

ROOT = "bitinglip.v1"


def envelope(body):
    return msgpack.packb(
        {"v": 1, "id": f"py-{time.time_ns()}", "time_ms": int(time.time() * 1000), "source": "py", "body": body}
    )


def body_of(payload):
    return msgpack.unpackb(payload, raw=False)["body"]


async def connect(url, creds, name, errors):
    async def on_error(e):
        errors.append(str(e))

    return await nats.connect(
        url,
        nkeys_seed_str=open(f"{creds}/client-{name}.nk").read().strip(),
        inbox_prefix=f"_INBOX_client_{name}",
        error_cb=on_error,
        allow_reconnect=False,
    )


async def main():
    url, creds, events_stream, key_id = sys.argv[1:5]
    out = []

    def check(name, ok, detail=None):
        out.append({"check": name, "ok": bool(ok), "detail": detail})

    a_err, b_err = [], []
    alpha = await connect(url, creds, "alpha", a_err)
    beta = await connect(url, creds, "beta", b_err)

    async def refused(errors, about, seconds=3):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any("permissions violation" in e.lower() and about.lower() in e.lower() for e in errors):
                return True
            await asyncio.sleep(0.05)
        return False

    async def request(nc, subject, body, timeout=5):
        msg = await nc.request(subject, envelope(body), timeout=timeout)
        return body_of(msg.data)

    # alpha: a long task, followed live.
    a_id = "alpha-task-1"
    words = " ".join(f"w{i}" for i in range(200))
    a_events = await alpha.subscribe(f"{ROOT}.task.client-alpha.{a_id}.events")
    reply = await request(
        alpha,
        f"{ROOT}.task.client-alpha.submit",
        {"chat": {"model": "echo", "messages": [{"role": "user", "content": words}], "max_tokens": 400}, "task_id": a_id},
    )
    check("alpha submits", reply.get("type") == "accepted", reply)
    check(
        "alpha's events subject names its owner",
        reply.get("events_subject") == f"{ROOT}.task.client-alpha.{a_id}.events",
        reply.get("events_subject"),
    )
    first = body_of((await a_events.next_msg(timeout=10)).data)
    check("alpha's task started", first.get("type") in ("started", "chunk"), first)

    # beta: no one else's events, live or stored.
    for subject in (f"{ROOT}.task.*.*.events", f"{ROOT}.task.client-alpha.{a_id}.events", "_INBOX_client_alpha.>"):
        b_err.clear()
        await beta.subscribe(subject)
        await beta.flush()
        check(f"beta may not subscribe to {subject}", await refused(b_err, subject))
    js = beta.jetstream(timeout=3)
    for name, filt in (("all", None), ("alpha's", f"{ROOT}.task.client-alpha.>")):
        b_err.clear()
        try:
            cfg = ConsumerConfig(name=f"peek-{name.strip(chr(39))}", filter_subject=filt,
                                 deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE)
            await js.add_consumer(events_stream, cfg)
            check(f"beta may not read {name} stored events", False, "consumer created")
        except Exception as e:  # noqa: BLE001
            check(f"beta may not read {name} stored events", await refused(b_err, "CONSUMER.CREATE"), repr(e))

    # beta: neither the trusted get and list, nor alpha's task through its own.
    for subject in (f"{ROOT}.task.get", f"{ROOT}.task.list", f"{ROOT}.task.client-alpha.get"):
        b_err.clear()
        try:
            await request(beta, subject, {"task_id": a_id}, timeout=1)
        except Exception:  # noqa: BLE001
            pass
        check(f"beta may not ask {subject}", await refused(b_err, subject))
    got = await request(beta, f"{ROOT}.task.client-beta.get", {"task_id": a_id})
    check("alpha's task is not_found for beta", got.get("type") == "error" and got.get("kind") == "not_found", got)
    part = await request(beta, f"{ROOT}.task.client-beta.result", {"task_id": a_id, "name": f"{a_id}.1"})
    check("alpha's results are not_found for beta", part.get("kind") == "not_found", part)

    # beta: cancel alpha's task, on alpha's subject (refused) and on its own (not found).
    subject = f"{ROOT}.task.client-alpha.{a_id}.cancel"
    b_err.clear()
    await beta.publish(subject, envelope({"task_id": a_id, "reason": "hostile"}))
    await beta.flush()
    check("beta may not publish alpha's cancel", await refused(b_err, subject))
    ack = await request(beta, f"{ROOT}.task.client-beta.{a_id}.cancel", {"task_id": a_id, "reason": "hostile"})
    check("cancelling alpha's task on beta's subject is not_found", ack.get("kind") == "not_found", ack)

    # beta: replace alpha's task (new_id), or bill an API key (owner): its own task at most.
    reply = await request(
        beta,
        f"{ROOT}.task.client-beta.submit",
        {"chat": {"model": "echo", "messages": [{"role": "user", "content": "stolen"}]}, "task_id": a_id,
         "new_id": True},
    )
    check("beta cannot replace alpha's task", reply.get("type") == "rejected" and reply.get("kind") == "conflict", reply)
    b_id = "beta-task-1"
    b_events = await beta.subscribe(f"{ROOT}.task.client-beta.{b_id}.events")
    reply = await request(
        beta,
        f"{ROOT}.task.client-beta.submit",
        {"chat": {"model": "echo", "messages": [{"role": "user", "content": "on your bill"}]}, "task_id": b_id,
         "owner": key_id},
    )
    check("beta submits for itself", reply.get("type") == "accepted", reply)
    while True:
        ev = body_of((await b_events.next_msg(timeout=30)).data)
        if ev.get("type") in ("completed", "failed"):
            break
    check("beta's task completes", ev.get("type") == "completed", ev)
    got = await request(beta, f"{ROOT}.task.client-beta.get", {"task_id": b_id})
    check("beta's task is beta's, not the key's", got.get("owner") == "client-beta", got.get("owner"))
    listed = await request(beta, f"{ROOT}.task.client-beta.list", {"owner": key_id})
    owners = sorted({t.get("owner") for t in listed.get("tasks", [])})
    check("beta lists only its own tasks", owners == ["client-beta"], owners)
    # Its own stored events it may read back, through a consumer filtered to them.
    cfg = ConsumerConfig(name="own-scan", filter_subject=f"{ROOT}.task.client-beta.{b_id}.events",
                         deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE)
    try:
        info = await js.add_consumer(events_stream, cfg)
        check("beta reads back its own stored events", info.num_pending >= 2, info.num_pending)
        await js.delete_consumer(events_stream, "own-scan")
    except Exception as e:  # noqa: BLE001
        check("beta reads back its own stored events", False, repr(e))

    # beta's limits (task_manager.client_limits: 4 submits a minute) are its own: its
    # flood is refused with rate_limit_exceeded, and alpha (no limits) submits on.
    refusal = None
    for i in range(10):
        reply = await request(
            beta,
            f"{ROOT}.task.client-beta.submit",
            {"chat": {"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
             "task_id": f"beta-flood-{i}"},
        )
        if reply.get("type") == "rejected":
            refusal = reply
            break
    check("beta is refused past its rpm", refusal and refusal.get("kind") == "rate_limit_exceeded", refusal)
    reply = await request(
        alpha,
        f"{ROOT}.task.client-alpha.submit",
        {"chat": {"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
         "task_id": "alpha-task-2"},
    )
    check("alpha is not held to beta's limits", reply.get("type") == "accepted", reply)

    # alpha's task ran to its end, untouched.
    text = []
    while True:
        ev = body_of((await a_events.next_msg(timeout=30)).data)
        if ev.get("type") == "chunk":
            text.append(ev.get("text", ""))
        if ev.get("type") in ("completed", "failed"):
            break
    check(
        "alpha's task completed whole",
        ev.get("type") == "completed" and ev.get("finish_reason") == "stop" and ev.get("text", "").split() == words.split(),
        {k: ev.get(k) for k in ("type", "finish_reason", "error")},
    )
    await alpha.close()
    await beta.close()
    for r in out:
        print(json.dumps(r, default=str), flush=True)


asyncio.run(main())
