"""What a gateway process knows of the worker pool: the broker's STATUS, asked at most every few
seconds, so that a request naming a model costs no round trip to the broker most of the time."""

from __future__ import annotations

import time

from .client import BrokerClient
from .errors import ServiceError

FRESH_S = 2.0  # how long a STATUS answers for


class PoolView:
    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self._status: dict = {}
        self._asked = float("-inf")

    async def status(self) -> dict:
        """The broker's STATUS, fresh; raises ServiceError where the broker does not answer."""
        status = await self.client.status()
        self._status, self._asked = status, time.monotonic()
        return status

    async def recent(self) -> dict:
        """The last STATUS if it is recent, else a fresh one; {} where the broker does not answer."""
        if time.monotonic() - self._asked > FRESH_S:
            try:
                await self.status()
            except ServiceError:  # not asked again before FRESH_S either: the request goes on regardless
                self._status, self._asked = {}, time.monotonic()
        return self._status

    async def models(self) -> set[str]:
        """The models the connected workers serve (as their READY info names them)."""
        return {w["model"] for w in (await self.recent()).get("pool", []) if isinstance(w.get("model"), str)}


def served(status: dict) -> dict:
    """The model served, as /info and the responses report it: the first worker's model, backend,
    precision and max length (None each where no worker is connected)."""
    workers = status.get("pool") or [{}]
    return {k: workers[0].get(k) for k in ("model", "backend", "precision", "max_length")}
