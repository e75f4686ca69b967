"""What every rerank route does with a parsed request: the limits, the model check, the scoring
options, the broker call, the timings; and the original POST /rerank's sorted answer.

Both ways into POST /rerank (the fast path and the FastAPI route) use one RerankHandler, so they
answer alike; the routes of the other dialects (gateway/routes/) call its `score`.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import numpy as np

from shared.logs import REQUEST_ID
from shared.protocol import DEFAULT_OPTIONS, Chunking, ErrorKind, ScoreOptions, Task
from shared.settings import Settings

from . import errors
from .asgi import Answer
from .client import BrokerClient
from .errors import ServiceError
from .metrics import GatewayMetrics
from .pool import PoolView
from .schemas import RerankRequest, render_results


class Result(NamedTuple):
    scores: np.ndarray              # float32, one per text, in the texts' order
    headers: list[tuple[bytes, bytes]]  # the timing headers
    tokens: int | None              # tokens the workers scored, where they say


class RerankHandler:
    def __init__(self, settings: Settings, client: BrokerClient, pool: PoolView, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.client = client
        self.pool = pool
        self.metrics = metrics
        # the answer to a body over the limit, for the layers that read bodies
        self.too_large = errors.answer(errors.body_too_large(settings.max_body_bytes))

    def options(self, *, raw: bool = False, chunk: bool | None = None, truncate: bool = True,
                truncation_side: str = "right", max_tokens: int | None = None) -> ScoreOptions:
        """How to score: `chunk` None takes the service's default (RERANKER_LONG_TEXTS); `max_tokens`
        (the tokens of a text scored at most) turns chunking on."""
        s = self.settings
        if chunk is None:
            chunk = s.long_texts == "chunk" or max_tokens is not None
        if not (raw or chunk) and truncate and truncation_side == "right":
            return DEFAULT_OPTIONS  # the common case, without making a new one
        windows = None
        if chunk:
            windows = Chunking(s.chunk_overlap, min(max_tokens or s.chunk_max_tokens, s.chunk_max_tokens))
        return ScoreOptions(raw=raw, truncate=truncate, truncation_side=truncation_side, chunk=windows)

    async def check_model(self, model: str | None) -> None:
        """A request that names a model the workers do not serve is refused, naming the one served
        (unless RERANKER_ACCEPT_ANY_MODEL); with no worker known, nothing can be checked."""
        if model is None or self.settings.accept_any_model:
            return
        served = await self.pool.models()
        if served and not any(model == name or model == name.rstrip("/").rsplit("/", 1)[-1] for name in served):
            raise ServiceError(ErrorKind.WRONG_MODEL, f"model {model!r} is not served here; this service serves "
                                                      f"{', '.join(repr(m) for m in sorted(served))}")

    async def score(self, query: str, texts: Sequence[str], options: ScoreOptions, route: str,
                    top_n: int | None = None) -> Result:
        """The texts' scores against the query; raises ServiceError (a limit, or the broker's failure).
        With top_n 0 nothing is scored (the scores are zeros)."""
        s = self.settings
        if len(texts) > s.max_sentences:
            raise ServiceError(ErrorKind.TOO_LARGE, f"{len(texts)} texts exceed the limit of {s.max_sentences} "
                                                    "per request (RERANKER_MAX_SENTENCES)")
        longest = max(max((len(t) for t in texts), default=0), len(query))
        if longest > s.max_chars:
            raise ServiceError(ErrorKind.TOO_LARGE, f"a text of {longest} characters exceeds the limit of "
                                                    f"{s.max_chars} (RERANKER_MAX_CHARS)")
        if not texts or top_n == 0:
            return Result(np.zeros(len(texts), dtype=np.float32), [], 0)
        started = time.perf_counter()
        scored = await self.client.rerank(Task(query, texts, options, REQUEST_ID.get()))
        elapsed_ms = (time.perf_counter() - started) * 1000
        meta = scored.meta
        self.metrics.scored(route, len(texts), meta)
        headers = [(b"x-compute-time", b"%.1f" % elapsed_ms)]
        for header, key in ((b"x-queue-time", "queue_ms"), (b"x-inference-time", "inference_ms")):
            if isinstance(meta.get(key), (int, float)):
                headers.append((header, b"%.1f" % meta[key]))
        tokens = meta.get("tokens")
        return Result(scored.scores, headers, tokens if isinstance(tokens, int) else None)

    async def answer(self, request: RerankRequest) -> Answer:
        """POST /rerank in its original shape."""
        options = self.options(raw=request.raw_scores, chunk=request.chunk)
        try:
            result = await self.score(request.query, request.sentences, options, "/rerank", request.top_n)
        except ServiceError as exc:
            return errors.answer(exc)
        return Answer(200, render_results(request.ids, result.scores, request.top_n), result.headers)
