"""LitServe peer: the same CrossEncoder behind LitServe's request batching.

Run in its own venv (benchmarks/.venvs/litserve, made by benchmarks/peers/setup.sh):
    python benchmarks/peers/litserve_server.py MODEL_DIR --port 8400 --threads 2 --max-batch-size 8
POST /rerank {"query", "sentences", "ids"} -> {"results": [{"id", "score"}]} sorted, as the service.
Requests that arrive together (up to --max-batch-size, waiting at most --batch-timeout s) are
scored in one predict call over all their pairs.
"""

from __future__ import annotations

import argparse

import litserve as ls


class RerankAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, batch_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_dir, self.threads, self.batch_size = model_dir, threads, batch_size

    def setup(self, device) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(self.threads)
        self.model = CrossEncoder(self.model_dir, device="cpu")

    def decode_request(self, request):
        return request["query"], request["sentences"], request.get("ids") or list(range(len(request["sentences"])))

    def batch(self, inputs):
        return inputs

    def predict(self, batch):
        pairs = [(q, s) for q, sentences, _ in batch for s in sentences]
        scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False).tolist()
        out, i = [], 0
        for _, sentences, ids in batch:
            out.append((ids, scores[i:i + len(sentences)]))
            i += len(sentences)
        return out

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        ids, scores = output
        results = sorted(({"id": i, "score": s} for i, s in zip(ids, scores)), key=lambda r: r["score"], reverse=True)
        return {"results": results}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--predict-batch-size", type=int, default=32)
    args = parser.parse_args()
    api = RerankAPI(args.model, args.threads, args.predict_batch_size, max_batch_size=args.max_batch_size,
                    batch_timeout=args.batch_timeout, api_path="/rerank")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, track_requests=False, timeout=False)
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    main()
