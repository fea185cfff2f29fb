"""What a NATS client in another language sees of BitingLip's per-role users.

Usage: bus_permissions.py URL CREDENTIALS_DIR TASKS_STREAM

Connects with nats.py as `worker` and as `client` (nkey seeds, per-role inbox
prefixes), tries what each may not do, and prints one JSON line per attempt:
{"role", "action", "refused", "error"}. An anonymous connection comes last.
"""

import asyncio
import json
import sys

import nats
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig


async def attempts(url, creds, role, tasks_stream):
    errors = []

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(
        url,
        nkeys_seed_str=open(f"{creds}/{role}.nk").read().strip(),
        inbox_prefix=f"_INBOX_{role.replace('-', '_')}",
        error_cb=on_error,
        allow_reconnect=False,
    )
    js = nc.jetstream(timeout=2)
    results = []

    async def refusal(about=""):
        """The server's permissions error (about `about`), polled for up to 3 s."""
        deadline = asyncio.get_running_loop().time() + 3
        while True:
            hit = [e for e in errors if "permissions violation" in e.lower() and about.lower() in e.lower()]
            if hit or asyncio.get_running_loop().time() > deadline:
                return hit[0] if hit else None
            await asyncio.sleep(0.05)

    async def publish(action, subject):
        errors.clear()
        await nc.publish(subject, b"{}")
        await nc.flush()
        hit = await refusal(subject)
        results.append({"role": role, "action": action, "refused": hit is not None, "error": hit})

    async def jetstream(action, call):
        errors.clear()
        try:
            await call()
            refused, error = False, None
        except (NatsError, asyncio.TimeoutError, Exception) as e:  # noqa: BLE001
            hit = await refusal()
            refused, error = hit is not None, (hit or repr(e))
        results.append({"role": role, "action": action, "refused": refused, "error": error})

    await jetstream("delete stream", lambda: js.delete_stream(tasks_stream))
    await jetstream("purge stream", lambda: js.purge_stream(tasks_stream))
    await publish("forge advisory", f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{tasks_stream}.worker-x")
    await publish("delete model", "bitinglip.v1.model.delete")
    if role == "worker":
        await jetstream("delete consumer", lambda: js.delete_consumer(tasks_stream, "worker-echo-interactive"))
        await publish("set deployment", "bitinglip.v1.deployment.set")
        # Reconfigure the queue's shared consumer (one delivery, then poison).
        reconfigured = ConsumerConfig(
            name="worker-echo-interactive",
            durable_name="worker-echo-interactive",
            filter_subject="bitinglip.v1.queue.echo.interactive.*",
            max_deliver=1,
            ack_policy=AckPolicy.EXPLICIT,
        )
        await jetstream("update consumer", lambda: js.add_consumer(tasks_stream, reconfigured))
        # Erase a key's usage with a negative increment.
        errors.clear()
        await nc.publish(
            "bitinglip.v1.usage-day.0123456789abcdef.2026-12-07", b"", headers={"Nats-Incr": "-1000"}
        )
        await nc.flush()
        hit = await refusal("usage-day")
        results.append({"role": role, "action": "negative usage increment", "refused": hit is not None, "error": hit})
    await nc.close()
    return results


async def main():
    url, creds, tasks_stream = sys.argv[1], sys.argv[2], sys.argv[3]
    for role in ("worker", "client"):
        for r in await attempts(url, creds, role, tasks_stream):
            print(json.dumps(r), flush=True)
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        await nc.close()
        refused, error = False, None
    except Exception as e:  # noqa: BLE001
        refused, error = True, repr(e)
    print(json.dumps({"role": "anonymous", "action": "connect", "refused": refused, "error": error}), flush=True)


asyncio.run(main())
