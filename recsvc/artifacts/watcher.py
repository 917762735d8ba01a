"""ModelWatcher: picks up new model versions while serving, without a failed call.

Every ``interval`` seconds it reads LATEST; a new version is verified and loaded off to the
side (in a worker thread, so requests keep flowing), then swapped in with one reference
assignment. A version that fails verification or loading, whatever the exception, is logged,
counted and skipped until LATEST changes again; the old model keeps serving and the watcher
keeps polling (a store file must never be able to stop model updates).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from recsvc.artifacts.store import ModelStore
from recsvc.core.holder import RecommenderHolder
from recsvc.core.recommender import Recommender
from recsvc.errors import ArtifactError

log = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(
        self,
        store: ModelStore,
        holder: RecommenderHolder,
        load: Callable[[str], Recommender],
        interval: float,
    ) -> None:
        self.store = store
        self.holder = holder
        self.load = load
        self.interval = interval
        self.swaps = 0
        self.failures = 0
        self._rejected: str | None = None

    async def check_once(self) -> bool:
        """Load and swap in LATEST if it is new; True when a swap happened."""
        try:
            latest = self.store.latest_version()
        except Exception as exc:  # OSError, ArtifactError, a LATEST that is not text...
            log.warning("model store unreadable: %s", exc)
            return False
        current = self.holder.current().version if self.holder.loaded else None
        if latest is None or latest == current or latest == self._rejected:
            return False
        try:
            recommender = await asyncio.to_thread(self.load, latest)
        except Exception as exc:
            self.failures += 1
            self._rejected = latest
            reason = exc if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
            log.error("model %s rejected, still serving %s: %s", latest, current, reason)
            return False
        self.holder.swap(recommender)
        self.swaps += 1
        log.info("swapped model %s -> %s", current, latest)
        return True

    async def run(self) -> None:
        """Check forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # a bug here must not end model updates for good
                log.exception("model watcher: check failed; retrying in %.1fs", self.interval)
