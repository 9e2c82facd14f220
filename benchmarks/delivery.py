"""Handoffs per second that the delivery service posts to a local webhook answering at once.

    python -m benchmarks.delivery [--handoffs 3000] [--concurrency 16] [--latency-ms 0]

Starts the embedded broker, produces the handoffs, and runs the delivery service in this
process against an aiohttp webhook in the same event loop (so both share one core; a real
webhook's latency, not this figure, bounds production throughput: about concurrency / latency).
The rate is counted from the first request to the last handoff received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from streamscore import dev
from streamscore.config import Settings, load_settings
from streamscore.delivery.runner import run_delivery
from streamscore.runtime.kafka import ensure_topics

EXAMPLE = Path(__file__).resolve().parents[1] / "schemas/examples/handoff.v1/valid/handoff.json"


async def measure(handoffs: int, concurrency: int, latency_ms: float) -> float:
    """Deliver `handoffs` handoffs; returns handoffs per second."""
    broker = dev.start_broker()
    try:
        received: set[str] = set()
        first: list[float] = []

        async def webhook(request: web.Request) -> web.Response:
            await request.read()
            if not first:
                first.append(time.monotonic())
            if latency_ms:
                await asyncio.sleep(latency_ms / 1000)
            received.add(request.headers["Idempotency-Key"])
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", webhook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = dev.free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        run = uuid.uuid4().hex[:8]
        settings = load_settings(
            kafka_bootstrap=broker.bootstrap,
            topic_handoffs=f"bench-handoffs-{run}",
            topic_delivery_dead_letter=f"bench-delivery-dl-{run}",
            delivery_consumer_group=f"bench-delivery-{run}",
            delivery_webhook_urls=[f"http://127.0.0.1:{port}/hook"],
            delivery_signing_secret="bench-signing-secret-0000",
            delivery_concurrency=concurrency,
            delivery_web_port=dev.free_port(),
        )
        await _produce(settings, handoffs)
        stopping = asyncio.Event()
        task = asyncio.create_task(run_delivery(settings, stopping))
        while len(received) < handoffs:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - first[0]
        stopping.set()
        await task
        await runner.cleanup()
        return handoffs / elapsed
    finally:
        broker.stop()


async def _produce(settings: Settings, handoffs: int) -> None:
    template = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for n in range(handoffs):
            doc = {**template, "handoff_id": f"bench-{n:08d}", "lead_id": f"lead-{n}"}
            futures.append(
                await producer.send(settings.topic_handoffs, orjson.dumps(doc), key=f"{n}".encode())
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--handoffs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the webhook's answer delay")
    args = parser.parse_args()
    rate = asyncio.run(measure(args.handoffs, args.concurrency, args.latency_ms))
    print(
        f"{args.handoffs} handoffs, concurrency {args.concurrency}, webhook latency "
        f"{args.latency_ms:g} ms: {rate:,.0f} handoffs/s"
    )


if __name__ == "__main__":
    main()
