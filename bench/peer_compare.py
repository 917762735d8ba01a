"""Recommend throughput of recsvc against the hand-rolled peer and the bare echo server.

One model (bench/serve.py's synthetic 100k items x 64 factors, 20k users), one Redis, three
servers of one process each: `recsvc serve` (Redis mode), `../shared/bench/peer.py` over the
same published version, and bench/serve.py's echo server. Calls go to the model's own users,
which both recsvc and the peer know, at a fixed concurrency, the targets interleaved round by
round. `--server-root DIR` runs recsvc from another checkout (a git worktree of an earlier
commit) to compare commits under the same harness. Prints one JSON line.

    .venv/bin/python bench/peer_compare.py [--rounds 3] [--seconds 6] [--server-root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import K, closed_loop, connections, make_model_store  # noqa: E402

from recsvc._proto.v1 import recommender_pb2 as pb  # noqa: E402
from recsvc.testing import free_port, redis_server, server_env  # noqa: E402

PEER = ROOT.parent / "shared" / "bench" / "peer.py"
USERS = 20_000


def start(command: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a server and wait for its 'listening on HOST:PORT' line."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, line.split()[2]
    raise RuntimeError(f"{command[:3]} did not start")


async def rps(target: str, concurrency: int, seconds: float) -> float:
    async with connections(target, 4) as stubs:
        turn = itertools.cycle(stubs)

        async def call() -> None:
            user = f"m{random.randrange(USERS)}"
            await next(turn).Recommend(pb.RecommendRequest(user_id=user, k=K), timeout=5)

        await closed_loop(call, 4, 1.0)  # warm up
        return float((await closed_loop(call, concurrency, seconds))["rps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-root", type=Path, default=ROOT)
    args = parser.parse_args()
    server_root = args.server_root.resolve()
    with tempfile.TemporaryDirectory() as tmp, redis_server() as url:
        store = Path(tmp) / "store"
        version = make_model_store(store, 100_000, USERS, 64)
        recsvc_env = server_env(
            RECSVC_REDIS_URL=url,
            RECSVC_SERVING__MODEL_POLL_SECONDS="0",
            RECSVC_LOG_LEVEL="WARNING",
            PYTHONPATH=str(server_root),
        )
        servers = {
            "recsvc": start(
                [
                    sys.executable,
                    "-m",
                    "recsvc",
                    "serve",
                    "--model-store",
                    str(store),
                    "--port",
                    "0",
                ],
                recsvc_env,
                server_root,
            ),
            "peer": start(
                [sys.executable, str(PEER), str(store / "versions" / version), url[:-1] + "14"],
                server_env(),
                ROOT,
            ),
            "echo": start(
                [
                    sys.executable,
                    str(ROOT / "bench" / "serve.py"),
                    "--echo-server",
                    str(free_port()),
                ],
                server_env(),
                ROOT,
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in servers}
        try:
            for _ in range(args.rounds):
                for name, (_, target) in servers.items():
                    results[name].append(
                        round(asyncio.run(rps(target, args.concurrency, args.seconds)), 1)
                    )
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(
        json.dumps(
            {
                "bench": "peer_compare",
                "server_root": str(server_root),
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "rps": results,
                "median_rps": medians,
                "recsvc_to_peer": round(medians["recsvc"] / medians["peer"], 3),
                "recsvc_to_echo": round(medians["recsvc"] / medians["echo"], 3),
                "machine": f"{os.cpu_count()} cpus",
            }
        )
    )


if __name__ == "__main__":
    main()
