"""Does a model swap in one namespace disturb another's latency? (issue 20, Done-when 1)

One `recsvc serve` process (embedded mode) serves namespaces a and b, each a model of
--items items x 64 random factors (HNSW M 16). A closed loop of --concurrency callers asks
namespace a for Recommend; in "swap" rounds namespace b's LATEST flips between two versions
every --swap-every seconds (each flip: b's watcher verifies and loads a whole model, indexes
included, and swaps it in), in "quiet" rounds b is left alone. Rounds interleave (quiet, swap,
swap, quiet, ...); the line printed gives a's p50/p99 and longest call per round, and their
medians per kind.

    .venv/bin/python bench/namespaces.py [--items 50000] [--rounds 4] [--seconds 8]

`--env NAME=VALUE` passes a setting to the server (e.g. RECSVC_SERVING__FREEZE_HEAP=false) to
compare serving options. `--load-elsewhere` is the control: in "swap" rounds b is left alone and
another process loads b's versions at the same pace, so a's latency pays only for the CPU the
loads take, not for sharing the server's interpreter with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.model_memory import DIM, INDEX, synthetic  # noqa: E402
from bench.serve import closed_loop  # noqa: E402
from recsvc._proto.v1 import recommender_pb2 as pb  # noqa: E402
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402
from recsvc.artifacts import ModelStore  # noqa: E402
from recsvc.artifacts.store import LATEST_NAME  # noqa: E402
from recsvc.config import TrainSettings  # noqa: E402
from recsvc.durable import replace_bytes_atomically  # noqa: E402
from recsvc.fitting.factors import TrainedFactors  # noqa: E402
from recsvc.index import IndexBuildParams  # noqa: E402
from recsvc.testing import running_server, server_env  # noqa: E402
from recsvc.training.pipeline import build_model  # noqa: E402

K = 10


def publish_random_model(store: ModelStore, users: int, items: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    data = synthetic(users, items, rng)
    factors = TrainedFactors(
        rng.normal(size=(len(data.user_ids), DIM)).astype(np.float32),
        rng.normal(size=(len(data.item_ids), DIM)).astype(np.float32),
        "cpu",
        0.0,
    )
    model = build_model(data, factors, TrainSettings(factors=DIM), INDEX, store.new_version())
    store.publish(model, IndexBuildParams.from_settings(INDEX, threads=0))
    return model.version


async def flip_b(store: ModelStore, versions: list[str], every: float, stop: asyncio.Event) -> int:
    """Point b's LATEST at the other version every ``every`` seconds; the flips made."""
    flips = 0
    while not stop.is_set():
        current = store.latest_version()
        # Written directly (no verify here): the bench process should load the cores no more
        # in swap rounds than in quiet ones.
        other = versions[1] if current == versions[0] else versions[0]
        replace_bytes_atomically(store.root / LATEST_NAME, f"{other}\n".encode())
        flips += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return flips


LOAD_LOOP = """
import sys, time
from recsvc.config import Settings
from recsvc.server import load_recommender
settings = Settings(model_store=sys.argv[1])
every, versions = float(sys.argv[2]), sys.argv[3:]
flips = 0
while True:
    started = time.perf_counter()
    load_recommender(settings, versions[flips % 2])
    flips += 1
    time.sleep(max(0.0, every - (time.perf_counter() - started)))
"""


async def load_elsewhere(
    store: ModelStore, versions: list[str], every: float, stop: asyncio.Event
) -> int:
    """The control for flip_b: load b's versions at its pace in another process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOAD_LOOP,
        str(store.root),
        str(every),
        *versions,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    await stop.wait()
    proc.kill()
    await proc.wait()
    return 0


async def measure(target: str, store_b: ModelStore, versions: list[str], args) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        async def call() -> None:
            user = f"u{random.randrange(args.users):07d}"
            await stub.Recommend(pb.RecommendRequest(user_id=user, k=K, namespace="a"), timeout=5)

        async def b_version() -> str:
            info = await stub.GetModelInfo(pb.GetModelInfoRequest(namespace="b"), timeout=5)
            return info.model_version

        await closed_loop(call, args.concurrency, 2.0)  # warm-up
        rounds: list[dict] = []
        kinds = ["quiet", "swap", "swap", "quiet"] * args.rounds
        for kind in kinds[: 2 * args.rounds]:
            stop = asyncio.Event()
            flipper = None
            if kind == "swap":
                swapper = load_elsewhere if args.load_elsewhere else flip_b
                flipper = asyncio.create_task(swapper(store_b, versions, args.swap_every, stop))
            result = await closed_loop(call, args.concurrency, args.seconds)
            stop.set()
            flips = await flipper if flipper else 0
            # Let the last flip land before the next round (a quiet round must be quiet).
            await asyncio.sleep(args.swap_every + 1.0)
            result.update(kind=kind, flips=flips, b_version=await b_version())
            rounds.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
        return {"rounds": rounds}


def summary(rounds: list[dict]) -> dict:
    out: dict = {}
    for kind in ("quiet", "swap"):
        mine = [r for r in rounds if r["kind"] == kind]
        out[kind] = {
            "p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 2),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 2),
            "max_p99_ms": max(r["p99_ms"] for r in mine),
            "max_ms": round(statistics.median(r["max_ms"] for r in mine), 2),
            "rps": round(statistics.median(r["rps"] for r in mine), 1),
            "errors": sum(r["errors"] for r in mine),
        }
    out["p99_ratio_swap_to_quiet"] = round(out["swap"]["p99_ms"] / out["quiet"]["p99_ms"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each kind")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--swap-every", type=float, default=1.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--keep", type=Path, help="reuse (or build and keep) the stores here")
    parser.add_argument(
        "--load-elsewhere",
        action="store_true",
        help="control: in swap rounds load b's versions in another process, b left alone",
    )
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ns-bench-"))
    store_a, store_b = ModelStore(root / "a"), ModelStore(root / "b")
    started = time.perf_counter()
    if store_a.latest_version() is None:
        first = publish_random_model(store_a, args.users, args.items, seed=1)
        shutil.copytree(store_a.versions_dir / first, store_b.versions_dir / first)
        second = publish_random_model(store_b, args.users, args.items, seed=2)
        store_b.point_latest_to(second)
    versions = store_b.list_versions()[:2]
    built = time.perf_counter() - started
    env = server_env(
        RECSVC_NAMESPACES=json.dumps({"a": {}, "b": {}}),
        RECSVC_DEFAULT_NAMESPACE="a",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0.1",
        RECSVC_SERVER__DRAIN_SECONDS="0",
        **dict(pair.split("=", 1) for pair in args.env),
    )
    try:
        with running_server(["serve", "--model-store", str(root), "--port", "0"], env) as proc:
            result = asyncio.run(measure(proc.target, store_b, versions, args))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "namespaces",
                "items": args.items,
                "users": args.users,
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "swap_every_s": args.swap_every,
                "server_env": args.env,
                "load_elsewhere": args.load_elsewhere,
                "build_s": round(built, 1),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                **summary(result["rounds"]),
                "rounds": result["rounds"],
            }
        )
    )


if __name__ == "__main__":
    main()
