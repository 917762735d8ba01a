"""The gRPC server: build it, load the model, serve, and shut down gracefully on SIGTERM.

Start-up order: bind the port with health NOT_SERVING, load and verify the latest model, turn
health SERVING, print ``listening on HOST:PORT``. Shutdown (SIGTERM or SIGINT): health
NOT_SERVING, keep serving ``drain_seconds`` so load balancers notice, then ``stop(grace)``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.api.servicer import RecommenderServicer
from recsvc.artifacts import ModelStore
from recsvc.config import Settings
from recsvc.core.holder import RecommenderHolder
from recsvc.core.queries import Limits
from recsvc.core.recommender import Recommender
from recsvc.index import IndexParams

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)


@dataclass
class ServerHandle:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)


def create_server(settings: Settings, holder: RecommenderHolder) -> ServerHandle:
    """A grpc.aio server with the Recommender, health and reflection services, bound to
    ``settings.server.host:port`` (port 0 picks a free one). Not started yet."""
    options = [
        ("grpc.max_receive_message_length", settings.server.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.server.max_send_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(holder), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.server.host}:{settings.server.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return ServerHandle(server, port, health_servicer)


def load_recommender(settings: Settings) -> Recommender:
    """Load and verify the latest model in the model store."""
    store = ModelStore(settings.model_store)
    model = store.load_latest(query_index_params(settings))
    log.info(
        "loaded model %s: %d users, %d items, recall@10 %.3f",
        model.version,
        model.info.num_users,
        model.info.num_items,
        model.info.index_recall_at_10,
    )
    return Recommender(model, serving_limits(settings), settings.serving.exact_search_max_items)


def serving_limits(settings: Settings) -> Limits:
    s = settings.serving
    return Limits(max_k=s.max_k, max_batch=s.max_batch, max_id_list=s.max_id_list)


def query_index_params(settings: Settings) -> IndexParams:
    return IndexParams(
        m=settings.index.m,
        ef_construction=settings.index.ef_construction,
        ef_search=settings.serving.hnsw_ef_search,
        seed=settings.index.seed,
        threads=settings.serving.search_threads,
    )


async def set_health(handle: ServerHandle, status: int) -> None:
    for service in HEALTH_SERVICES:
        await handle.health.set(service, status)


async def serve(settings: Settings, announce: bool = True) -> None:
    """Run the server until SIGTERM or SIGINT, then drain and stop."""
    holder = RecommenderHolder()
    handle = create_server(settings, holder)
    await set_health(handle, health_pb2.HealthCheckResponse.NOT_SERVING)
    await handle.server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        holder.swap(await asyncio.to_thread(load_recommender, settings))
        await set_health(handle, health_pb2.HealthCheckResponse.SERVING)
        if announce:
            print(f"listening on {settings.server.host}:{handle.port}", flush=True)
        await stop.wait()
        log.info("shutting down: NOT_SERVING, draining for %.1fs", settings.server.drain_seconds)
        await set_health(handle, health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.sleep(settings.server.drain_seconds)
    finally:
        await handle.server.stop(settings.server.grace_seconds)
        log.info("stopped")
