"""Ingestion benchmark: events/s from RecordInteractions to the Parquet interaction store, and
the latency from an event to a served model that has learned it.

Runs `recsvc serve` on the demo model (embedded mode: fsynced file log, or --redis), a
RecordInteractions load (batches of --batch events, --concurrency clients) while the ingest
worker runs in loop mode beside it; then one more event for a brand-new user, ingest + forced
retrain, and the time until the server answers that user from a model that knows them.

    .venv/bin/python bench/ingest.py [--seconds 10] [--batch 500] [--concurrency 4] [--redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc._proto.v1 import recommender_pb2 as pb  # noqa: E402
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402
from recsvc.data.demo import generate_demo_data  # noqa: E402
from recsvc.testing import recsvc_command, redis_server, running_server, server_env  # noqa: E402
from workers.ingest import InteractionStore  # noqa: E402


async def record(target: str, seconds: float, batch: int, concurrency: int) -> tuple[int, float]:
    sent = 0
    stop_at = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        async def client(c: int) -> None:
            nonlocal sent
            n = 0
            while time.perf_counter() < stop_at:
                events = [
                    pb.Interaction(
                        user_id=f"u{(c * 7919 + n * 31 + k) % 2000:05d}",
                        item_id=f"i{(n * 131 + k * 17) % 3000:05d}",
                        event_type=pb.EVENT_TYPE_VIEW,
                        event_id=f"b{c}-{n}-{k}",
                    )
                    for k in range(batch)
                ]
                n += 1
                response = await stub.RecordInteractions(
                    pb.RecordInteractionsRequest(interactions=events), timeout=30
                )
                sent += response.accepted

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        return sent, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--redis", action="store_true", help="Redis mode instead of embedded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        data = generate_demo_data(root / "data")
        models, store_dir, log_path = root / "models", root / "store", root / "events.jsonl"
        env = {
            "RECSVC_SERVING__MODEL_POLL_SECONDS": "0.2",
            "RECSVC_SERVER__DRAIN_SECONDS": "0",
            "RECSVC_STORE__EVENT_LOG_PATH": str(log_path),
            "RECSVC_LOG_LEVEL": "WARNING",
            "RECSVC_TRAIN__FACTORS": "32",
            "RECSVC_WORKERS__BATCH_SIZE": "20000",
            "RECSVC_WORKERS__INTERVAL_SECONDS": "0.5",
        }
        if args.redis:
            env["RECSVC_REDIS_URL"] = stack.enter_context(redis_server())
        subprocess.run(
            recsvc_command(
                "train",
                "--interactions",
                str(data.interactions),
                "--out",
                str(models),
                "--no-progress",
            ),
            env=server_env(**env),
            check=True,
            capture_output=True,
        )
        server = stack.enter_context(
            running_server(
                ["serve", "--model-store", str(models), "--port", "0"], server_env(**env)
            )
        )
        common = ["--model-store", str(models), "--interaction-store", str(store_dir)]
        ingest = ["worker", "ingest", *common] + (
            [] if args.redis else ["--event-log", str(log_path)]
        )
        worker = subprocess.Popen(
            recsvc_command(*ingest),
            env=server_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            started = time.perf_counter()
            sent, record_seconds = asyncio.run(
                record(server.target, args.seconds, args.batch, args.concurrency)
            )
            store = InteractionStore(store_dir)
            while store.count() < sent:
                time.sleep(0.05)
            end_to_end = time.perf_counter() - started
        finally:
            worker.terminate()
            worker.wait()

        # Event -> served model: a brand-new user, ingested, retrained, swapped in.
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            started = time.perf_counter()
            stub.RecordInteractions(
                pb.RecordInteractionsRequest(
                    interactions=[
                        pb.Interaction(user_id="latecomer", item_id="i00001", event_id="late-1")
                    ]
                ),
                timeout=10,
            )
            subprocess.run(
                recsvc_command(*ingest, "--once"),
                env=server_env(**env),
                check=True,
                capture_output=True,
            )
            trained = subprocess.run(
                recsvc_command(
                    "worker",
                    "train",
                    "--once",
                    "--force",
                    "--base",
                    str(data.interactions),
                    *common,
                ),
                env=server_env(**env),
                check=True,
                capture_output=True,
                text=True,
            )
            version = json.loads(trained.stdout.splitlines()[-1])["result"]
            while stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version != version:
                time.sleep(0.05)
            latency = time.perf_counter() - started
    print(
        json.dumps(
            {
                "bench": "ingest",
                "mode": "redis" if args.redis else "embedded",
                "batch": args.batch,
                "concurrency": args.concurrency,
                "events": sent,
                "record_events_per_s": round(sent / record_seconds),
                "end_to_end_events_per_s": round(sent / end_to_end),
                "event_to_served_model_s": round(latency, 2),
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            }
        )
    )


if __name__ == "__main__":
    main()
