"""The original service, re-created for the benchmark (see docs/benchmarks.md and the NOTES).

Behaviour kept from the original design (a single FastAPI process):
- torch's thread count is set at import from NUM_THREADS (a missing NUM_THREADS crashes it);
- the CrossEncoder loads at import;
- the handler is `async def` but calls `CrossEncoder.predict` synchronously, so the event loop
  is blocked while it scores and requests are served one at a time;
- scores are predict's default output (sigmoid), paired with ids by position, sorted in
  descending order, serialised by orjson with OPT_SERIALIZE_NUMPY;
- CORS allows every origin, method and header.
The only change: the model is read from BENCH_MODEL (a local directory), not from the hub.

    NUM_THREADS=2 BENCH_MODEL=benchmarks/.models/mxbai-base \
        python -m uvicorn benchmarks.original_app:app --port 8003
"""

import os

import orjson
import torch
from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel
from sentence_transformers import CrossEncoder

torch.set_num_threads(int(os.getenv("NUM_THREADS")))

app = FastAPI()
app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])


class OriginalReranker:
    """The original app's scoring: predict, ids by position, sorted by score."""

    def __init__(self, name: str) -> None:
        self.model = CrossEncoder(name)

    def scored(self, query: str, sentences: list[str], ids: list[int]) -> list[dict]:
        scores = self.model.predict([[query, s] for s in sentences], show_progress_bar=False)
        # ids[i] by position: fewer ids than sentences raise IndexError (a 500), extra ids are dropped
        return [{"id": ids[i], "score": score} for i, score in enumerate(scores)]

    def ranked(self, query: str, sentences: list[str], ids: list[int]) -> list[dict]:
        results = self.scored(query, sentences, ids)
        results.sort(key=lambda r: r["score"], reverse=True)
        return results


reranker = OriginalReranker(os.environ.get("BENCH_MODEL", "mixedbread-ai/mxbai-rerank-base-v1"))


class Body(BaseModel):
    query: str
    sentences: list[str]
    ids: list[int]


class NumpyJSONResponse(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


@app.post("/rerank", response_class=NumpyJSONResponse)
async def rerank(body: Body):
    # Synchronous model call inside the event loop: the original design's bottleneck.
    return NumpyJSONResponse({"results": reranker.ranked(body.query, body.sentences, body.ids)})
