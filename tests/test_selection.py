"""worker.selection: how RERANKER_BACKEND=auto and RERANKER_PRECISION=exact|fast become one mode.

The rules are checked on given CPU flags, the measuring on fake scorers whose speed and drift are set by
the test (no timing of real code is asserted), and the cache on a temporary directory.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from shared.settings import Settings
from worker import selection
from worker.runtime import ScorerError
from worker.selection import ChoiceCache, choose_scorer, pick, ranked, ruled_mode, shortlist

AVX2 = {"fma", "avx", "avx2"}
ZEN4 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
SAPPHIRE = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.fixture(autouse=True)
def everything_installed(monkeypatch):
    """Every backend counts as installed; bf16 still needs the CPU flags (as in worker.backends)."""
    monkeypatch.setattr("worker.backends._missing_modules", lambda backend, precision: [])


def test_exact_means_fp32_onnx_first_then_openvino_then_torch():
    for flags in (AVX2, ZEN4, set()):
        assert ranked("auto", "exact", flags) == [("onnx", "fp32"), ("openvino", "fp32"), ("torch", "fp32")]
    assert ranked("openvino", "exact", AVX2) == [("openvino", "fp32")]


def test_fast_follows_the_measured_winners_of_each_cpu_class():
    assert ranked("auto", "fast", AVX2)[:2] == [("onnx", "int8"), ("openvino", "int8")]
    assert ranked("auto", "fast", ZEN4)[:3] == [("openvino", "int8"), ("onnx", "int8"), ("openvino", "bf16")]
    assert ranked("auto", "fast", SAPPHIRE)[0] == ("openvino", "int8")
    for flags in (AVX2, ZEN4):
        fast = ranked("auto", "fast", flags)
        assert ("torch", "int8") not in fast  # outside the drift budget
        assert [m for m in fast if m[1] == "fp32"] == fast[-3:]  # exact modes last: fast may still pick them
    assert ranked("torch", "fast", ZEN4) == [("torch", "bf16"), ("torch", "fp32")]
    assert ranked("auto", "int8", AVX2) == [("onnx", "int8"), ("openvino", "int8"), ("torch", "int8")]


def test_bf16_modes_drop_out_where_the_cpu_lacks_bf16():
    ok, why = selection.runnable(ranked("auto", "fast", AVX2), AVX2)
    assert ("openvino", "bf16") not in ok and ("torch", "bf16") not in ok
    assert "AVX512-BF16" in why[("openvino", "bf16")]
    ok, _ = selection.runnable(ranked("auto", "fast", ZEN4), ZEN4)
    assert ("openvino", "bf16") in ok


def test_shortlist_of_fast_starts_with_the_exact_reference():
    candidates, _ = selection.runnable(ranked("auto", "fast", AVX2), AVX2)
    assert shortlist(candidates, "fast") == [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "int8")]
    assert shortlist(ranked("auto", "exact", AVX2), "exact") == [("onnx", "fp32"), ("openvino", "fp32")]


def test_pick_takes_the_fastest_inside_the_budget():
    measured = {"onnx fp32": {"best_s": 1.0, "admissible": True},
                "onnx int8": {"best_s": 0.5, "admissible": False},
                "openvino int8": {"best_s": 0.7, "admissible": True},
                "torch bf16": {"error": "cannot load"}}
    assert pick(measured, "fast") == "openvino int8"
    assert pick(measured, "fast", preferred="onnx int8") == "openvino int8"  # the rules' pick drifts too much
    assert pick(measured, "int8") == "onnx int8"  # an explicit precision has no budget
    assert pick({"torch bf16": {"error": "x"}}, "fast") is None


def test_the_rules_pick_stands_unless_beaten_by_the_margin():
    measured = {"onnx fp32": {"best_s": 1.0}, "openvino fp32": {"best_s": 0.95}}
    assert pick(measured, "exact", preferred="onnx fp32") == "onnx fp32"  # 5% faster: noise
    measured["openvino fp32"]["best_s"] = 0.85
    assert pick(measured, "exact", preferred="onnx fp32") == "openvino fp32"


def test_ruled_mode_settles_open_settings_without_measuring():
    settings = Settings(model="m", precision="fast")
    assert (ruled_mode(settings, AVX2).backend, ruled_mode(settings, AVX2).precision) == ("onnx", "int8")
    exact = ruled_mode(Settings(model="m"), ZEN4)
    assert (exact.backend, exact.precision) == ("onnx", "fp32")
    given = Settings(model="m", backend="torch", precision="int8")
    assert ruled_mode(given, AVX2) is given


def test_nothing_runnable_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setattr("worker.backends._missing_modules", lambda backend, precision: ["x"] if backend != "torch" else [])
    with pytest.raises(ScorerError, match="RERANKER_PRECISION=bf16 needs a CPU"):
        ruled_mode(Settings(model="m", precision="bf16"), AVX2)


# -- measuring, on fake scorers --------------------------------------------------------------------------

class Fake:
    """A scorer whose time per call and scores the test sets: (seconds, noise added to the reference)."""

    def __init__(self, settings: Settings, behaviour: dict, built: list) -> None:
        self.mode = (settings.backend, settings.precision)
        built.append(self.mode)
        self.delay, self.noise = behaviour[self.mode]
        self.info = {"backend": settings.backend, "precision": settings.precision}

    def score(self, pairs):
        time.sleep(self.delay)
        base = np.linspace(0, 1, len(pairs))
        return base + self.noise * np.cos(np.arange(len(pairs)) * 7.0)


def chooser(behaviour, built, tmp_path, flags=AVX2):
    cache = ChoiceCache(tmp_path)
    return lambda settings: choose_scorer(settings, lambda s: Fake(s, behaviour, built), flags=flags, cache=cache,
                                          probe=[("q", f"s{i}") for i in range(12)])


BEHAVIOUR = {("onnx", "fp32"): (0.004, 0.0), ("onnx", "int8"): (0.001, 0.5),   # fastest, but drifts
             ("openvino", "int8"): (0.002, 0.001), ("openvino", "fp32"): (0.008, 0.0),
             ("torch", "fp32"): (0.02, 0.0)}


def test_fast_measures_once_then_takes_the_cached_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "ROUNDS", 2)
    built: list = []
    choose = chooser(BEHAVIOUR, built, tmp_path)
    scorer = choose(Settings(model="m", precision="fast", num_threads=2))
    assert scorer.mode == ("openvino", "int8")  # onnx int8 is faster but outside the drift budget
    assert built == [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "int8")]
    assert scorer.info["chosen_by"] == "measured" and scorer.info["requested"] == "auto/fast"
    assert scorer.info["measured"]["onnx int8"]["admissible"] is False
    assert "openvino int8" in scorer.info["choice"]

    built.clear()
    again = choose(Settings(model="m", precision="fast", num_threads=2))
    assert again.mode == ("openvino", "int8") and built == [("openvino", "int8")]  # loaded, nothing measured
    assert again.info["chosen_by"] == "cached" and str(tmp_path / "choices.json") in again.info["choice"]

    built.clear()
    choose(Settings(model="m", precision="fast", num_threads=1))  # another thread count: measured anew
    assert len(built) == 3


def test_exact_picks_the_fastest_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "ROUNDS", 1)
    built: list = []
    scorer = chooser(BEHAVIOUR, built, tmp_path)(Settings(model="m"))
    assert scorer.mode == ("onnx", "fp32")
    # one loaded at a time: the winner, measured first, is loaded again at the end
    assert built == [("onnx", "fp32"), ("openvino", "fp32"), ("onnx", "fp32")]


def test_given_modes_and_single_candidates_are_not_measured(tmp_path):
    built: list = []
    choose = chooser(BEHAVIOUR, built, tmp_path)
    scorer = choose(Settings(model="m", backend="onnx", precision="int8"))
    assert built == [("onnx", "int8")] and scorer.info["chosen_by"] == "settings"
    built.clear()
    scorer = choose(Settings(model="m", backend="torch"))  # torch + exact: fp32 is the only mode
    assert built == [("torch", "fp32")] and scorer.info["chosen_by"] == "rule"
    assert not (tmp_path / "choices.json").exists()


def test_a_mode_that_fails_to_load_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "ROUNDS", 1)
    built: list = []

    def build(settings):
        if settings.backend == "openvino":
            raise ScorerError("RERANKER_BACKEND=openvino: broken export")
        return Fake(settings, BEHAVIOUR, built)

    scorer = choose_scorer(Settings(model="m", precision="fast"), build, flags=AVX2, cache=ChoiceCache(tmp_path),
                           probe=[("q", f"s{i}") for i in range(12)])
    assert scorer.mode == ("onnx", "fp32")
    assert "broken export" in scorer.info["measured"]["openvino int8"]["error"]


def test_an_unwritable_cache_still_chooses(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "ROUNDS", 1)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    built: list = []
    scorer = choose_scorer(Settings(model="m"), lambda s: Fake(s, BEHAVIOUR, built), flags=AVX2,
                           cache=ChoiceCache(blocked / "sub"), probe=[("q", "s")] * 4)
    assert scorer.mode == ("onnx", "fp32")
