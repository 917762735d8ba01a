"""The gRPC server: build it, load the model, serve, and shut down gracefully on SIGTERM.

Start-up order: bind the port with health NOT_SERVING, load and verify the latest model, turn
health SERVING, print ``listening on HOST:PORT``. On an empty model store the server prints
``listening on`` at once and stays NOT_SERVING, answering every call UNAVAILABLE, until the
first version appears (a pod that starts before training becomes ready by itself); a bad
latest version still ends start-up with one line. While serving, a watcher swaps in new model
versions. Shutdown (SIGTERM or SIGINT): health NOT_SERVING, keep serving ``drain_seconds`` so
load balancers notice, then hold new calls until they stop arriving, ``stop(grace)``, and
answer the held ones UNAVAILABLE (recsvc.api.gate says why).

Health services: ``""`` and ``recsvc.v1.Recommender`` (liveness and readiness: the model is
loaded and answering) stay SERVING while the user store is down, because answers continue from
fallbacks; ``store`` reports the user store itself (NOT_SERVING while degraded).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from threadpoolctl import threadpool_limits

from recsvc._proto.v1 import recommender_pb2 as pb
from recsvc._proto.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.api.access_log import log_calls
from recsvc.api.auth import Scope, TokenAuthInterceptor, TokenFile, server_credentials
from recsvc.api.handlers import WarningLimiter, add_guarded
from recsvc.api.servicer import RecommenderServicer, Served
from recsvc.artifacts import ModelStore
from recsvc.artifacts.experiments_file import ArmHost, ExperimentsFile
from recsvc.artifacts.rules_file import RulesFile
from recsvc.artifacts.watcher import ModelWatcher
from recsvc.backends import (
    build_user_state,
    event_log_path,
    event_stream,
    item_log_path,
    replay_event_log,
)
from recsvc.config import Settings
from recsvc.core.arms import ArmRouter
from recsvc.core.experiments import ExperimentsHolder
from recsvc.core.holder import RecommenderHolder
from recsvc.core.impressions import ImpressionLog
from recsvc.core.items import CatalogueSync, ImageLimits, ItemService
from recsvc.core.model import Model
from recsvc.core.namespaces import DEFAULT_NAMESPACE
from recsvc.core.queries import Limits
from recsvc.core.recommender import Recommender
from recsvc.core.rules import RulesHolder
from recsvc.core.service import RecommendationService
from recsvc.core.state import EventLog, EventType, ItemLog, UserStateStore
from recsvc.errors import ArtifactError, ConfigError, RecsvcError
from recsvc.index import IndexSearchParams
from recsvc.metrics import Metrics
from recsvc.store.names import item_data_key
from recsvc.tracing import Tracing, server_tracing
from recsvc.vision.encoder import ImageEncoder

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
RECOMMENDER_METHODS = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["Recommender"].methods)
HEALTH_SERVICES = ("", SERVICE_NAME)
STORE_HEALTH = "store"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServerHandle:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    servicer: RecommenderServicer
    # The plaintext health-only server (security.health_port), started and stopped with it.
    probes: grpc.aio.Server | None = None
    probe_port: int = 0
    tracing: Tracing | None = None  # server.tracing on


def create_server(
    settings: Settings,
    service: RecommendationService,
    items: ItemService,
    metrics: Metrics | None = None,
    namespaces: Mapping[str, Served] | None = None,
    default_namespace: str = DEFAULT_NAMESPACE,
) -> ServerHandle:
    """A grpc.aio server with the Recommender, health and (unless turned off) reflection
    services, bound to ``settings.server.host:port`` (port 0 picks a free one), with TLS and
    token authentication as ``settings.security`` says. Not started yet."""
    security = settings.security
    options = [
        ("grpc.max_receive_message_length", settings.server.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.server.max_send_message_bytes),
        ("grpc.so_reuseport", 1 if settings.server.reuse_port else 0),
    ]
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    # First, so that calls refused by the token check are traced too.
    tracing = server_tracing() if settings.server.tracing else None
    if tracing is not None:
        interceptors.append(tracing.interceptor)
    if security.token_file is not None:
        tokens = TokenFile(security.token_file, security.token_reload_seconds)
        interceptors.append(TokenAuthInterceptor(tokens))
        log.info(
            "authentication on: %d read and %d write token(s) from %s",
            tokens.table.count(Scope.READ),
            tokens.table.count(Scope.WRITE),
            security.token_file,
        )
    else:
        log.warning(
            "authentication off (no security.token_file): any client that reaches the port "
            "may call every RPC"
        )
    # Above the limit gRPC answers RESOURCE_EXHAUSTED at once, before reading the request.
    server = grpc.aio.server(
        options=options,
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.server.max_concurrent_rpcs,
    )
    # ``service`` and ``items`` answer the default namespace; ``namespaces`` all of them.
    servicer = RecommenderServicer(
        service,
        items,
        metrics,
        echo_generated_ids=settings.server.echo_generated_request_ids,
        namespaces=namespaces,
        default_namespace=default_namespace,
    )
    if settings.server.access_log:
        log_calls(servicer, RECOMMENDER_METHODS)
    # Malformed requests are answered INVALID_ARGUMENT, logged at most once per interval.
    warnings = WarningLimiter(settings.server.malformed_log_seconds)
    add_guarded(
        pb_grpc.add_RecommenderServicer_to_server, servicer, server, warnings, behind_boundary=True
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    add_guarded(health_pb2_grpc.add_HealthServicer_to_server, health_servicer, server, warnings)
    if security.reflection_on:
        # As reflection.enable_server_reflection registers it, with safe deserializers.
        add_guarded(
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
            reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            server,
            warnings,
        )
    address = f"{settings.server.host}:{settings.server.port}"
    if security.tls_cert_file is not None and security.tls_key_file is not None:
        credentials = server_credentials(
            security.tls_cert_file,
            security.tls_key_file,
            security.tls_client_ca_file,
            security.tls_reload_seconds,
        )
        port = _bind(lambda: server.add_secure_port(address, credentials), address, "server.port")
    else:
        port = _bind(lambda: server.add_insecure_port(address), address, "server.port")
    log.info(
        "gRPC on %s: TLS %s, reflection %s",
        address,
        ("mutual" if security.tls_client_ca_file else "on") if security.tls_cert_file else "off",
        "on" if security.reflection_on else "off",
    )
    handle = ServerHandle(server, port, health_servicer, servicer, tracing=tracing)
    if security.health_port:
        # Kubelet gRPC probes speak neither TLS nor tokens: a server of its own, sharing the
        # health servicer, answers them on a port that serves nothing else.
        handle.probes = grpc.aio.server(options=options[2:])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, handle.probes)
        probe_address = f"{settings.server.host}:{security.health_port}"
        handle.probe_port = _bind(
            lambda: handle.probes.add_insecure_port(probe_address),  # type: ignore[union-attr]
            probe_address,
            "security.health_port",
        )
    return handle


def _bind(add_port: Callable[[], int], address: str, setting: str) -> int:
    try:
        port = add_port()
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise ConfigError(f"{setting}: cannot listen on {address} (in use?)") from exc
    if port == 0:
        raise ConfigError(f"{setting}: cannot listen on {address} (in use?)")
    return port


def build_service(
    settings: Settings,
    holder: RecommenderHolder,
    state: tuple[UserStateStore, EventLog] | None = None,
    rules: RulesHolder | None = None,
    arms: ArmRouter | None = None,
    impressions: ImpressionLog | None = None,
) -> RecommendationService:
    """The recommendation service, wired from the settings; ``state`` (user store, event log)
    replaces the backends the settings name (benchmarks and tests bring their own); ``rules``
    holds the business rules in force (None: no rules); ``arms`` routes users in experiments
    and ``impressions`` logs what they were shown (None: no experiments)."""
    store, events = state or build_user_state(settings)[:2]
    weights = {EventType(name): weight for name, weight in settings.events.model_dump().items()}
    return RecommendationService(
        holder,
        store,
        events,
        weights,
        settings.store.timeout_seconds,
        visual_weight=settings.images.hybrid_visual_weight,
        batch_slice=settings.serving.batch_slice,
        gather_turns=settings.serving.batch_gather_turns,
        rules=rules,
        arms=arms,
        impressions=impressions,
    )


def load_rules_file(settings: Settings, holder: RulesHolder) -> RulesFile | None:
    """The rules file the settings name, read into ``holder`` (None when rules.path is
    unset). A missing or bad file raises InvalidRules (a ConfigError): the server does not
    start without the rules it was told to apply."""
    rules = settings.rules
    if rules.path is None:
        return None
    rules_file = RulesFile(
        rules.path, holder, rules.reload_seconds, rules.max_rules, rules.max_file_bytes
    )
    rules_file.load()
    return rules_file


def build_impression_log(settings: Settings, events: EventLog) -> ImpressionLog | None:
    """Where a namespace's experiment impressions go (None: experiments.log_impressions off)."""
    experiments = settings.experiments
    if not experiments.log_impressions:
        return None
    return ImpressionLog(
        events,
        settings.events.impression,
        max_pending=experiments.impression_queue,
        batch_events=experiments.impression_batch,
        flush_seconds=experiments.impression_flush_seconds,
        append_timeout=max(1.0, settings.store.timeout_seconds * 10),
    )


def build_experiments(
    settings: Settings, units: Mapping[str, NamespaceServing]
) -> tuple[ExperimentsFile | None, dict[str, ArmRouter]]:
    """The experiments document the settings name, checked (not yet applied: its arm models
    load once the namespaces are up), and each namespace's arm router; (None, {}) when
    experiments.path is unset. A bad document raises InvalidExperiments (a ConfigError).
    ``units`` is filled in later: the loaders look namespaces up when called."""
    experiments = settings.experiments
    if experiments.path is None:
        return None, {}
    names = settings.namespace_names()
    holder = ExperimentsHolder()
    routers = {name: ArmRouter(name, holder) for name in names}

    def current_version(name: str) -> str | None:
        holder = units[name].holder
        return holder.current().version if holder.loaded else None

    def load(name: str, version: str) -> Recommender:
        unit = units[name]
        return unit.items.prepare(load_recommender(unit.settings, version))

    hosts = {
        name: ArmHost(
            routers[name].models,
            functools.partial(current_version, name),
            functools.partial(load, name),
        )
        for name in names
    }
    document = ExperimentsFile(
        experiments.path,
        holder,
        hosts,
        names[0],
        experiments.reload_seconds,
        experiments.max_arm_models,
        experiments.max_file_bytes,
    )
    document.check()
    return document, routers


def build_item_service(
    settings: Settings, holder: RecommenderHolder, item_log: ItemLog
) -> ItemService:
    images = settings.images
    weights = {images.backbone: images.weights} if images.weights else {}
    device = "cpu" if images.device == "auto" else images.device
    encoder = ImageEncoder(
        images.max_pixels, device=device, weights=weights, threads=1, batch_size=images.batch_size
    )
    limits = ImageLimits(
        images.max_image_bytes,
        images.path_root,
        images.backbone,
        threads=images.threads or len(os.sched_getaffinity(0)),
        max_pending_calls=images.max_pending_calls,
        read_timeout_seconds=images.read_timeout_seconds,
    )
    sync = CatalogueSync(
        settings.serving.item_poll_seconds, settings.serving.item_sync_timeout_seconds
    )
    return ItemService(
        holder, item_log, encoder, limits, sync, visual_weight=images.hybrid_visual_weight
    )


def load_recommender(settings: Settings, version: str | None = None) -> Recommender:
    """Load and verify a model version (default: the latest) from the model store."""
    store = ModelStore.from_settings(settings)
    params = IndexSearchParams.from_settings(settings.serving)
    model = store.load(version, params) if version else store.load_latest(params)
    log.info(
        "loaded model %s: %d users, %d items, recall@10 %.3f, ef %d",
        model.version,
        model.info.num_users,
        model.info.num_items,
        model.info.index_recall_at_10,
        model.user_index.hnsw.ef if model.user_index.hnsw is not None else 0,
    )
    return build_recommender(settings, model)


def _first_recommender(settings: Settings, items: ItemService) -> Recommender:
    """The model to start with. Whatever makes it unservable ends start-up as an ArtifactError,
    which the command line prints as one line, never as a traceback."""
    try:
        return items.prepare(load_recommender(settings))
    except RecsvcError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot serve the latest model: {type(exc).__name__}: {exc}") from exc


async def _wait_for_first_model(
    watcher: ModelWatcher, stop: asyncio.Event, interval: float
) -> None:
    """Poll the store until a version loads (a bad one is logged and skipped, as while
    serving) or shutdown is asked for."""
    while not watcher.holder.loaded and not stop.is_set():
        await watcher.check_once()
        if not watcher.holder.loaded:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def startup_line(settings: Settings) -> str:
    """What this server uses, in one log line: user store, event log, item log, model store and
    the main limits. Never a secret: a Redis URL is shown without its user and password."""
    if settings.redis_url:
        url = urlsplit(settings.redis_url)
        if url.scheme.endswith("+cluster"):
            where = f"redis cluster {url.netloc.rpartition('@')[2]}"
        elif url.scheme == "unix":
            where = f"redis unix:{url.path}"
        else:
            where = f"redis {url.hostname}:{url.port or 6379}/{url.path.lstrip('/') or 0}"
        store = f"{where}{' (TLS)' if url.scheme.startswith('rediss') else ''}"
        events = f"stream {event_stream(settings)}"
        item_log = f"hash {item_data_key(settings.store.key_prefix)}"
    else:
        store = f"in-process (up to {settings.store.max_users_in_process} users)"
        events = f"file {event_log_path(settings)}"
        item_log = f"file {item_log_path(settings)}"
    server, serving = settings.server, settings.serving
    return (
        f"user store {store}; event log {events}; item log {item_log}; model store "
        f"{settings.model_store} (signed: {'yes' if _signed(settings) else 'no'}); limits: "
        f"max_concurrent_rpcs {server.max_concurrent_rpcs}, max_receive_message_bytes "
        f"{server.max_receive_message_bytes}, max_k {serving.max_k}, max_batch "
        f"{serving.max_batch}, store timeout {settings.store.timeout_seconds}s"
    )


def _signed(settings: Settings) -> bool:
    return bool(settings.model_store_signing_key or settings.model_store_signing_key_file)


def build_recommender(settings: Settings, model: Model) -> Recommender:
    """A Recommender over ``model``, limited and searched as the settings say."""
    serving = settings.serving
    return Recommender(
        model,
        Limits.from_settings(serving),
        serving.exact_search_max_items,
        popularity_discount=serving.popularity_discount,
        interests=serving.interests,
    )


async def stop_server(handle: ServerHandle, grace: float) -> None:
    """Shut the server down, letting calls being answered finish within ``grace``; the calls
    held by the gate are answered UNAVAILABLE only once shutdown has begun, so that the
    server's GOAWAY reaches their connections before the answer and the clients' retries go
    elsewhere instead of ending CANCELLED here."""
    stopping = asyncio.get_running_loop().create_task(handle.server.stop(grace))
    await asyncio.sleep(_GOAWAY_HEAD_START_SECONDS)
    handle.servicer.gate.release()
    await stopping
    if handle.probes is not None:
        await handle.probes.stop(0)
    if handle.tracing is not None:
        await asyncio.to_thread(handle.tracing.shutdown)


# No call for this long after the gate closed: the clients left are all waiting on held calls.
_QUIET_SECONDS = 0.03
# Shutdown (GOAWAY) starts this long before the held calls are answered: a busy client must
# read the GOAWAY before its retry, or the retry reaches this server and ends CANCELLED.
_GOAWAY_HEAD_START_SECONDS = 0.05


async def set_health(handle: ServerHandle, status: int) -> None:
    for service in HEALTH_SERVICES:
        await handle.health.set(service, status)


class StoreHealth:
    """Mirrors the user store's state into the ``store`` health service, and pings it while
    it is down so that the status comes back without waiting for traffic."""

    def __init__(self, handle: ServerHandle, store: UserStateStore) -> None:
        self.handle = handle
        self.store = store
        self.healthy = True
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, healthy: bool) -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            log.warning("user store %s", "is back" if healthy else "is unavailable; degrading")
            task = asyncio.get_running_loop().create_task(
                self.handle.health.set(STORE_HEALTH, SERVING if healthy else NOT_SERVING)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run(self, interval: float = 1.0) -> None:
        await self.handle.health.set(STORE_HEALTH, SERVING)
        while True:
            await asyncio.sleep(interval)
            if not self.healthy:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(interval):
                        self.report(await self.store.ping())


# Recommend batches are searched on a worker thread, which takes the GIL back between numpy
# calls; with Python's default 5 ms switch interval it could wait that long for each while the
# event loop runs, which showed as a 20-30 ms p99 at half load (bench/serve.py). 0.5 ms keeps
# the tail under 10 ms for no measurable loss of throughput.
GIL_SWITCH_INTERVAL_SECONDS = 0.0005

# BLAS kept to one thread per process (the tests and benches set OPENBLAS_NUM_THREADS=1; this
# makes it the server's own default): serving's matrix products are small (a micro-batch of
# queries against the exact head), and OpenBLAS's own threads then only wait for a core the
# event loop, Redis or a sibling worker is using. With a CPU burner on the other core, 32
# queries' search_many took 159 us a query with OpenBLAS's default threads, 50 us with one.
SERVING_BLAS_THREADS = 1


@dataclass
class NamespaceServing:
    """Everything that answers one namespace: its model (holder, hot-swapped by its own
    watcher), user state store, event log, item log and rules, wired from its settings."""

    name: str
    settings: Settings
    holder: RecommenderHolder
    model_store: ModelStore
    rules_file: RulesFile | None
    store: UserStateStore
    events: EventLog
    item_log: ItemLog
    service: RecommendationService
    items: ItemService
    watcher: ModelWatcher
    arms: ArmRouter | None = None
    impressions: ImpressionLog | None = None

    @classmethod
    def build(
        cls, name: str, settings: Settings, arms: ArmRouter | None = None
    ) -> NamespaceServing:
        """Wire namespace ``name`` from its effective settings (Settings.for_namespace), its
        users routed to experiment arms by ``arms`` (None: no experiments). A bad rules file
        raises before any backend is opened."""
        holder = RecommenderHolder(
            waiting=f"no model loaded yet: waiting for the first version in {settings.model_store}",
            freeze_heap=settings.serving.freeze_heap,
        )
        rules = RulesHolder()
        rules_file = load_rules_file(settings, rules)
        store, events, item_log = build_user_state(settings)
        impressions = build_impression_log(settings, events) if arms is not None else None
        service = build_service(settings, holder, (store, events), rules, arms, impressions)
        items = build_item_service(settings, holder, item_log)
        if arms is not None:  # arm models see the catalogue's changes as the current one does
            models = arms.models
            items.followers = lambda: models.versions.values()
        model_store = ModelStore.from_settings(settings)
        watcher = ModelWatcher(
            model_store,
            holder,
            lambda version: items.prepare(load_recommender(settings, version)),
            settings.serving.model_poll_seconds,
        )
        return cls(
            name, settings, holder, model_store, rules_file, store, events, item_log, service,
            items, watcher, arms, impressions,
        )  # fmt: skip

    @property
    def served(self) -> Served:
        return Served(self.name, self.service, self.items)

    def background(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[None]]:
        """The namespace's own loops: item-log sync, rules reload (the model watcher starts
        once the first model is in)."""
        tasks = [loop.create_task(self.items.run())]
        if self.rules_file is not None and self.rules_file.reload_seconds > 0:
            tasks.append(loop.create_task(self.rules_file.run()))
        if self.impressions is not None:
            tasks.append(loop.create_task(self.impressions.run()))
        return tasks

    async def watch_models(self, stop: asyncio.Event) -> None:
        """Wait for the first model if there is none yet, then watch for new versions."""
        serving = self.settings.serving
        await _wait_for_first_model(self.watcher, stop, serving.first_model_poll_seconds)
        if serving.model_poll_seconds > 0 and not stop.is_set():
            await self.watcher.run()

    async def close(self) -> None:
        if self.impressions is not None:  # what is still queued, within a bound
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.server.grace_seconds):
                    await self.impressions.flush()
        await self.store.close()
        await self.events.close()
        await self.item_log.close()
        self.items.close()


async def serve(settings: Settings, announce: bool = True) -> None:
    """Run the server until SIGTERM or SIGINT, then drain and stop. Every namespace the
    settings name is served (recsvc.core.namespaces); its models are watched apart."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    threadpool_limits(limits=SERVING_BLAS_THREADS, user_api="blas")
    names = settings.namespace_names()
    for name in names:
        line = startup_line(settings.for_namespace(name))
        log.info("%s", line if len(names) == 1 else f"namespace {name}: {line}")
    # Before any backend is opened: a bad rules file or experiments document ends start-up
    # with one line.
    units: dict[str, NamespaceServing] = {}
    experiments, routers = build_experiments(settings, units)
    try:
        for name in names:
            units[name] = NamespaceServing.build(
                name, settings.for_namespace(name), routers.get(name)
            )
    except BaseException:
        for unit in units.values():
            await unit.close()
        raise
    first = units[names[0]]  # the default namespace: readiness follows its model
    metrics = Metrics()
    handle = create_server(
        settings,
        first.service,
        first.items,
        metrics,
        namespaces={name: unit.served for name, unit in units.items()},
        default_namespace=first.name,
    )
    store_health = StoreHealth(handle, first.store)
    for unit in units.values():
        unit.service.on_store_status = store_health.report
    metrics.watch(
        first.service,
        lambda: (
            first.watcher.swaps,
            first.watcher.failures,
            sum(unit.holder.full_collections for unit in units.values()),
        ),
    )
    if experiments is not None:
        document = experiments
        metrics.watch_experiments(
            {name: unit.service for name, unit in units.items()}, lambda: document.load_failures
        )
    gate = handle.servicer.gate
    metrics.watch_calls(SERVICE_NAME, RECOMMENDER_METHODS, lambda: gate.active)
    if settings.server.metrics_port:
        metrics_host = settings.server.metrics_host or settings.server.host
        metrics.serve(settings.server.metrics_port, metrics_host)
    # Embedded mode's users' histories, back from the event log before the port opens, so no
    # call sees a half-replayed store (it needs no model: vectors are folded in when asked).
    for unit in units.values():
        await replay_event_log(unit.settings, unit.service)
    await set_health(handle, NOT_SERVING)
    await handle.server.start()
    if handle.probes is not None:
        await handle.probes.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background: list[asyncio.Task[None]] = [loop.create_task(store_health.run())]
    for unit in units.values():
        background += unit.background(loop)
    try:
        for unit in units.values():
            await unit.items.refresh()
        listening = f"listening on {settings.server.host}:{handle.port}"
        for unit in units.values():
            if unit.model_store.latest_version() is not None:
                # No local name for the model: this frame lives as long as the server, and a
                # name here would keep the first model in memory after every later swap.
                unit.holder.swap(
                    await asyncio.to_thread(_first_recommender, unit.settings, unit.items)
                )
            elif unit is not first:
                log.warning("namespace %s: %s", unit.name, unit.holder.waiting)
        if experiments is not None:  # arm models load beside the current ones
            await asyncio.to_thread(experiments.load)
            if experiments.reload_seconds > 0:
                background.append(loop.create_task(experiments.run()))
        for unit in units.values():
            if unit is not first:
                background.append(loop.create_task(unit.watch_models(stop)))
        if not first.holder.loaded:
            # Not an error: a pod may start before the first training run has published.
            log.warning("%s", first.holder.waiting)
            # Alive but not ready: liveness ("") passes so no probe restarts the pod while
            # it waits; readiness (the Recommender service) stays NOT_SERVING.
            await handle.health.set("", SERVING)
            if announce:
                print(f"{listening} (not serving: {first.holder.waiting})", flush=True)
            interval = first.settings.serving.first_model_poll_seconds
            await _wait_for_first_model(first.watcher, stop, interval)
            announce = False
        if first.settings.serving.model_poll_seconds > 0:
            background.append(loop.create_task(first.watcher.run()))
        if first.holder.loaded:
            await set_health(handle, SERVING)
        if announce:
            print(listening, flush=True)
        await stop.wait()
        log.info("shutting down: NOT_SERVING, draining for %.1fs", settings.server.drain_seconds)
        await set_health(handle, NOT_SERVING)
        await asyncio.sleep(settings.server.drain_seconds)
        # Hold what still arrives until the stream of calls dries up (recsvc.api.gate).
        handle.servicer.gate.hold()
        await handle.servicer.gate.settled(_QUIET_SECONDS, settings.server.grace_seconds / 2)
    finally:
        for task in background:
            task.cancel()
        await stop_server(handle, settings.server.grace_seconds)
        for unit in units.values():
            await unit.close()
        log.info("stopped")
