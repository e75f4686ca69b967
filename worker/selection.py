"""Which mode a worker runs where its settings leave the choice open: RERANKER_BACKEND=auto,
RERANKER_PRECISION=exact or fast.

Each request names a set of modes (backend, precision):

- exact: fp32, in any backend: every one equals CrossEncoder.predict's scores within 1e-5;
- fast: every mode inside the drift budget: fp32, bf16 and int8, but torch int8 (DRIFT_RULED_OUT);
- fp32 / bf16 / int8: that precision; a named backend keeps only its own modes; auto keeps all.

Of that set, the modes this install and CPU cannot run are dropped (worker/backends: check_mode), and
the rest are ranked by RANKING for this CPU's class (worker/cpu.py: cpu_class), from measurements
written up in docs/precision.md. Then, at start:

1. cached: if choices.json in the model's export cache holds a choice for this request, model, CPU
   model and instruction sets, installed runtime versions and thread count, it is taken as it is;
2. measured: otherwise the first SHORTLIST candidates (for fast: the exact mode ranked first, which is
   also the drift reference, and the next ones) are loaded one at a time and each scores the same
   probe request (PROBE: 30 pairs of 6-23 words) once untimed, then ROUNDS times; a mode's time is its
   best round (other processes only ever add time). The rules' pick stays unless another mode is
   MARGIN faster (noise does not overturn them), and a fast candidate counts only if its scores keep
   DRIFT_BUDGET against the reference's. The result is cached, so a CPU nobody measured gets its own
   answer once;
3. ruled: where one candidate is left, or `ruled_mode` is asked (a scorer built directly), the first.

The worker's info (sent with READY) and its log say what was chosen, how, and the times measured.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib.metadata
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from shared.modes import AUTO, EXACT, FAST, MODES
from shared.settings import Settings

from .backends import check_mode, unavailable
from .cpu import cpu_class, cpu_flags, cpu_model, isa_tag
from .ranking import spearman, top_k_overlap
from .runtime import ScorerError

log = logging.getLogger("reranker.worker")

Mode = tuple[str, str]  # (backend, precision)

# Fastest first, per CPU class: the reduced precisions, then fp32 (which also joins every fast set).
# Measured with `python -m benchmarks.drift` on AVX2-only (AMD EPYC, no AVX-512) and on Zen 4
# (AVX-512 with VNNI and BF16); the other classes follow the nearest measured one.
FP32_RANKING: tuple[Mode, ...] = (("onnx", "fp32"), ("openvino", "fp32"), ("torch", "fp32"))
RANKING: dict[str, tuple[Mode, ...]] = {
    "amx": (("openvino", "int8"), ("openvino", "bf16"), ("onnx", "int8"), ("torch", "bf16")),
    "avx512-bf16": (("openvino", "int8"), ("onnx", "int8"), ("openvino", "bf16"), ("torch", "bf16")),
    "avx512-vnni": (("onnx", "int8"), ("openvino", "int8")),
    "avx512": (("onnx", "int8"), ("openvino", "int8")),
    "avx2": (("onnx", "int8"), ("openvino", "int8")),
    "baseline": (("onnx", "int8"), ("openvino", "int8")),
}
DRIFT_RULED_OUT: frozenset[Mode] = frozenset({("torch", "int8")})  # per-tensor dynamic int8: order drifts most
# Against the exact reference, on the probe: one query, so a guard against a mode that breaks the ranking
# (a single query of a mode whose mean Spearman is 0.996 can score 0.98), not a measure of 1% drift:
# `python -m benchmarks quality` measures that on real data.
DRIFT_BUDGET = {"spearman": 0.97, "top10_overlap": 0.8}
SHORTLIST = 2  # modes measured (for fast: plus the exact reference)
ROUNDS = 3  # timed probes per mode, after one untimed
MARGIN = 0.1  # how much faster than the rules' pick another mode must be measured to replace it
VERSION = 4  # of these rules and of the probe: a change invalidates cached choices
CHOICES = "choices.json"

_QUERY = "how does a search engine decide which passages answer a question best"
_SENTENCES = [
    "A reranker reads the query and one candidate passage together and returns a relevance score.",
    "The first stage retrieves a few hundred candidates quickly with an inverted index or vectors.",
    "Cross-encoders attend over both texts at once, which makes them slower but more accurate.",
    "Search results are sorted by their scores before they are shown to the user.",
    "The weather in the mountains changed quickly, and the hikers turned back before noon.",
    "Rivers carry sediment from the hills to the sea, building deltas over thousands of years.",
    "A good answer names the cause, gives the evidence, and says what remains uncertain.",
    "The library opens at nine on weekdays and closes early on public holidays.",
    "Caching repeated queries saves work, but the cache must be invalidated when documents change.",
    "Batching requests of similar length reduces the padding a model has to compute.",
    "The committee published its report after two years of hearings and public comment.",
    "Quantized models store weights in eight bits and run faster on processors with integer units.",
]
PROBE: list[tuple[str, str]] = (
    [(_QUERY, s) for s in _SENTENCES]
    + [(_QUERY, f"{s} {' '.join(_SENTENCES[(i + 5) % 12].split()[:8])}") for i, s in enumerate(_SENTENCES)]
    + [(_QUERY, " ".join(s.split()[:6])) for s in _SENTENCES[:6]])
"""The request every candidate scores: one query, 30 passages of 6-26 words (a W30 request's shape)."""


def is_open(settings: Settings) -> bool:
    """Whether the settings leave the mode to be chosen (auto backend, exact or fast precision)."""
    return settings.backend == AUTO or settings.precision in (EXACT, FAST)


def request_name(settings: Settings) -> str:
    return f"{settings.backend}/{settings.precision}"


def ranked(backend: str, precision: str, flags: set[str]) -> list[Mode]:
    """The modes that `backend`/`precision` allows, fastest first by the rules for this CPU's class,
    including those this install cannot run (`runnable` drops them)."""
    order = list(RANKING.get(cpu_class(flags), RANKING["baseline"])) + list(FP32_RANKING)
    order += [(b, p) for b, ps in MODES.items() for p in ps if (b, p) not in order]  # the rest, last
    wanted = {EXACT: ("fp32",), FAST: ("fp32", "bf16", "int8")}.get(precision, (precision,))
    out = [(b, p) for b, p in order if p in wanted and (backend == AUTO or b == backend)]
    if precision == FAST:
        out = [m for m in out if m not in DRIFT_RULED_OUT]
        out.sort(key=lambda m: m[1] == "fp32")  # reduced precisions first, each group in rule order
    return out


def runnable(modes: list[Mode], flags: set[str]) -> tuple[list[Mode], dict[Mode, str]]:
    """The modes that can run here, and why each other one cannot."""
    ok, why = [], {}
    for mode in modes:
        reason = unavailable(*mode, flags=flags)
        if reason is None:
            ok.append(mode)
        else:
            why[mode] = reason
    return ok, why


def shortlist(candidates: list[Mode], precision: str) -> list[Mode]:
    """What to measure: the first SHORTLIST candidates; for fast, the best-ranked fp32 mode (the drift
    reference) and the first SHORTLIST reduced-precision ones."""
    if precision != FAST:
        return candidates[:SHORTLIST]
    reference = next((m for m in candidates if m[1] == "fp32"), None)
    others = [m for m in candidates if m[1] != "fp32"]
    return ([reference] if reference else []) + others[:SHORTLIST]


def within_budget(reference: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    rho, top = spearman(reference, scores), top_k_overlap(reference, scores)
    return {"spearman": round(rho, 5), "top10_overlap": round(top, 3),
            "admissible": rho >= DRIFT_BUDGET["spearman"] and top >= DRIFT_BUDGET["top10_overlap"]}


def name(mode: Mode) -> str:
    return f"{mode[0]} {mode[1]}"


@dataclass
class Choice:
    mode: Mode
    how: str                     # "settings", "rule", "cached" or "measured"
    why: str                     # one line for the log and /info
    measured: dict[str, dict] = field(default_factory=dict)  # mode name -> {median_s, spearman, ...}

    def info(self, settings: Settings) -> dict[str, Any]:
        return {"requested": request_name(settings), "chosen_by": self.how, "choice": self.why,
                **({"measured": self.measured} if self.measured else {})}


def pick(measured: dict[str, dict], precision: str, preferred: str | None = None) -> str | None:
    """The fastest measured mode (a fast one only inside the drift budget), by name; `preferred` (the
    rules' pick) unless the fastest beats it by MARGIN."""
    allowed = {n: m["best_s"] for n, m in measured.items()
               if "best_s" in m and (precision != FAST or m.get("admissible", True))}
    if not allowed:
        return None
    fastest = min(allowed, key=allowed.get)
    if preferred in allowed and allowed[fastest] * (1 + MARGIN) >= allowed[preferred]:
        return preferred
    return fastest


# -- the cache of choices -----------------------------------------------------------------------------

def cache_key(settings: Settings, flags: set[str]) -> str:
    versions = []
    for package in ("onnxruntime", "openvino", "nncf", "torch"):
        try:
            versions.append(f"{package}={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package}=-")
    return " | ".join([request_name(settings), f"threads={settings.num_threads}", f"batch={settings.batch_size}/"
                       f"{settings.batch_tokens}", cpu_model(), isa_tag(flags), *versions, f"rules={VERSION}"])


class ChoiceCache:
    """choices.json in a model's export cache: {key: {"mode", "why", "measured", "at"}}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / CHOICES

    @contextlib.contextmanager
    def choosing(self) -> Iterator[None]:
        """One worker measures at a time (workers started together would disturb each other's timings;
        the others then find the choice cached). Without a writable cache, no lock."""
        from .backends.export import locked

        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locked(self.root, ".choosing.lock"))
            except OSError as exc:
                log.warning("cannot lock %s (%s): measuring without it", self.root, exc)
            yield

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self.path.read_text()).get(key)
        except (OSError, ValueError):
            return None

    def put(self, key: str, entry: dict) -> None:
        try:
            try:
                choices = json.loads(self.path.read_text())
            except (OSError, ValueError):
                choices = {}
            choices[key] = entry
            tmp = self.path.with_name(f"{CHOICES}.tmp")
            tmp.write_text(json.dumps(choices, indent=1))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("could not cache the mode choice in %s (%s); the next start measures again", self.path, exc)


# -- choosing ------------------------------------------------------------------------------------------

def ruled_mode(settings: Settings, flags: set[str] | None = None) -> Settings:
    """`settings` with the mode the rules rank first (no measuring); concrete settings as they are."""
    if not is_open(settings):
        return settings
    flags = cpu_flags() if flags is None else flags
    candidates, why_not = runnable(ranked(settings.backend, settings.precision, flags), flags)
    if not candidates:
        raise ScorerError(next(iter(why_not.values()), f"no mode fits {request_name(settings)}"))
    backend, precision = candidates[0]
    return settings.model_copy(update={"backend": backend, "precision": precision})


def check_fits(settings: Settings, flags: set[str] | None = None) -> None:
    """Raise ScorerError (one line, naming the variable) unless a mode that `settings` allow can run
    here: checked before the model is fetched, so that a wrong mode costs no download."""
    if is_open(settings):
        ruled_mode(settings, flags)
    else:
        check_mode(settings.backend, settings.precision, flags)


def choose_scorer(settings: Settings, build: Callable[[Settings], Any], flags: set[str] | None = None,
                  cache: ChoiceCache | None = None, probe: list[tuple[str, str]] = PROBE):
    """The scorer for `settings`: as given, or the mode chosen for them (module docstring). `build`
    makes a scorer for concrete settings (CrossEncoderScorer)."""
    if not is_open(settings):
        scorer = build(settings)
        scorer.info.update(Choice((settings.backend, settings.precision), "settings", "as configured").info(settings))
        return scorer
    flags = cpu_flags() if flags is None else flags
    candidates, why_not = runnable(ranked(settings.backend, settings.precision, flags), flags)
    if not candidates:
        raise ScorerError(next(iter(why_not.values()), f"no mode fits {request_name(settings)}"))
    concrete = lambda mode: settings.model_copy(update={"backend": mode[0], "precision": mode[1]})  # noqa: E731
    if len(candidates) == 1:
        choice = Choice(candidates[0], "rule", f"the only mode for {request_name(settings)} that this install "
                        "can run here")
        return _settle(settings, choice, build(concrete(candidates[0])))
    if cache is None:
        from .backends.export import export_root

        cache = ChoiceCache(export_root(settings.model, settings.export_dir))
    key = cache_key(settings, flags)
    with cache.choosing():
        entry = cache.get(key)
        if entry is not None and tuple(entry["mode"]) in candidates:
            choice = Choice(tuple(entry["mode"]), "cached", f"{entry['why']} (measured {entry['at']}, cached in "
                            f"{cache.path})", entry.get("measured", {}))
            return _settle(settings, choice, build(concrete(choice.mode)))
        choice, scorer = _measure(settings, shortlist(candidates, settings.precision), build, concrete, probe)
        cache.put(key, {"mode": list(choice.mode), "why": choice.why, "measured": choice.measured,
                        "at": datetime.datetime.now().isoformat(timespec="seconds")})
    return _settle(settings, choice, scorer)


def _settle(settings: Settings, choice: Choice, scorer):
    scorer.info.update(choice.info(settings))
    log.info("RERANKER_BACKEND=%s RERANKER_PRECISION=%s: %s (%s)", settings.backend, settings.precision,
             name(choice.mode), choice.why)
    return scorer


def _measure(settings: Settings, modes: list[Mode], build, concrete, probe) -> tuple[Choice, Any]:
    """Time each mode on the probe, one loaded at a time (a first start also exports each: memory), and
    return the winner loaded."""
    measured: dict[str, dict] = {}
    reference: np.ndarray | None = None
    kept = None
    log.info("choosing a mode for %s on this CPU: measuring %s on a %d-pair probe (once; the result is cached)",
             request_name(settings), ", ".join(name(m) for m in modes), len(probe))
    for mode in modes:
        started = time.perf_counter()
        try:
            scorer = build(concrete(mode))
        except ScorerError as exc:
            measured[name(mode)] = {"error": str(exc)}
            log.warning("%s cannot be used: %s", name(mode), exc)
            continue
        load_s = time.perf_counter() - started
        scores = scorer.score(probe)  # also the warm-up
        times = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            scorer.score(probe)
            times.append(time.perf_counter() - t)
        row: dict[str, Any] = {"best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4),
                               "load_s": round(load_s, 2)}
        if settings.precision == FAST:
            if reference is None and mode[1] == "fp32":
                reference = scores
            if reference is not None:
                row.update(within_budget(reference, scores))
            else:
                row["admissible"] = False  # no exact reference to check its drift against
        measured[name(mode)] = row
        kept = (mode, scorer) if mode == modes[-1] else None  # the last one stays loaded, in case it won
        del scorer
        gc.collect()
    ruled = [m for m in modes if m[1] != "fp32"] if settings.precision == FAST else modes
    preferred = name(ruled[0]) if ruled else None
    winner = pick(measured, settings.precision, preferred)
    if winner is None:
        raise ScorerError(f"no mode for {request_name(settings)} could be loaded: "
                          + "; ".join(f"{n}: {m.get('error')}" for n, m in measured.items()))
    best = next(m for m in modes if name(m) == winner)
    times = ", ".join(f"{n} {m['best_s']:.3f} s" + ("" if m.get("admissible", True) else " (over the drift budget)")
                      for n, m in measured.items() if "best_s" in m)
    how = "the rules' pick" if winner == preferred else "the fastest that qualified"
    scorer = kept[1] if kept and kept[0] == best else build(concrete(best))  # a warm load: its files are made
    return Choice(best, "measured", f"{how} on the probe ({times})", measured), scorer
