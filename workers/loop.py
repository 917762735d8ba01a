"""The loop every worker process runs: a round, a JSON line saying what it did, a pause;
SIGTERM lets the current round finish and ends the loop."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable

from recsvc.errors import StoreUnavailable

log = logging.getLogger("recsvc")

Round = Callable[[], object]


def run_rounds(kind: str, round_once: Round, interval_seconds: float, once: bool) -> int:
    """Run ``round_once`` until SIGTERM (or once); returns the process's exit status."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        try:
            result = round_once()
        except StoreUnavailable as exc:
            if once:
                raise  # one line from the command line, exit 2
            # A store that is down (Redis restarting) is waited out: the next round retries.
            log.warning("%s round failed, retrying in %.0fs: %s", kind, interval_seconds, exc)
        else:
            log.info("%s round done: %s", kind, result)
            print(json.dumps({"worker": kind, "result": result}), flush=True)
        if once or stop.wait(interval_seconds):
            return 0
