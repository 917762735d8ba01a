"""RecommendationService: the real-time layer over the Recommender.

It brings in what the model alone does not know: the user's interactions since training and
their folded-in vector (from a UserStateStore), and durable recording of new interactions (an
EventLog). Storage is slow or down? Requests degrade (the model's own user factors, the
session, popular items) instead of failing; only recording, which must be durable, fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import numpy as np
import numpy.typing as npt

from recsvc.core.arms import NO_ROUTE, ArmRouter, Route
from recsvc.core.batching import MicroBatcher
from recsvc.core.holder import RecommenderHolder
from recsvc.core.impressions import ImpressionLog
from recsvc.core.interactions import RawInteraction, validate_interactions
from recsvc.core.queries import (
    Recommendation,
    RecommendQuery,
    SimilarItems,
    SimilarQuery,
    check_id,
    validate_batch,
)
from recsvc.core.recommender import Recommender
from recsvc.core.response_ids import RecommendationIds
from recsvc.core.rules import ActiveRules, RulesHolder
from recsvc.core.state import (
    AppendResult,
    EventLog,
    EventType,
    Interaction,
    UserState,
    UserStateStore,
)
from recsvc.errors import OutcomeUnknown, RecsvcError, StoreUnavailable, Unavailable

log = logging.getLogger(__name__)

# A Recommend call in a micro-batch: the query and its deadline (monotonic; None: none).
RecommendRequest = tuple[RecommendQuery, float | None]
RecommendBatcher = MicroBatcher[RecommendRequest, Recommendation]
# Arm batchers kept at most (one per arm model version; cleared past it).
_MAX_ARM_BATCHERS = 64


@dataclass
class ServiceStats:
    """Counters the metrics layer reads (the domain does not import prometheus)."""

    vector_hits: int = 0
    vector_misses: int = 0
    store_errors: int = 0
    fold_ins: int = 0
    fold_in_seconds: list[float] = field(default_factory=list)

    def observe_fold_in(self, seconds: float, users: int = 1) -> None:
        """Record a fold-in of ``users`` users that took ``seconds`` (kept per user)."""
        self.fold_ins += users
        self.fold_in_seconds.append(seconds / max(users, 1))
        if len(self.fold_in_seconds) > 10_000:
            del self.fold_in_seconds[:5_000]


class RecommendationService:
    """Answers Recommend/SimilarItems/RecordInteractions with user state and degradation.

    Parameters
    ----------
    holder : the current model version (swapped by the model watcher)
    store : per-user vectors and histories
    events : the durable event log
    event_weights : default weight per event type
    store_timeout : longest wait for the store in one request (further bounded by the deadline)
    gather_turns : turns of the event loop a Recommend batch waits for more calls (MicroBatcher)
    rules : the business rules in force (boosts and pins); None: no rules
    arms : the namespace's experiment routing (assignment, arm models); None: no experiments
    impressions : where responses to users in an experiment are logged; None: not logged
    """

    def __init__(
        self,
        holder: RecommenderHolder,
        store: UserStateStore,
        events: EventLog,
        event_weights: dict[EventType, float],
        store_timeout: float,
        on_store_status: Callable[[bool], None] | None = None,
        visual_weight: float = 0.5,
        batch_slice: int = 32,
        gather_turns: int = 0,
        rules: RulesHolder | None = None,
        arms: ArmRouter | None = None,
        impressions: ImpressionLog | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        self.events = events
        self.event_weights = event_weights
        self.store_timeout = store_timeout
        self.visual_weight = visual_weight
        self.batch_slice = batch_slice
        self.rules = rules or RulesHolder()
        self.arms = arms
        self.impressions = impressions
        self.stats = ServiceStats()
        self._new_id = RecommendationIds()  # every response's recommendation_id
        self.on_store_status = on_store_status or (lambda healthy: None)
        self._background: set[asyncio.Task[None]] = set()
        self._recommend_batcher = MicroBatcher(self._recommend_together, gather_turns=gather_turns)
        # One micro-batcher per experiment arm model (version -> model, batcher), made when
        # first asked for: the current model's batches stay as they are without experiments.
        self._gather_turns = gather_turns
        self._arm_batchers: dict[str, tuple[Recommender, RecommendBatcher]] = {}

    # --------------------------------------------------------------------------- queries

    def current(self) -> Recommender:
        """The model answering now; Unavailable until one is loaded."""
        return self.holder.current()

    async def recommend(
        self, query: RecommendQuery, time_left: float | None = None
    ) -> Recommendation:
        """Answered together with the Recommend calls that arrive meanwhile (MicroBatcher):
        one store round trip and one index search for all of them. Under load (calls already
        waiting for the next batch) the search runs on a worker thread (hnswlib and numpy
        release the GIL), so the event loop goes on taking calls; when it is quiet, it runs
        right away, saving the thread hop."""
        current = self.current()
        query.validate(current.limits)
        deadline = None if time_left is None else time.monotonic() + time_left
        route = NO_ROUTE
        if self.arms is not None:  # without experiments: this check is all it costs
            query, route = self.arms.route(query, current)
        if route.recommender is None:
            result = await self._recommend_batcher.submit((query, deadline))
        else:
            result = await self._arm_batcher(route.recommender).submit((query, deadline))
        return self._tag(query.user_id, result, route)

    def _arm_batcher(self, model: Recommender) -> RecommendBatcher:
        """The micro-batcher of an experiment arm's model (its calls batch together)."""
        entry = self._arm_batchers.get(model.version)
        if entry is not None and entry[0] is model:
            return entry[1]
        if len(self._arm_batchers) >= _MAX_ARM_BATCHERS:  # models replaced over time
            self._arm_batchers.clear()
        batcher: RecommendBatcher = MicroBatcher(
            lambda requests: self._recommend_with(model, requests, batcher),
            gather_turns=self._gather_turns,
        )
        self._arm_batchers[model.version] = (model, batcher)
        return batcher

    def _tag(self, user_id: str, result: Recommendation, route: Route) -> Recommendation:
        """Give the response its id and, for a user in an experiment, its experiment and arm,
        and queue its impressions."""
        result.recommendation_id = self._new_id()
        assignment = route.assignment
        if assignment is not None:
            result.experiment = assignment.experiment
            result.arm = assignment.arm
            if self.impressions is not None:
                self.impressions.offer(user_id, result)
        return result

    @property
    def rules_version(self) -> str:
        """The version of the business rules in force; empty without rules."""
        return self.rules.version

    def _active_rules(self) -> ActiveRules | None:
        """The rules in force now; None (the common case, one check) without rules."""
        rules = self.rules.current()
        return None if rules is None else rules.active(datetime.now(UTC))

    def recommend_batching(self) -> tuple[int, int]:
        """(batches, calls) answered by the Recommend micro-batcher so far."""
        return self._recommend_batcher.batches, self._recommend_batcher.requests

    async def recommend_batch(
        self, queries: list[RecommendQuery], time_left: float | None = None
    ) -> list[Recommendation]:
        return [
            result
            async for part in self.recommend_batch_slices(queries, time_left)
            for result in part
        ]

    async def recommend_batch_slices(
        self, queries: list[RecommendQuery], time_left: float | None = None
    ) -> AsyncIterator[list[Recommendation]]:
        """The batch's answers, ``batch_slice`` queries at a time (all checked first): the
        event loop answers other calls between slices, and the caller converts each slice
        while the next is not yet searched, so a batch at the size limit never holds the loop
        for long."""
        recommender = self.current()
        validate_batch(queries, recommender.limits)
        deadline = None if time_left is None else time.monotonic() + time_left
        routes: list[Route] | None = None
        if self.arms is not None:
            routed = [self.arms.route(query, recommender) for query in queries]
            queries = [query for query, _ in routed]
            routes = [route for _, route in routed]
        for start in range(0, len(queries), self.batch_slice):
            if start:
                await asyncio.sleep(0)  # the store may answer without suspending
            part = queries[start : start + self.batch_slice]
            left = None if deadline is None else deadline - time.monotonic()
            rules = self._active_rules()
            part_routes = None if routes is None else routes[start : start + self.batch_slice]
            if part_routes is None or all(r.recommender is None for r in part_routes):
                states = await self._states_for(recommender, [q.user_id for q in part], left)
                results = await asyncio.to_thread(
                    recommender.recommend_many, part, states, True, start, rules=rules
                )
            else:
                models = [r.recommender or recommender for r in part_routes]
                results = await self._recommend_by_model(part, models, left, rules, start)
            yield [
                self._tag(query.user_id, result, NO_ROUTE if routes is None else routes[n])
                for n, (query, result) in enumerate(zip(part, results, strict=True), start)
            ]

    async def _recommend_by_model(
        self,
        queries: list[RecommendQuery],
        models: list[Recommender],
        time_left: float | None,
        rules: ActiveRules | None,
        first: int,
    ) -> list[Recommendation]:
        """Batch queries answered by several models (experiment arms): each model's queries
        together, the answers back in order."""
        groups: dict[int, tuple[Recommender, list[int]]] = {}
        for n, model in enumerate(models):
            groups.setdefault(id(model), (model, []))[1].append(n)
        results: list[Recommendation | None] = [None] * len(queries)
        for model, members in groups.values():
            part = [queries[n] for n in members]
            states = await self._states_for(model, [q.user_id for q in part], time_left)
            answers = await asyncio.to_thread(
                model.recommend_many,
                part,
                states,
                True,
                rules=rules,
                positions=[first + n for n in members],
            )
            for n, answer in zip(members, answers, strict=True):
                results[n] = answer
        return [result for result in results if result is not None]

    def _recommend_together(
        self, requests: list[RecommendRequest]
    ) -> Coroutine[Any, Any, list[Recommendation | BaseException]]:
        """The current model's micro-batch (the coroutine itself: no extra await layer)."""
        return self._recommend_with(self.current(), requests, self._recommend_batcher)

    async def _recommend_with(
        self,
        recommender: Recommender,
        requests: list[RecommendRequest],
        batcher: RecommendBatcher,
    ) -> list[Recommendation | BaseException]:
        queries = [query for query, _ in requests]
        deadlines = [deadline for _, deadline in requests if deadline is not None]
        time_left = min(deadlines) - time.monotonic() if deadlines else None
        states = await self._states_for(recommender, [q.user_id for q in queries], time_left)
        rules = self._active_rules()
        try:
            if batcher.waiting:  # under load: keep taking calls meanwhile
                return list(
                    await asyncio.to_thread(
                        recommender.recommend_many, queries, states, True, rules=rules
                    )
                )
            return list(recommender.recommend_many(queries, states, True, rules=rules))  # no hop
        except RecsvcError:  # one query's error must not fail the others: answer each alone
            return [
                self._recommend_alone(recommender, q, s, rules)
                for q, s in zip(queries, states, strict=True)
            ]

    @staticmethod
    def _recommend_alone(
        recommender: Recommender,
        query: RecommendQuery,
        state: UserState,
        rules: ActiveRules | None,
    ) -> Recommendation | BaseException:
        try:
            return recommender.recommend(query, state, rules=rules)
        except RecsvcError as exc:
            return exc

    async def similar_items(self, query: SimilarQuery) -> SimilarItems:
        return self.current().similar_items(query, self.visual_weight)

    # --------------------------------------------------------------------------- recording

    async def record(
        self, raw: list[RawInteraction], time_left: float | None = None
    ) -> AppendResult:
        """Validate, append durably to the event log, then update each user's history and
        vector. Only the log must succeed: a store failure after it loses nothing (the vector
        is recomputed from the history, or the events reach the next model).

        An append that may have happened although it did not answer (a timeout) is reported
        as such, never as "not recorded": the retry with the same event_ids is safe, and it
        applies the events that an earlier call logged without updating the users' state
        (``AppendResult.pending``); once applied, the log is told (``confirm``)."""
        recommender = self.current()
        interactions = validate_interactions(raw, recommender.limits, self.event_weights)
        deadline = None if time_left is None else time.monotonic() + time_left
        try:
            async with asyncio.timeout(None if time_left is None else time_left * 0.8):
                result = await self.events.append(interactions)
        except (OutcomeUnknown, TimeoutError) as exc:
            raise Unavailable(
                "interactions: outcome unknown, the event log did not answer in time "
                f"({str(exc) or 'timed out'}); retrying with the same event_ids is safe"
            ) from exc
        except StoreUnavailable as exc:
            raise Unavailable(
                f"interactions: not recorded, the event log is unavailable ({exc})"
            ) from exc
        to_apply = [*result.accepted, *result.pending]
        by_user: dict[str, list[Interaction]] = defaultdict(list)
        for event in to_apply:
            if event.event_type is not EventType.IMPRESSION:  # logged for evaluation only
                by_user[event.user_id].append(event)
        # The users' state gets what the append left of the deadline.
        left = None if deadline is None else deadline - time.monotonic()
        if not by_user or await self._update_users(recommender, by_user, left):
            await self._confirm(to_apply, deadline)
        return result

    async def forget_user(self, user_id: str, time_left: float | None = None) -> bool:
        """ForgetUser: a tombstone appended durably to the event log (ordered after the user's
        earlier events: ingest stores it, compaction and training drop those events), then
        the user's vector and history deleted and the user marked forgotten in the store, so
        that serving stops using the loaded model's factors and history of the user at once.
        Returns whether any state was held (store, or the loaded model's factors).

        Idempotent: a repeated call appends another tombstone and finds the same state. Fails
        (Unavailable, safe to retry) unless both the log and the store took it."""
        check_id(user_id, "user_id")
        deadline = None if time_left is None else time.monotonic() + time_left
        tombstone = Interaction(
            user_id, "", EventType.FORGET, 0.0, int(time.time() * 1000), f"forget:{uuid4().hex}"
        )
        try:
            async with asyncio.timeout(None if time_left is None else time_left * 0.6):
                await self.events.append([tombstone])
        except (StoreUnavailable, TimeoutError) as exc:
            raise Unavailable(
                "user_id: not forgotten, the event log did not take the tombstone "
                f"({str(exc) or 'timed out'}); retrying is safe"
            ) from exc
        budget = self.store_timeout if deadline is None else deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.001, budget)):
                held = await self.store.forget(user_id)
        except (StoreUnavailable, TimeoutError) as exc:
            raise Unavailable(
                "user_id: the tombstone is logged (the next training forgets the user) but the "
                f"user store did not answer ({str(exc) or 'timed out'}); retry to stop serving the "
                "user's state"
            ) from exc
        in_model = self.holder.loaded and user_id in self.current().model.users
        return held or in_model

    async def replay(self, batches: Iterable[list[Interaction]]) -> tuple[int, int]:
        """Add logged interactions to the users' histories, as ``record`` does after its
        append, but without logging them again or folding in: a vector is folded in from the
        history when the user is next asked for (as after any expiry). For the embedded
        mode's start-up, whose in-process store a restart empties. Returns how many events
        and distinct users were replayed."""
        events = 0
        users: set[str] = set()
        for batch in batches:
            by_user: dict[str, list[Interaction]] = defaultdict(list)
            for event in batch:
                if event.event_type is EventType.FORGET:  # in log order: forget what came before
                    if by_user:
                        await self.store.add_histories(by_user)
                        by_user = defaultdict(list)
                    await self.store.forget(event.user_id)
                elif event.event_type is not EventType.IMPRESSION:
                    by_user[event.user_id].append(event)
                users.add(event.user_id)
            if by_user:
                await self.store.add_histories(by_user)
            events += len(batch)
        return events, len(users)

    async def _confirm(self, events: list[Interaction], deadline: float | None) -> None:
        """Tell the log these events are applied. Best effort: the events are recorded and
        applied either way; unconfirmed, a later retry of them would apply them again."""
        if not events:
            return
        budget = self.store_timeout if deadline is None else deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.001, budget)):
                await self.events.confirm(events)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("%d events: applied but not confirmed (%s)", len(events), exc)

    async def _update_users(
        self,
        recommender: Recommender,
        by_user: dict[str, list[Interaction]],
        time_left: float | None,
    ) -> bool:
        """All users' histories in one store round trip, then one batched fold-in, then all
        their vectors in another. The store's budget grows with the number of users (the
        round trips carry that much work), within most of the request's deadline. Returns
        whether the store took it all."""
        budget = self.store_timeout * max(1, len(by_user))
        if time_left is not None:
            budget = max(0.001, min(budget, time_left * 0.8))
        try:
            async with asyncio.timeout(budget):
                histories = await self.store.add_histories(by_user)
                started = time.perf_counter()
                vectors = recommender.fold_in_users(
                    {user_id: history.items for user_id, history in histories.items()},
                    {u: history.dislikes for u, history in histories.items() if history.dislikes},
                    {u for u, history in histories.items() if history.forgotten},
                )
                self.stats.observe_fold_in(time.perf_counter() - started, len(vectors))
                # Conditional on each history's sequence number: a concurrent call that
                # added to the same user's history later must not be overwritten by this one.
                seqs = {user_id: history.seq for user_id, history in histories.items()}
                await self.store.put_vectors(recommender.version, vectors, seqs)
            self.on_store_status(True)
            return True
        except (StoreUnavailable, TimeoutError) as exc:
            self.stats.store_errors += 1
            self.on_store_status(False)
            log.warning(
                "%d users: state not updated (%s); events are in the log", len(by_user), exc
            )
            return False

    # --------------------------------------------------------------------------- helpers

    async def _states_for(
        self, recommender: Recommender, user_ids: list[str], time_left: float | None
    ) -> list[UserState]:
        """Each user's stored state for this model version, read in one round trip; folds in
        (and stores) a vector where only the history is known (e.g. after a model swap).
        Degrades to no state when the store is slow or down."""
        wanted = list(dict.fromkeys(u for u in user_ids if u))
        if not wanted:
            return [UserState() for _ in user_ids]
        try:
            async with asyncio.timeout(self._budget(time_left)):
                fetched = await self.store.get_states(wanted, recommender.version)
            self.on_store_status(True)
        except (StoreUnavailable, TimeoutError) as exc:
            self.stats.store_errors += 1
            self.on_store_status(False)
            log.debug("%d users: store unavailable (%s); answering without it", len(wanted), exc)
            return [UserState() for _ in user_ids]
        stored = dict(zip(wanted, fetched, strict=True))
        ready: dict[str, UserState] = {}
        for user_id, state in stored.items():
            if state.vector is None and state.history:
                vector = self._fold_in(recommender, user_id, state)
                if vector is not None:
                    self._spawn(
                        self._store_vector(user_id, recommender.version, vector, state.history_seq)
                    )
                state = UserState(
                    state.history, vector, state.history_seq, state.dislikes, state.forgotten
                )
            ready[user_id] = state
        states: list[UserState] = []
        for user_id in user_ids:
            if user_id and stored[user_id].vector is not None:
                self.stats.vector_hits += 1
            elif user_id:
                self.stats.vector_misses += 1
            states.append(ready.get(user_id, UserState()))
        return states

    def _fold_in(
        self, recommender: Recommender, user_id: str, state: UserState
    ) -> npt.NDArray[np.float32] | None:
        started = time.perf_counter()
        vector = recommender.fold_in_user(user_id, state.history, state.dislikes, state.forgotten)
        self.stats.observe_fold_in(time.perf_counter() - started)
        return vector

    async def _store_vector(
        self, user_id: str, version: str, vector: npt.NDArray[np.float32], history_seq: int
    ) -> None:
        """Store a lazily folded-in vector, unless the history has moved on meanwhile."""
        try:
            async with asyncio.timeout(self.store_timeout):
                await self.store.put_vectors(version, {user_id: vector}, {user_id: history_seq})
        except (StoreUnavailable, TimeoutError):
            self.stats.store_errors += 1

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _budget(self, time_left: float | None) -> float:
        """Time the store may take: the configured limit, within the request's deadline."""
        if time_left is None:
            return self.store_timeout
        return max(0.001, min(self.store_timeout, time_left * 0.5))
