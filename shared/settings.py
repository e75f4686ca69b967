"""One settings object for the gateway, the broker and the workers.

Every option is declared once, as a field of Settings: its environment variable, its type and
bounds, its default, its meaning and which parts of the service read it. From that declaration
come the environment and `.env` reading, the command line (`--port 8400` over PORT over .env),
each program's `--help`, and the README's table (`python -m shared.settings --markdown`; a test
keeps the two equal). pydantic-settings does the reading and the parsing.

`Settings(...)` takes its values as given and reads nothing. `Settings.load()` and
`load_or_exit()` read the outside world; programs call them from main(), never at import.
"""

from __future__ import annotations

import os
import sys
import tempfile
from argparse import SUPPRESS, RawDescriptionHelpFormatter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, get_args

from dotenv import dotenv_values
from pydantic import (AfterValidator, BeforeValidator, Field, SecretStr, StringConstraints, ValidationError,
                      model_validator)
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as _CommandLineError
from pydantic_settings.sources.utils import parse_env_vars

from .endpoints import is_local
from .modes import BACKENDS, PRECISIONS

DEFAULT_MODEL = "mixedbread-ai/mxbai-rerank-base-v1"

# The parts of the service that read settings, and what each program runs.
GATEWAY, BROKER, WORKER = "gateway", "broker", "worker"
SERVICES: dict[str, tuple[str, ...]] = {
    "gateway": (GATEWAY, BROKER),  # python -m gateway: the HTTP gateway and its broker process
    "worker": (WORKER,),
}
ABOUT = {
    "gateway": "The HTTP gateway (gunicorn + uvicorn) and the ZeroMQ broker that dispatches to workers.",
    "worker": "A CrossEncoder worker: loads the model, connects to the broker, scores jobs.",
}


class SettingsError(ValueError):
    """A value is malformed; str() is one line naming it (variable or flag) and the expected form."""


# -- value types: each says how it is written, for errors and --help -------------------------

@dataclass(frozen=True)
class Form:
    expected: str  # "configuration error: VAR='x' is invalid: expected <this>"
    metavar: str   # --flag METAVAR


def _stripped_lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _comma_list(value: Any) -> Any:
    return tuple(item.strip() for item in value.split(",") if item.strip()) if isinstance(value, str) else value


def integer(lo: int, hi: int | None = None) -> Any:
    expected = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
    return Annotated[int, Field(ge=lo, le=hi), Form(expected, "N")]


def number(lo: float = 0.0, *, inclusive: bool = False) -> Any:
    bound = Field(ge=lo, allow_inf_nan=False) if inclusive else Field(gt=lo, allow_inf_nan=False)
    return Annotated[float, bound, Form(f"a number {'>=' if inclusive else '>'} {lo:g}", "NUMBER")]


def choice(*names: str) -> Any:
    return Annotated[Literal[names], BeforeValidator(_stripped_lower),
                     Form("one of " + ", ".join(names), "{" + ",".join(names) + "}")]


_NON_EMPTY = StringConstraints(strip_whitespace=True, min_length=1)
Text = Annotated[str, _NON_EMPTY, Form("a non-empty string", "TEXT")]
_ENDPOINT = StringConstraints(strip_whitespace=True, min_length=9, pattern=r"^(tcp|ipc|inproc)://")
Endpoint = Annotated[str, _ENDPOINT, Form("a ZeroMQ endpoint such as tcp://host:5555 or ipc:///path", "URL")]


def _local(endpoint: str) -> str:
    if not is_local(endpoint):
        raise ValueError("not a local endpoint")
    return endpoint


# Between the gateway processes and the broker: no authentication, so never off this host.
LocalEndpoint = Annotated[str, _ENDPOINT, AfterValidator(_local),
                          Form("a local ZeroMQ endpoint: ipc:///path, or tcp:// on a loopback address "
                               "such as tcp://127.0.0.1:5556", "URL")]
File = Annotated[str, _NON_EMPTY, Form("a file path", "FILE")]
Directory = Annotated[str, _NON_EMPTY, Form("a directory", "DIR")]
Flag = Annotated[bool, BeforeValidator(_stripped_lower), Form("true or false", "{true,false}")]
# A secret: --help, the README and repr() never show its value.
Secret = Annotated[SecretStr, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v),
                   Field(min_length=1), Form("a non-empty string", "KEY")]
Origins = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), Field(min_length=1),
                    Form("a comma-separated list of origins, or *", "ORIGINS")]


def option(default: Any, env: str, help: str, *, read_by: tuple[str, ...], shown: str | None = None,
           computed: Any = None) -> Any:
    """A settings field: its variable, default, meaning and readers, declared once.

    `computed(values)`: the default, from the fields declared before it; `shown`: the default as
    --help and the README state it, where the value itself depends on the machine.
    """
    extra = {"read_by": list(read_by), "shown": shown}
    if computed is not None:
        return Field(default_factory=computed, validation_alias=env, description=help, json_schema_extra=extra)
    return Field(default, validation_alias=env, description=help, json_schema_extra=extra)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Settings(BaseSettings):
    """Settings of the reranking service (see the module docstring)."""

    model_config = SettingsConfigDict(
        frozen=True,
        validate_by_name=True,   # Settings(port=...) as well as the variables' names
        case_sensitive=True,
        env_ignore_empty=True,   # VAR= (as compose writes ${VAR:-}) means "the default"
        extra="forbid",          # Settings(modle=...) is an error, not a silent default
        cli_kebab_case=True,
        cli_exit_on_error=False,
    )

    # Gateway (HTTP)
    host: Text = option("0.0.0.0", "HOST", "Address the HTTP gateway listens on.", read_by=(GATEWAY,))
    port: integer(1, 65535) = option(8300, "PORT", "Port the HTTP gateway listens on.", read_by=(GATEWAY,))
    web_concurrency: integer(1) = option(
        1, "WEB_CONCURRENCY", "Gateway (gunicorn/uvicorn) processes; each has its own socket to the broker.",
        read_by=(GATEWAY,))
    cors_origins: Origins = option(("*",), "RERANKER_CORS_ORIGINS", "Origins allowed by CORS, comma-separated.",
                                   read_by=(GATEWAY,))
    max_sentences: integer(1) = option(
        1024, "RERANKER_MAX_SENTENCES", "Most sentences in one request; more gets 413.", read_by=(GATEWAY,))
    max_chars: integer(1) = option(
        20_000, "RERANKER_MAX_CHARS",
        "Most characters in the query or in one sentence; more gets 413. "
        "Texts longer than the model's max length are truncated by tokens, not refused.", read_by=(GATEWAY,))
    max_body_bytes: integer(1024) = option(
        8 * 1024 * 1024, "RERANKER_MAX_BODY_BYTES", "Largest request body accepted; more gets 413.",
        read_by=(GATEWAY,))
    keepalive_timeout: number() = option(
        5.0, "RERANKER_KEEPALIVE_TIMEOUT", "Seconds an idle keep-alive HTTP connection stays open between requests.",
        read_by=(GATEWAY,))
    header_timeout: number() = option(
        10.0, "RERANKER_HEADER_TIMEOUT",
        "Seconds a client has to send a request's headers, from its connection's start or the request's first "
        "byte; then the connection is closed.", read_by=(GATEWAY,))
    body_timeout: number() = option(
        10.0, "RERANKER_BODY_TIMEOUT",
        "Seconds a request body may stall (nothing arrives) before the request gets 408 and its connection is "
        "closed; also the time a client has to finish a body that was answered before it was read (a 413).",
        read_by=(GATEWAY,))
    max_connections: integer(1) = option(
        1000, "RERANKER_MAX_CONNECTIONS",
        "Most open HTTP connections (and requests in progress) per gateway process; a request beyond it gets 503 "
        "and its connection is closed.", read_by=(GATEWAY,))
    api_key: Secret | None = option(
        None, "RERANKER_API_KEY",
        "API key: when set (here or in RERANKER_API_KEY_FILE), every route but /health, /ready and the docs "
        "needs `Authorization: Bearer <key>`, else 401.", read_by=(GATEWAY,), shown="unset")
    api_key_file: File | None = option(
        None, "RERANKER_API_KEY_FILE",
        "File of accepted API keys, one a line (# comments allowed), read at start; with RERANKER_API_KEY, "
        "both are accepted.", read_by=(GATEWAY,), shown="unset")
    accept_any_model: Flag = option(
        False, "RERANKER_ACCEPT_ANY_MODEL",
        "Answer requests whatever `model` they name; otherwise a request naming a model the workers do not "
        "serve gets 404 naming the one served.", read_by=(GATEWAY,))
    long_texts: choice("truncate", "chunk") = option(
        "truncate", "RERANKER_LONG_TEXTS",
        "Default for texts longer than the model's window: truncate (score the head) or chunk (score every "
        "window, keep the best). A request can choose with `chunk`.", read_by=(GATEWAY,))
    chunk_overlap: integer(0) = option(
        64, "RERANKER_CHUNK_OVERLAP", "Tokens that consecutive windows of a chunked text share.", read_by=(GATEWAY,))
    chunk_max_tokens: integer(1) = option(
        4096, "RERANKER_CHUNK_MAX_TOKENS",
        "Tokens of a chunked text scored at most (a request's max_tokens_per_doc can lower it).",
        read_by=(GATEWAY,))
    access_log: Flag = option(
        False, "RERANKER_ACCESS_LOG",
        "Log one line per HTTP request (method, path, status, time, request id). Off by default: on a small "
        "request it adds about a quarter to the gateway's CPU time (measured).", read_by=(GATEWAY,))
    metrics_dir: Directory = option(
        None, "RERANKER_METRICS_DIR",
        "Directory where the gateway processes keep their Prometheus metrics, for /metrics to add up "
        "(a subdirectory per run, removed when stale).", read_by=(GATEWAY,),
        shown="$TMPDIR/reranker-metrics-$PORT",
        computed=lambda values: f"{tempfile.gettempdir()}/reranker-metrics-{values['port']}")
    # Broker
    workers_bind: Endpoint = option(
        "tcp://127.0.0.1:5555", "RERANKER_WORKERS_BIND",
        "Where the broker listens for workers. Binding beyond loopback without CURVE logs a warning.",
        read_by=(BROKER,))
    curve_broker_key: File | None = option(
        None, "RERANKER_CURVE_BROKER_KEY",
        "The broker's CURVE secret key file (`reranker keys` writes it). Set with RERANKER_CURVE_ALLOWED_KEYS, it "
        "turns CURVE on for the workers port: traffic encrypted, and only allowed workers may join.",
        read_by=(BROKER,), shown="unset: CURVE off")
    curve_allowed_keys: Directory | None = option(
        None, "RERANKER_CURVE_ALLOWED_KEYS",
        "Directory of the public key files (*.key) of the workers allowed to join; read again as workers connect.",
        read_by=(BROKER,), shown="unset: CURVE off")
    frontend_url: LocalEndpoint = option(
        None, "RERANKER_FRONTEND", "Local endpoint between the gateway processes and the broker.",
        read_by=(GATEWAY, BROKER), shown="ipc://$TMPDIR/reranker-$PORT.ipc",
        computed=lambda values: f"ipc://{tempfile.gettempdir()}/reranker-{values['port']}.ipc")
    request_timeout: number() = option(
        60.0, "RERANKER_REQUEST_TIMEOUT", "Seconds a request may take in all before it gets 504.",
        read_by=(GATEWAY, BROKER))
    no_worker_grace: number() = option(
        2.0, "RERANKER_NO_WORKER_GRACE",
        "Seconds a request waits for some worker to be connected before it gets 503.", read_by=(BROKER,))
    max_queued: integer(1) = option(
        256, "RERANKER_MAX_QUEUED", "Most requests waiting or running at once; more get 429.", read_by=(BROKER,))
    max_queued_pairs: integer(1) = option(
        16384, "RERANKER_MAX_QUEUED_PAIRS",
        "Most (query, sentence) pairs waiting or being scored at once; a request that would pass it gets 429 "
        "(one request alone is always taken). A request that the workers, at their measured rate, would not "
        "reach within RERANKER_REQUEST_TIMEOUT gets 429 at once too, with a Retry-After from that rate.",
        read_by=(BROKER,))
    max_retries: integer(0) = option(
        2, "RERANKER_MAX_RETRIES",
        "How often work lost with a dead worker is re-dispatched before its request fails.", read_by=(BROKER,))
    max_batch_pairs: integer(1) = option(
        64, "RERANKER_MAX_BATCH_PAIRS",
        "Most pairs the broker hands one worker at once: big requests are split across idle "
        "workers, small concurrent ones merged, up to this size.", read_by=(BROKER,))
    min_split_pairs: integer(1) = option(
        16, "RERANKER_MIN_SPLIT_PAIRS",
        "Fewest pairs worth a job of their own: a request is split across idle workers only in "
        "shares of at least this many pairs.", read_by=(BROKER,))
    cache_bytes: integer(0) = option(
        64 * 1024 * 1024, "RERANKER_CACHE_BYTES",
        "Memory for the broker's score cache, in bytes (0: no cache). A pair scored before, with the same "
        "query, options and worker model and mode, is answered from it with the very score computed then; "
        "the least recently used pairs are forgotten first. About 208 bytes a pair: the default holds some "
        "320,000 pairs.", read_by=(BROKER,))
    heartbeat_interval: number() = option(
        1.0, "RERANKER_HEARTBEAT_INTERVAL",
        "Seconds between heartbeats, both ways (and between a gateway process's pings to its broker).",
        read_by=(GATEWAY, BROKER, WORKER))
    heartbeat_liveness: integer(1) = option(
        3, "RERANKER_HEARTBEAT_LIVENESS", "Heartbeats missed before a peer is taken for dead.",
        read_by=(BROKER, WORKER))
    max_message_bytes: integer(1024) = option(
        64 * 1024 * 1024, "RERANKER_MAX_MESSAGE_BYTES",
        "Largest ZeroMQ frame accepted from a peer; a peer that sends more is disconnected.",
        read_by=(GATEWAY, BROKER, WORKER))
    # Worker
    broker_url: Endpoint = option(
        "tcp://127.0.0.1:5555", "RERANKER_BROKER_URL", "Where a worker connects to the broker.", read_by=(WORKER,))
    pool: Text = option(
        "reranker", "RERANKER_POOL",
        "Name of the worker pool: the broker refuses a worker that names another pool, so that a worker "
        "never joins a service it was not started for. Set the same value on the gateway and its workers.",
        read_by=(BROKER, WORKER))
    curve_worker_key: File | None = option(
        None, "RERANKER_CURVE_WORKER_KEY",
        "This worker's CURVE secret key file (`reranker keys` writes it). Set with "
        "RERANKER_CURVE_BROKER_PUBLIC_KEY, the worker speaks CURVE to the broker.",
        read_by=(WORKER,), shown="unset: CURVE off")
    curve_broker_public_key: File | None = option(
        None, "RERANKER_CURVE_BROKER_PUBLIC_KEY", "The broker's public key file (`reranker keys` writes it).",
        read_by=(WORKER,), shown="unset: CURVE off")
    model: Text = option(
        DEFAULT_MODEL, "RERANKER_MODEL", "CrossEncoder to load: a Hugging Face hub name or a local directory.",
        read_by=(WORKER,))
    backend: choice(*BACKENDS) = option(
        "auto", "RERANKER_BACKEND",
        "Scorer: auto (default: the fastest installed backend for RERANKER_PRECISION, chosen at start), torch, "
        "onnx, openvino, or stub (word overlap; tests and demos only).", read_by=(WORKER,))
    precision: choice(*PRECISIONS) = option(
        "exact", "RERANKER_PRECISION",
        "exact (default: scores equal CrossEncoder.predict's; fp32), fast (the fastest mode within the drift "
        "budget on this CPU, chosen at start), or fp32, bf16, int8.", read_by=(WORKER,))
    num_threads: integer(1) = option(
        None, "NUM_THREADS", "Torch threads per worker. Keep replicas x NUM_THREADS <= cores.", read_by=(WORKER,),
        shown="CPUs this process may use", computed=usable_cpus)
    batch_size: integer(1) = option(
        32, "RERANKER_BATCH_SIZE", "Most pairs in one forward pass inside a worker.", read_by=(WORKER,))
    batch_tokens: integer(1) = option(
        8192, "RERANKER_BATCH_TOKENS",
        "Most padded tokens in one forward pass inside a worker (pairs x longest pair). Pairs are sorted "
        "by token length and batched to cut padding, at most RERANKER_BATCH_SIZE pairs a batch.", read_by=(WORKER,))
    export_dir: Text | None = option(
        None, "RERANKER_EXPORT_DIR", "Where the onnx/openvino backends cache the model they export on first start.",
        read_by=(WORKER,), shown="~/.cache/reranker/exports")
    max_length: integer(8) | None = option(
        None, "RERANKER_MAX_LENGTH", "Tokens per pair before truncation; unset: the model's own maximum.",
        read_by=(WORKER,), shown="model's maximum")
    health_file: Text = option(
        None, "RERANKER_HEALTH_FILE",
        "File the worker rewrites every heartbeat with its state; `python -m worker.health` checks it. "
        "Unset: one file per worker process, and worker.health checks every live worker's.",
        read_by=(WORKER,), shown="$TMPDIR/reranker-worker-$PID.json",
        computed=lambda values: f"{tempfile.gettempdir()}/reranker-worker-{os.getpid()}.json")
    # Logs
    log_format: choice("text", "json") = option(
        "text", "RERANKER_LOG_FORMAT", "Log lines as text, or as JSON objects one a line.",
        read_by=(GATEWAY, BROKER, WORKER))
    log_level: choice("debug", "info", "warning", "error") = option(
        "info", "RERANKER_LOG_LEVEL", "Least severe log lines written (debug adds a line per request in the broker "
        "and per job in the worker).", read_by=(GATEWAY, BROKER, WORKER))
    stub_delay_ms: number(0.0, inclusive=True) = option(
        0.0, "RERANKER_STUB_DELAY_MS", "Stub backend only: simulated compute per pair, in ms.", read_by=(WORKER,))
    stub_char_delay_us: number(0.0, inclusive=True) = option(
        0.0, "RERANKER_STUB_CHAR_DELAY_US",
        "Stub backend only: simulated compute per character of a pair (query and sentence), in microseconds, "
        "on top of RERANKER_STUB_DELAY_MS: long texts take longer, as with a model.", read_by=(WORKER,))
    stub_fail_on: Text | None = option(
        None, "RERANKER_STUB_FAIL_ON",
        "Stub backend only: a job with a sentence containing this text fails, as a scorer that raises.",
        read_by=(WORKER,), shown="unset")

    @model_validator(mode="after")
    def _curve_keys_in_pairs(self) -> "Settings":
        for a, b in (("curve_broker_key", "curve_allowed_keys"), ("curve_worker_key", "curve_broker_public_key")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                given, missing = (a, b) if getattr(self, a) is not None else (b, a)
                fields = type(self).model_fields
                raise ValueError(f"{fields[given].validation_alias} is set but {fields[missing].validation_alias} "
                                 f"is not: CURVE needs both")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Settings(...) is built from its arguments alone; load() brings the environment, .env and argv.
        return (init_settings,)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, dotenv: str | Path | None = ".env", *,
             service: str | None = None, argv: Sequence[str] = ()) -> "Settings":
        """Settings from the command line `argv` (the options `service` reads; every option if
        None), over `environ` (default: os.environ), over the `dotenv` file (None: no file).
        `--help` in argv prints the options and exits 0. Raises SettingsError."""
        flags = command_line(service)
        try:
            flags = flags(args=list(argv))
        except _CommandLineError as exc:
            raise SettingsError(f"command line: {str(exc).removeprefix('error parsing CLI: ')}") from None
        layers: list[PydanticBaseSettingsSource] = [flags, _Variables(cls, os.environ if environ is None else environ)]
        if dotenv is not None and Path(dotenv).is_file():
            # The file's other lines (a compose .env holds more) are not ours: read only the declared ones.
            layers.append(_Variables(cls, dotenv_values(dotenv)))
        try:
            return cls(_build_sources=(tuple(layers), {}))
        except ValidationError as exc:
            raise SettingsError(_first_error(exc, layers)) from None


class _Variables(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (the environment, or a .env file's
    lines) rather than always os.environ: it takes the declared variables only."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str | None]) -> None:
        self._variables = variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._variables, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


# -- the declaration, read back --------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    name: str                   # settings.<name>
    env: str                    # its environment variable
    flag: str                   # its command-line flag
    help: str
    default: str                # as --help and the README show it
    read_by: tuple[str, ...]    # of GATEWAY, BROKER, WORKER
    form: Form


def _form(annotation: Any, metadata: list[Any]) -> Form:
    for item in metadata:
        if isinstance(item, Form):
            return item
    for arg in get_args(annotation):  # inside `X | None`
        found = [m for m in getattr(arg, "__metadata__", ()) if isinstance(m, Form)]
        if found:
            return found[0]
    raise TypeError(f"no Form in {annotation}")


def options(service: str | None = None) -> tuple[Option, ...]:
    """Every option, in declaration order; with `service`, those its parts read (SERVICES)."""
    out = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        shown = extra["shown"] or (",".join(field.default) if isinstance(field.default, tuple) else str(field.default))
        out.append(Option(name=name, env=field.validation_alias, flag="--" + name.replace("_", "-"),
                          help=field.description, default=shown, read_by=tuple(extra["read_by"]),
                          form=_form(field.annotation, field.metadata)))
    if service is None:
        return tuple(out)
    parts = set(SERVICES[service])
    return tuple(o for o in out if parts & set(o.read_by))


def command_line(service: str | None = None) -> CliSettingsSource:
    """pydantic-settings' command-line source for the options `service` reads: `--port 8400` and so on,
    with each option's variable and default in --help. Call it with args=[...] to parse."""
    wanted = {o.env: o for o in options(service)}

    def add_argument(parser: Any, *names: str, **kwargs: Any) -> Any:
        if "dest" not in kwargs:  # -h/--help
            return parser.add_argument(*names, **kwargs)
        o = wanted.get(kwargs["dest"])
        if o is None:  # read by another service: not an option here
            return None
        extra = {"action": kwargs["action"]} if "action" in kwargs else {}
        return parser.add_argument(o.flag, dest=o.env, default=SUPPRESS, metavar=o.form.metavar,
                                   help=f"{o.help} [env {o.env}, default {o.default}]".replace("%", "%%"), **extra)

    source = CliSettingsSource(Settings, cli_prog_name=_prog(), add_argument_method=add_argument,
                               formatter_class=RawDescriptionHelpFormatter)
    source.root_parser.description = (
        (ABOUT[service] + "\n\n" if service else "")
        + "Each option can also be set by its environment variable or in a .env file in the working\n"
          "directory: a flag wins over the variable, the variable over .env.")
    return source


def _prog() -> str:
    """The program's name for --help: `python -m gateway`, or what `reranker` put in argv[0]."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "reranker"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if argv0.endswith(".py") and spec is not None:  # python -m PACKAGE
        return "python -m " + spec.name.removesuffix(".__main__")
    return os.path.basename(argv0)


def _first_error(exc: ValidationError, layers: list[PydanticBaseSettingsSource]) -> str:
    """One line for the first bad value: the flag or variable that gave it, as given, and the form."""
    error = exc.errors()[0]
    key = error["loc"][0] if error["loc"] else ""  # the variable's name: load() passes values by it
    o = next((o for o in options() if o.env == key), None)
    if o is None:  # a check of several values: its own message says which
        return str(error.get("ctx", {}).get("error", error["msg"])) if not key else f"{key}: {error['msg']}"
    for layer in layers:  # the first that has it gave the value
        values = layer()
        if o.env in values:
            where = o.flag if isinstance(layer, CliSettingsSource) else o.env
            return f"{where}={values[o.env]!r} is invalid: expected {o.form.expected}"
    return f"{o.env}={error.get('input')!r} is invalid: expected {o.form.expected}"


def load_or_exit(service: str | None = None, argv: Sequence[str] | None = None, *,
                 environ: Mapping[str, str] | None = None, dotenv: str | Path | None = ".env") -> Settings:
    """For main(): Settings.load(), with the command line (default: sys.argv[1:] where a service is
    named, none otherwise); on a malformed value, exit 2 with one line naming it."""
    if argv is None:
        argv = sys.argv[1:] if service is not None else ()
    try:
        return Settings.load(environ, dotenv, service=service, argv=argv)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table() -> str:
    rows = ["| variable | flag | default | read by | meaning |", "|---|---|---|---|---|"]
    for o in options():
        rows.append(f"| `{o.env}` | `{o.flag}` | `{o.default}` | {', '.join(o.read_by)} | {o.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_table())
    else:
        print(load_or_exit(argv=sys.argv[1:]))
