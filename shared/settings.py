"""One settings object for the gateway, the broker and the workers.

Every option is declared once, as a field of Settings: its variable, its
parser, its default and its meaning. `Settings.load()` reads the process environment and a
`.env` file in the working directory (the environment wins), and is called
from each program's `main()`, never at import. The README's table of variables
is generated from those fields (`python -m shared.settings --markdown`) and a test
keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .modes import BACKENDS, PRECISIONS

DEFAULT_MODEL = "mixedbread-ai/mxbai-rerank-base-v1"


class SettingsError(ValueError):
    """A variable is malformed; str() is one line naming it and the expected form."""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError
        return value

    parse.form = "an integer" + (f" >= {lo}" if lo is not None and hi is None else "") + (
        f" in {lo}..{hi}" if lo is not None and hi is not None else ""
    )
    return parse


def _float(lo: float = 0.0, *, inclusive: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not (value >= lo if inclusive else value > lo) or value != value or value == float("inf"):
            raise ValueError
        return value

    parse.form = f"a number {'>=' if inclusive else '>'} {lo:g}"
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError
        return value

    parse.form = "one of " + ", ".join(choices)
    return parse


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError
    return raw.strip()


_text.form = "a non-empty string"


def _zmq_endpoint(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("tcp://", "ipc://", "inproc://")) or len(value) < 9:
        raise ValueError
    return value


_zmq_endpoint.form = "a ZeroMQ endpoint such as tcp://host:5555 or ipc:///path"


def _origins(raw: str) -> tuple[str, ...]:
    items = tuple(o.strip() for o in raw.split(",") if o.strip())
    if not items:
        raise ValueError
    return items


_origins.form = "a comma-separated list of origins, or *"


def option(env: str, parse: Callable[[str], Any], default: Any, help: str, *,
           computed: Callable[["Settings"], Any] | None = None, shown: str | None = None) -> Any:
    """A settings field: its variable, parser, default and meaning, declared once."""
    meta = {"env": env, "parse": parse, "help": help, "computed": computed, "shown": shown}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    # Gateway (HTTP)
    host: str = option("HOST", _text, "0.0.0.0", "Address the HTTP gateway listens on.")
    port: int = option("PORT", _int(1, 65535), 8300, "Port the HTTP gateway listens on.")
    web_concurrency: int = option(
        "WEB_CONCURRENCY", _int(1), 1,
        "Gateway (gunicorn/uvicorn) processes; each has its own socket to the broker.")
    cors_origins: tuple[str, ...] = option(
        "RERANKER_CORS_ORIGINS", _origins, ("*",), "Origins allowed by CORS, comma-separated.")
    max_sentences: int = option(
        "RERANKER_MAX_SENTENCES", _int(1), 1024, "Most sentences in one request; more gets 413.")
    max_chars: int = option(
        "RERANKER_MAX_CHARS", _int(1), 20_000,
        "Most characters in the query or in one sentence; more gets 413. "
        "Texts longer than the model's max length are truncated by tokens, not refused.")
    max_body_bytes: int = option(
        "RERANKER_MAX_BODY_BYTES", _int(1024), 8 * 1024 * 1024, "Largest request body accepted; more gets 413.")
    # Broker
    workers_bind: str = option(
        "RERANKER_WORKERS_BIND", _zmq_endpoint, "tcp://0.0.0.0:5555", "Where the broker listens for workers.")
    frontend_url: str = option(
        "RERANKER_FRONTEND", _zmq_endpoint, None,
        "Local endpoint between the gateway processes and the broker.",
        computed=lambda s: f"ipc://{tempfile.gettempdir()}/reranker-{s.port}.ipc",
        shown="ipc://$TMPDIR/reranker-$PORT.ipc")
    request_timeout: float = option(
        "RERANKER_REQUEST_TIMEOUT", _float(), 60.0, "Seconds a request may take in all before it gets 504.")
    no_worker_grace: float = option(
        "RERANKER_NO_WORKER_GRACE", _float(), 2.0,
        "Seconds a request waits for some worker to be connected before it gets 503.")
    max_queued: int = option(
        "RERANKER_MAX_QUEUED", _int(1), 256, "Most requests waiting or running at once; more get 429.")
    max_retries: int = option(
        "RERANKER_MAX_RETRIES", _int(0), 2,
        "How often work lost with a dead worker is re-dispatched before its request fails.")
    max_batch_pairs: int = option(
        "RERANKER_MAX_BATCH_PAIRS", _int(1), 64,
        "Most pairs the broker hands one worker at once: big requests are split across idle "
        "workers, small concurrent ones merged, up to this size.")
    min_split_pairs: int = option(
        "RERANKER_MIN_SPLIT_PAIRS", _int(1), 16,
        "Fewest pairs worth a job of their own: a request is split across idle workers only in "
        "shares of at least this many pairs.")
    heartbeat_interval: float = option(
        "RERANKER_HEARTBEAT_INTERVAL", _float(), 1.0, "Seconds between heartbeats, both ways.")
    heartbeat_liveness: int = option(
        "RERANKER_HEARTBEAT_LIVENESS", _int(1), 3, "Heartbeats missed before a peer is taken for dead.")
    max_message_bytes: int = option(
        "RERANKER_MAX_MESSAGE_BYTES", _int(1024), 64 * 1024 * 1024,
        "Largest ZeroMQ frame accepted from a peer; a peer that sends more is disconnected.")
    # Worker
    broker_url: str = option(
        "RERANKER_BROKER_URL", _zmq_endpoint, "tcp://127.0.0.1:5555", "Where a worker connects to the broker.")
    model: str = option(
        "RERANKER_MODEL", _text, DEFAULT_MODEL, "CrossEncoder to load: a Hugging Face hub name or a local directory.")
    backend: str = option(
        "RERANKER_BACKEND", _choice(*BACKENDS), "torch",
        "Scorer: torch (default), onnx, openvino, or stub (word overlap; tests and demos only).")
    precision: str = option(
        "RERANKER_PRECISION", _choice(*PRECISIONS), "fp32", "Numeric precision of the model; fp32 is exact.")
    num_threads: int = option(
        "NUM_THREADS", _int(1), None, "Torch threads per worker. Keep replicas x NUM_THREADS <= cores.",
        computed=lambda s: _usable_cpus(), shown="CPUs this process may use")
    batch_size: int = option(
        "RERANKER_BATCH_SIZE", _int(1), 32, "Most pairs in one forward pass inside a worker.")
    batch_tokens: int = option(
        "RERANKER_BATCH_TOKENS", _int(1), 8192,
        "Most padded tokens in one forward pass inside a worker (pairs x longest pair). Pairs are sorted "
        "by token length and batched to cut padding, at most RERANKER_BATCH_SIZE pairs a batch.")
    export_dir: str | None = option(
        "RERANKER_EXPORT_DIR", _text, None,
        "Where the onnx/openvino backends cache the model they export on first start.",
        shown="~/.cache/reranker/exports")
    max_length: int | None = option(
        "RERANKER_MAX_LENGTH", _int(8), None,
        "Tokens per pair before truncation; unset: the model's own maximum.", shown="model's maximum")
    health_file: str = option(
        "RERANKER_HEALTH_FILE", _text, None,
        "File the worker rewrites every heartbeat with its state; `python -m worker.health` checks it.",
        computed=lambda s: f"{tempfile.gettempdir()}/reranker-worker-health.json",
        shown="$TMPDIR/reranker-worker-health.json")
    stub_delay_ms: float = option(
        "RERANKER_STUB_DELAY_MS", _float(0.0, inclusive=True), 0.0, "Stub backend only: simulated compute per pair, in ms.")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, dotenv: str | Path | None = ".env") -> "Settings":
        """Build settings from `environ` (default: os.environ) over a .env file."""
        values: dict[str, str] = {}
        if dotenv is not None and Path(dotenv).is_file():
            from dotenv import dotenv_values

            values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> "Settings":
        parsed: dict[str, Any] = {}
        for f in options():
            env, parse = f.metadata["env"], f.metadata["parse"]
            raw = values.get(env)
            if raw is None or raw.strip() == "":
                continue
            try:
                parsed[f.name] = parse(raw)
            except ValueError:
                raise SettingsError(f"{env}={raw!r} is invalid: expected {parse.form}") from None
        return cls(**parsed)

    def __post_init__(self) -> None:
        for f in options():
            if getattr(self, f.name) is None and f.metadata["computed"] is not None:
                object.__setattr__(self, f.name, f.metadata["computed"](self))

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The variables that rebuild these settings (used to start child processes)."""
        env = {}
        for f in options():
            value = getattr(self, f.name)
            if value is not None:
                env[f.metadata["env"]] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env


def options() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(Settings)


def load_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    """For main(): settings, or exit 2 with one line naming the bad variable."""
    try:
        return Settings.load(environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in options():
        default = f.metadata["shown"] or (",".join(f.default) if isinstance(f.default, tuple) else str(f.default))
        rows.append(f"| `{f.metadata['env']}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_table())
    else:
        print(load_or_exit())
