"""A Redis Cluster master killed under load (issue 17): a replica takes over, calls on that
shard fail and then succeed again, reads keep answering meanwhile, and no acknowledged event
is lost from the partitioned event log."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.core.model import Model
from recsvc.data.interaction_store import InteractionStore
from recsvc.store.clients import sync_client
from recsvc.store.names import EventPartitions
from recsvc.testing import RedisCluster, redis_cluster, running_server, server_env
from workers.ingest import PartitionedStreamIngester

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.slow]

PARTITIONS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A cluster of its own: this module kills one of its masters."""
    with redis_cluster(tmp_path_factory.mktemp("fault-cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def target(
    cluster: RedisCluster, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    store = tmp_path_factory.mktemp("cluster-fault-store")
    shutil.copytree(model_store, store, dirs_exist_ok=True)
    env = server_env(
        RECSVC_REDIS_URL=cluster.url,
        RECSVC_STORE__EVENT_PARTITIONS=str(PARTITIONS),
        RECSVC_SERVER__DRAIN_SECONDS="0",
        RECSVC_SERVING__MODEL_POLL_SECONDS="0",
    )
    with running_server(["serve", "--model-store", str(store), "--port", "0"], env) as proc:
        yield proc.target


class Load:
    """Records batches of new events until stopped, each batch retried with the same
    event ids until acknowledged; remembers what was acknowledged and what failed."""

    def __init__(self, stub: pb_grpc.RecommenderStub, items: list[str]) -> None:
        self.stub, self.items = stub, items
        self.acknowledged: list[str] = []
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        now_ms = int(time.time() * 1000)
        batch_number = 0
        while not self.stop.is_set():
            batch = [
                pb.Interaction(
                    user_id=f"user-{(batch_number * 7 + k) % 300}",
                    item_id=self.items[(batch_number + k) % len(self.items)],
                    event_type=pb.EVENT_TYPE_VIEW,
                    event_id=f"b{batch_number}-{k}",
                    timestamp_ms=now_ms,
                )
                for k in range(10)
            ]
            request = pb.RecordInteractionsRequest(interactions=batch)
            while True:  # the same ids again: a retry is never counted twice
                try:
                    self.stub.RecordInteractions(request, timeout=5)
                    break
                except grpc.RpcError:
                    self.failures += 1
                    time.sleep(0.05)
            self.acknowledged += [event.event_id for event in batch]
            batch_number += 1
            time.sleep(0.01)


def _promoted(cluster: RedisCluster, killed: int) -> bool:
    """Whether the cluster, seen from a live node, is whole again without ``killed``."""
    alive = next(port for port in cluster.nodes if port != killed)
    client = sync_client(f"redis://127.0.0.1:{alive}/0")
    try:
        info = client.execute_command("CLUSTER", "INFO")
        nodes = client.execute_command("CLUSTER", "NODES")
    finally:
        client.close()
    info_text = info.decode() if isinstance(info, bytes) else str(info)
    nodes_text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    # CLUSTER NODES: id address flags master ping pong epoch link slots...
    lines = [line.split() for line in nodes_text.splitlines()]
    serving = [f for f in lines if "master" in f[2].split(",") and "fail" not in f[2] and f[8:]]
    dead = [f for f in lines if f[1].startswith(f"127.0.0.1:{killed}@")]
    dead_owns_nothing = bool(dead) and not dead[0][8:]
    return "cluster_state:ok" in info_text and len(serving) == 3 and dead_owns_nothing


def test_killing_a_master_under_load_loses_no_acknowledged_event(
    cluster: RedisCluster, target: str, model: Model, tmp_path: Path
) -> None:
    client = sync_client(cluster.url)
    victim = client.get_node_from_key(EventPartitions("recsvc", PARTITIONS).stream_key(0))
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        load = Load(stub, list(model.items.ids[:50]))
        load.thread.start()
        time.sleep(1.5)
        before = len(load.acknowledged)
        killed_at = time.monotonic()
        cluster.kill(int(victim.port))
        # Reads keep answering while the shard is down (degraded to the request's history
        # or the model's factors), as with a single Redis down.
        for n in range(5):
            reply = stub.Recommend(pb.RecommendRequest(user_id=f"user-{n}", k=5), timeout=5)
            assert len(reply.items) == 5
        deadline = killed_at + 30
        while not _promoted(cluster, int(victim.port)):
            assert time.monotonic() < deadline, "no replica was promoted in 30 s"
            time.sleep(0.1)
        promoted_after = time.monotonic() - killed_at
        acknowledged_at_promotion = len(load.acknowledged)
        # Writes go on after the failover: wait for some (the caller may still be retrying a
        # call that hit the dead master; a busy machine makes that take a while).
        resumed_by = time.monotonic() + 30
        while len(load.acknowledged) < acknowledged_at_promotion + 20:
            assert time.monotonic() < resumed_by, "no write acknowledged after the failover"
            time.sleep(0.1)
        load.stop.set()
        load.thread.join(timeout=30)
        assert not load.thread.is_alive()
        after = len(load.acknowledged)
    print(
        f"promotion after {promoted_after:.2f} s; {before} events acknowledged before the "
        f"kill, {after} in all; {load.failures} failed calls retried"
    )
    # The caller is one thread: while its call to the dead master times out, none goes on.
    assert after > acknowledged_at_promotion >= before > 0
    store = InteractionStore(tmp_path / "store")
    ingester = PartitionedStreamIngester(
        sync_client(cluster.url), EventPartitions("recsvc", PARTITIONS), store, 500
    )
    ingester.run_once()
    ingested = store.read().column("event_id").to_pylist()
    assert sorted(ingested) == sorted(load.acknowledged)
