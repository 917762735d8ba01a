"""Serving benchmark: recsvc's Recommend against the service a user would hand-roll and the
framework's limit.

Default (the comparison of issue 16), one run on this machine: one model (100k items x 64
factors, 20k users), one Redis, and, interleaved round by round at one concurrency:
  - recsvc serve, one process, Redis mode (the headline row);
  - recsvc serve, one process, embedded mode (no Redis);
  - recsvc serve --workers 2, Redis mode;
  - ../shared/bench/peer.py over the same published version (grpc.aio + redis.asyncio GET +
    hnswlib, the 100-line service a user would write instead);
  - a bare grpc.aio echo server answering a fixed response of the same size.
Per target: median rps, p50/p99, errors, server CPU per call (the process tree's, from
/proc), recsvc's mean micro-batch; then the ratios to the peer and to the echo server. Calls go
to the model's own users, which recsvc and the peer both know. `--server-root DIR` runs recsvc
from another checkout (a git worktree of another commit) to compare commits.

    .venv/bin/python bench/serve.py [--rounds 3] [--seconds 8] [--concurrency 32]

`--sweep` runs the older measurement instead: recsvc (Redis mode, 1M users' vectors in Redis)
and the echo server at several concurrencies, the engine in-process, p99 at half of recsvc's
saturation, RecordInteractions latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc._proto.v1 import recommender_pb2 as pb  # noqa: E402
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402
from recsvc.artifacts import ModelStore  # noqa: E402
from recsvc.config import IndexSettings, TrainSettings, load_settings  # noqa: E402
from recsvc.core.holder import RecommenderHolder  # noqa: E402
from recsvc.core.queries import RecommendQuery  # noqa: E402
from recsvc.index import IndexBuildParams  # noqa: E402
from recsvc.metrics import RECOMMEND_BATCHED_CALLS, RECOMMEND_BATCHES  # noqa: E402
from recsvc.store.redis_backend import tagged_vector, vector_key  # noqa: E402
from recsvc.testing import (  # noqa: E402
    clustered_model_data,
    free_port,
    redis_server,
    running_server,
    server_env,
)
from recsvc.training.pipeline import build_model  # noqa: E402

K = 10


def make_model_store(root: Path, n_items: int, n_users: int, dim: int) -> str:
    """A published model with synthetic clustered factors (training is bench/train.py's job)."""
    data, factors = clustered_model_data(n_items, n_users, dim, user_prefix="m")
    store = ModelStore(root)
    index = IndexSettings()
    model = build_model(data, factors, TrainSettings(factors=dim), index, store.new_version())
    store.publish(model, IndexBuildParams.from_settings(index, threads=0))
    return model.version


def seed_redis(url: str, version: str, n_users: int, dim: int) -> None:
    client = redis.Redis.from_url(url)
    rng = np.random.default_rng(1)
    for start in range(0, n_users, 10_000):
        pipe = client.pipeline(transaction=False)
        block = rng.normal(size=(min(10_000, n_users - start), dim)).astype(np.float32)
        for offset, vector in enumerate(block):
            pipe.set(
                vector_key("recsvc", f"u{start + offset}", "float16"),
                tagged_vector(version, vector, "float16"),
                ex=86400,
            )
        pipe.execute()


async def closed_loop(call, concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` workers calling back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarise(latencies, time.perf_counter() - started, errors)


async def open_loop(call, rate: float, seconds: float) -> dict[str, float]:
    """Requests started at a fixed ``rate`` (so queueing shows in the latency)."""
    latencies: list[float] = []
    errors = 0
    tasks = []

    async def one() -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            await call()
        except grpc.aio.AioRpcError:
            errors += 1
        latencies.append(time.perf_counter() - started)

    begin = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = begin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    return summarise(latencies, time.perf_counter() - begin, errors)


def summarise(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3) if len(ms) else 0.0,
    }


def recommend_call(stubs: list[pb_grpc.RecommenderStub], n_users: int):
    """Recommend for a random user, spread over the stubs (connections) in turn."""
    turn = itertools.cycle(stubs)

    async def call() -> None:
        user = f"u{random.randrange(n_users)}"
        await next(turn).Recommend(pb.RecommendRequest(user_id=user, k=K), timeout=5)

    return call


@contextlib.asynccontextmanager
async def connections(target: str, count: int) -> AsyncIterator[list[pb_grpc.RecommenderStub]]:
    """``count`` separate HTTP/2 connections: the kernel spreads connections, not requests,
    over server processes sharing a port, so one connection would reach one process."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]
    try:
        yield [pb_grpc.RecommenderStub(channel) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system) of the processes ``roots`` and all their descendants (a
    multi-worker server's children), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, grew = set(roots), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(children)
        tree |= children
    return sum(times.get(pid, 0.0) for pid in tree)


async def sweep(
    target: str,
    n_users: int,
    levels: list[int],
    seconds: float,
    channels: int,
    server_pids: list[int],
) -> dict[int, dict]:
    """Closed-loop runs at each concurrency, each with the server's CPU time per call."""
    async with connections(target, channels) as stubs:
        await closed_loop(recommend_call(stubs, n_users), 4, 1.0)  # warm up
        results = {}
        for concurrency in levels:
            cpu_before = tree_cpu_seconds(server_pids)
            result = await closed_loop(recommend_call(stubs, n_users), concurrency, seconds)
            cpu = tree_cpu_seconds(server_pids) - cpu_before
            result["server_cpu_us_per_call"] = round(cpu / max(result["requests"], 1) * 1e6)
            results[concurrency] = result
        return results


async def paced(
    target: str, n_users: int, rate: float, seconds: float, channels: int
) -> dict[str, float]:
    async with connections(target, channels) as stubs:
        return await open_loop(recommend_call(stubs, n_users), rate, seconds)


async def record_latency(target: str, n_users: int, seconds: float) -> dict[str, float]:
    counter = iter(range(10**9))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        async def call() -> None:
            n = next(counter)
            user = f"u{random.randrange(n_users)}"
            event = pb.Interaction(
                user_id=user,
                item_id=f"i{random.randrange(1000)}",
                event_type=pb.EVENT_TYPE_VIEW,
                event_id=f"bench-{os.getpid()}-{n}",
            )
            await stub.RecordInteractions(
                pb.RecordInteractionsRequest(interactions=[event]), timeout=5
            )

        return await closed_loop(call, 4, seconds)


async def in_process(
    redis_url: str, store_dir: Path, n_users: int, levels: list[int], seconds: float
) -> tuple[dict[int, dict], float]:
    from recsvc.backends import build_user_state
    from recsvc.server import build_service, load_recommender

    # Wired as `recsvc serve` wires it, from the same settings.
    settings = load_settings(model_store=store_dir, redis_url=redis_url)
    holder = RecommenderHolder(load_recommender(settings))
    store, events, items = build_user_state(settings)
    service = build_service(settings, holder, (store, events))

    async def call() -> None:
        await service.recommend(RecommendQuery(f"u{random.randrange(n_users)}", K))

    results = {c: await closed_loop(call, c, seconds) for c in levels}
    recommender = holder.current()
    timings = []
    for n in range(2000):
        history = {f"i{random.randrange(1000)}": 1.0 for _ in range(10)}
        started = time.perf_counter()
        recommender.fold_in_user(f"m{n}", history)
        timings.append(time.perf_counter() - started)
    for closable in (store, events, items):
        await closable.close()
    return results, float(np.percentile(np.asarray(timings) * 1000, 99))


def mean_batch_size(metrics_port: int) -> float | None:
    """Recommend calls per micro-batch so far, from the server's /metrics (one process's)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    values = dict(
        line.split(" ", 1)
        for line in text.decode().splitlines()
        if line.startswith((RECOMMEND_BATCHES, RECOMMEND_BATCHED_CALLS))
    )
    batches = float(values.get(f"{RECOMMEND_BATCHES}_total", 0))
    calls = float(values.get(f"{RECOMMEND_BATCHED_CALLS}_total", 0))
    return round(calls / batches, 2) if batches else None


def echo_server(port: int) -> None:
    """A bare grpc.aio Recommender answering every Recommend with the same 10-item response."""
    response = pb.RecommendResponse(
        items=[pb.ScoredItem(item_id=f"i{n:05d}", score=1.0 / (n + 1)) for n in range(K)],
        model_version="v20261125-000000-000000",
        strategy=pb.STRATEGY_PERSONALISED,
    )

    class Echo(pb_grpc.RecommenderServicer):
        async def Recommend(self, request, context):
            return response

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        pb_grpc.add_RecommenderServicer_to_server(Echo(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


def sweep_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000_000, help="users with Redis vectors")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes, for recsvc and the echo server"
    )
    parser.add_argument("--channels", type=int, default=4, help="client connections")
    parser.add_argument(
        "--paced", type=float, nargs="*", default=[], help="also measure latency at these rps"
    )
    args = parser.parse_args(argv)
    conditions = {
        "items": args.items,
        "dim": args.dim,
        "redis_users": args.users,
        "seconds": args.seconds,
        "workers": args.workers,
        "channels": args.channels,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    }
    with tempfile.TemporaryDirectory() as tmp, redis_server() as url:
        store_dir = Path(tmp) / "store"
        version = make_model_store(store_dir, args.items, 100_000, args.dim)
        seed_redis(url, version, args.users, args.dim)
        redis_memory = redis.Redis.from_url(url).info("memory")["used_memory"]
        metrics_port = free_port()
        env = server_env(
            RECSVC_SERVER__METRICS_PORT=str(metrics_port),
            RECSVC_REDIS_URL=url,
            RECSVC_SERVER__DRAIN_SECONDS="0",
            RECSVC_SERVING__MODEL_POLL_SECONDS="0",
            RECSVC_LOG_LEVEL="WARNING",
        )
        serve_args = ["serve", "--model-store", str(store_dir)]
        if args.workers > 1:  # several processes share a fixed port (SO_REUSEPORT)
            serve_args += ["--port", str(free_port()), "--workers", str(args.workers)]
        else:
            serve_args += ["--port", "0"]
        with running_server(serve_args, env) as srv:
            recsvc = asyncio.run(
                sweep(
                    srv.target,
                    args.users,
                    args.concurrency,
                    args.seconds,
                    args.channels,
                    [srv.process.pid],
                )
            )
            saturation = max(r["rps"] for r in recsvc.values())
            half = asyncio.run(
                paced(srv.target, args.users, saturation / 2, args.seconds, args.channels)
            )
            at_rates = {
                rate: asyncio.run(paced(srv.target, args.users, rate, args.seconds, args.channels))
                for rate in args.paced
            }
            record = asyncio.run(record_latency(srv.target, args.users, args.seconds))
            batching = mean_batch_size(metrics_port)
        port = free_port()
        echo_cmd = [sys.executable, __file__, "--echo-server", str(port)]
        echoes = [
            subprocess.Popen(echo_cmd, stdout=subprocess.PIPE, text=True)
            for _ in range(args.workers)
        ]
        for echo in echoes:
            assert echo.stdout is not None and "listening" in echo.stdout.readline()
        try:
            bare = asyncio.run(
                sweep(
                    f"127.0.0.1:{port}",
                    args.users,
                    args.concurrency,
                    args.seconds,
                    args.channels,
                    [echo.pid for echo in echoes],
                )
            )
        finally:
            for echo in echoes:
                echo.terminate()
                echo.wait()
        engine, fold_in_p99 = asyncio.run(
            in_process(url, store_dir, args.users, args.concurrency, args.seconds)
        )
    for name, results in (("recsvc", recsvc), ("bare_echo", bare), ("in_process", engine)):
        for concurrency, result in results.items():
            print(
                json.dumps({"bench": "serve", "target": name, "concurrency": concurrency, **result})
            )
    best_bare = max(r["rps"] for r in bare.values())
    print(
        json.dumps(
            {
                "bench": "serve",
                "summary": True,
                **conditions,
                "recsvc_saturation_rps": saturation,
                "bare_echo_saturation_rps": best_bare,
                "ratio_to_echo": round(saturation / best_bare, 3),
                "in_process_rps": max(r["rps"] for r in engine.values()),
                "half_saturation": half,
                "paced": at_rates,
                "record_interactions": record,
                "mean_recommend_batch": batching,
                "fold_in_p99_ms": round(fold_in_p99, 3),
                "redis_used_memory_bytes": redis_memory,
                "redis_bytes_per_user": round(redis_memory / args.users, 1),
            }
        )
    )


# ---------------------------------------------------------------------------- the comparison

PEER = ROOT.parent / "shared" / "bench" / "peer.py"
COMPARE_USERS = 20_000


def start(command: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a server and wait for its 'listening on HOST:PORT' line."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, line.split()[2]
    raise RuntimeError(f"{' '.join(command[:4])} did not start")


def batch_counts(metrics_port: int) -> tuple[float, float]:
    """(batches, calls) of the Recommend micro-batcher, from a server's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    values = dict(
        line.split(" ", 1)
        for line in text.decode().splitlines()
        if line.startswith((RECOMMEND_BATCHES, RECOMMEND_BATCHED_CALLS))
    )
    return (
        float(values.get(f"{RECOMMEND_BATCHES}_total", 0)),
        float(values.get(f"{RECOMMEND_BATCHED_CALLS}_total", 0)),
    )


async def compare_round(target: str, concurrency: int, seconds: float) -> dict[str, float]:
    async with connections(target, 4) as stubs:
        turn = itertools.cycle(stubs)

        async def call() -> None:
            user = f"m{random.randrange(COMPARE_USERS)}"
            await next(turn).Recommend(pb.RecommendRequest(user_id=user, k=K), timeout=5)

        await closed_loop(call, 4, 1.0)  # warm up (connections, caches)
        return await closed_loop(call, concurrency, seconds)


def redis_commands(url: str) -> int:
    """Commands the Redis server has processed so far (INFO's total_commands_processed; the
    INFO call itself counts one)."""
    with redis.Redis.from_url(url) as client:
        return int(client.info("stats")["total_commands_processed"])


def hide_items(target: str, count: int, n_items: int) -> None:
    """Hide ``count`` random items of the bench model through the server (once per target: the
    Redis targets share the item log, the embedded one has its own)."""
    chosen = random.Random(2).sample(range(n_items), count)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for start in range(0, count, 1000):
            block = chosen[start : start + 1000]
            items = [pb.Item(item_id=f"i{i}", available=False) for i in block]
            stub.UpsertItems(pb.UpsertItemsRequest(items=items), timeout=60)


def compare_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-root", type=Path, default=ROOT)
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["recsvc", "recsvc_embedded", "recsvc_workers2", "peer", "echo"],
    )
    parser.add_argument(
        "--recsvc-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="settings for every recsvc target (e.g. RECSVC_SERVING__BATCH_GATHER_TURNS=1)",
    )
    parser.add_argument(
        "--hide",
        type=int,
        default=0,
        help="items to hide (UpsertItems available=false) in every recsvc target before the "
        "rounds: the cost of the hidden-item check",
    )
    args = parser.parse_args(argv)
    server_root = args.server_root.resolve()
    targets = [t for t in args.targets if t != "peer" or PEER.exists()]
    with tempfile.TemporaryDirectory() as tmp, redis_server() as url:
        store = Path(tmp) / "store"
        version = make_model_store(store, 100_000, COMPARE_USERS, 64)
        serve = [sys.executable, "-m", "recsvc", "serve", "--model-store", str(store)]

        def recsvc_env(metrics_port: int, **extra: str) -> dict[str, str]:
            return server_env(
                RECSVC_SERVING__MODEL_POLL_SECONDS="0",
                RECSVC_SERVER__DRAIN_SECONDS="0",
                RECSVC_SERVER__METRICS_PORT=str(metrics_port),
                RECSVC_LOG_LEVEL="WARNING",
                PYTHONPATH=str(server_root),
                **dict(setting.split("=", 1) for setting in args.recsvc_env),
                **extra,
            )

        metrics = {name: free_port() for name in targets if name.startswith("recsvc")}
        commands = {
            "recsvc": (
                [*serve, "--port", "0"],
                recsvc_env(metrics.get("recsvc", 0), RECSVC_REDIS_URL=url),
                server_root,
            ),
            "recsvc_embedded": (
                [*serve, "--port", "0"],
                recsvc_env(
                    metrics.get("recsvc_embedded", 0),
                    RECSVC_STORE__EVENT_LOG_PATH=str(Path(tmp) / "events.jsonl"),
                ),
                server_root,
            ),
            "recsvc_workers2": (
                [*serve, "--port", str(free_port()), "--workers", "2"],
                recsvc_env(metrics.get("recsvc_workers2", 0), RECSVC_REDIS_URL=url),
                server_root,
            ),
            "peer": (
                [sys.executable, str(PEER), str(store / "versions" / version), url[:-1] + "14"],
                server_env(),
                ROOT,
            ),
            "echo": (
                [sys.executable, __file__, "--echo-server", str(free_port())],
                server_env(),
                ROOT,
            ),
        }
        servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        try:
            for name in targets:
                servers[name] = start(*commands[name])
            if args.hide:
                for name, (_, target) in servers.items():
                    if name.startswith("recsvc"):
                        hide_items(target, args.hide, 100_000)
            for n in range(args.rounds):
                for name, (process, target) in servers.items():
                    commands_before = redis_commands(url)
                    cpu_before = tree_cpu_seconds([process.pid])
                    batches_before = batch_counts(metrics[name]) if name in metrics else None
                    result = asyncio.run(compare_round(target, args.concurrency, args.seconds))
                    cpu = tree_cpu_seconds([process.pid]) - cpu_before
                    # Redis commands per 1,000 calls (the targets run one at a time; the
                    # embedded one and the echo server make none)
                    result["redis_commands_per_1k_calls"] = round(
                        (redis_commands(url) - commands_before - 1)
                        / max(result["requests"], 1)
                        * 1000,
                        1,
                    )
                    result["server_cpu_us_per_call"] = round(
                        cpu / max(result["requests"], 1) * 1e6, 1
                    )
                    if batches_before is not None:
                        after = batch_counts(metrics[name])
                        made = after[0] - batches_before[0]
                        calls = after[1] - batches_before[1]
                        result["mean_batch"] = round(calls / max(made, 1), 2)
                    rounds[name].append(result)
                    print(json.dumps({"bench": "serve", "round": n, "target": name, **result}))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    medians = {
        name: {
            key: statistics.median(r[key] for r in results)
            for key in (
                "rps",
                "p50_ms",
                "p99_ms",
                "server_cpu_us_per_call",
                "mean_batch",
                "redis_commands_per_1k_calls",
            )
            if key in results[0]
        }
        | {"errors": sum(r["errors"] for r in results)}
        for name, results in rounds.items()
    }

    def ratio(a: str, b: str) -> float | None:
        if a in medians and b in medians:
            return round(medians[a]["rps"] / medians[b]["rps"], 3)
        return None

    print(
        json.dumps(
            {
                "bench": "serve",
                "summary": True,
                "server_root": str(server_root),
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "seconds": args.seconds,
                "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                "medians": medians,
                "hidden_items": args.hide,
                "recsvc_to_peer": ratio("recsvc", "peer"),
                "recsvc_to_echo": ratio("recsvc", "echo"),
                "embedded_to_peer": ratio("recsvc_embedded", "peer"),
                "workers2_to_peer": ratio("recsvc_workers2", "peer"),
            }
        )
    )


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--echo-server"]:
        echo_server(int(argv[1]))
    elif argv[:1] == ["--sweep"]:
        sweep_main(argv[1:])
    else:
        compare_main(argv)


if __name__ == "__main__":
    main()
