"""Export a CrossEncoder once, cache the result, and load what the exported runtimes need.

The cache for one model is a directory (`export_root`):

    meta.json          source fingerprint, activation, input names
    tokenizer/         the CrossEncoder's tokenizer as sentence-transformers set it up (max length, casing),
                       and its call settings for worker/tokenizing.py
    onnx/...           the ONNX graphs and, per CPU and ONNX Runtime version, their optimized forms
    openvino/...       the OpenVINO IRs and, per CPU, OpenVINO's compiled-model cache
    torch/...          the model traced (TorchScript) in each precision
    choices.json       the modes chosen for RERANKER_PRECISION=exact/fast on each CPU (worker/selection.py)

Each file is made on first need (11-16 s for mxbai-base) under a file lock, so that workers starting
together export once, and written under a temporary name then renamed, so that a killed export leaves
nothing half-written. When the source model changes (local directory: file sizes and times) the cache is
rebuilt. Once everything a mode needs is there, loading it imports neither sentence-transformers nor
transformers (nor torch, but for the torch backend).

sentence-transformers' own ONNX/OpenVINO backends need optimum-onnx (transformers < 4.58) or
optimum-intel (transformers < 5.6), which cannot coexist with sentence-transformers 6.x / transformers
5.2x, so the export is done here with torch.onnx / openvino.convert_model / torch.jit.trace directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..activations import ACTIVATIONS
from ..loading import load_cross_encoder, load_failure
from ..runtime import ScorerError
from ..tokenizing import SETTINGS, PairTokenizer, pair_settings, save_pair_settings

if TYPE_CHECKING:
    from shared.settings import Settings

FORMAT = 2  # 2: graphs traced with DeBERTa's windowed relative attention (worker/backends/deberta.py)
META = "meta.json"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reranker" / "exports"


def export_root(model: str, export_dir: str | os.PathLike | None = None) -> Path:
    """Where the exports of `model` live: <export_dir or ~/.cache/reranker/exports>/<name>-<hash>."""
    base = Path(export_dir) if export_dir else default_cache()
    ident = os.path.abspath(model) if os.path.isdir(model) else model
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", ident.rstrip("/").split("/")[-1])[:60] or "model"
    return base / f"{name}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


def fingerprint(model: str) -> dict[str, Any]:
    """What identifies the source: a local directory's top-level files (name, size, mtime), or a hub id."""
    if os.path.isdir(model):
        files = sorted((e.name, e.stat().st_size, int(e.stat().st_mtime))
                       for e in os.scandir(model) if e.is_file())
        return {"path": os.path.abspath(model), "files": files}
    return {"hub": model}


@contextlib.contextmanager
def locked(root: Path, name: str = ".lock") -> Iterator[None]:
    """Holds an exclusive lock on root/name (one per name: a process may hold two different ones)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Export:
    """One model's export cache; `artifact(name, build)` returns the file, building it if missing."""

    def __init__(self, model: str, root: Path) -> None:
        self.model = model
        self.root = Path(root)
        self._source = None  # the torch CrossEncoder, loaded only if something must be exported
        with locked(self.root):
            meta = self._read_meta()
            want = json.loads(json.dumps({"format": FORMAT, "source": fingerprint(model)}))  # tuples -> lists
            if meta is None or {k: meta.get(k) for k in want} != want:
                self._reset()
                meta = self._write_meta(want)
        self.meta = meta

    # -- meta and reset --------------------------------------------------------------------------------

    def _read_meta(self) -> dict | None:
        try:
            return json.loads((self.root / META).read_text())
        except (OSError, ValueError):
            return None

    def _reset(self) -> None:
        for entry in self.root.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".lock"):
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def _write_meta(self, want: dict) -> dict:
        ce = self.source()
        hf = ce[0].auto_model
        tokenizer = ce[0].tokenizer
        tmp = self.root / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(str(tmp))
        save_pair_settings(tokenizer, tmp)
        os.replace(tmp, self.root / "tokenizer")
        from sentence_transformers.util import fullname

        probe = tokenizer([("a", "b")])
        inputs = ["input_ids", "attention_mask"]
        if "token_type_ids" in probe and getattr(hf.config, "type_vocab_size", 1) > 0:
            inputs.append("token_type_ids")  # DeBERTa-v3 (type_vocab_size 0) ignores it, so it is left out
        meta = {**want, "activation": fullname(ce.activation_fn), "num_labels": ce.num_labels, "inputs": inputs,
                "padding_side": getattr(tokenizer, "padding_side", "right")}
        tmp_meta = self.root / (META + ".tmp")
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, self.root / META)
        return meta

    # -- the source model, for exporting ---------------------------------------------------------------

    def source(self):
        if self._source is None:
            self._source = load_cross_encoder(self.model, None)
        return self._source

    @contextlib.contextmanager
    def wrapper(self, hf: Any = None) -> Iterator[Any]:
        """The inner HF model (or `hf`, a converted copy of it) as a module to trace: named input tensors in,
        logits out; DeBERTa-v2's relative attention over the positions in use (worker/backends/deberta.py)
        while it is open."""
        import torch

        from .deberta import windowed

        hf = (self.source()[0].auto_model if hf is None else hf).eval()
        names = self.meta["inputs"]

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.hf = hf

            def forward(self, *tensors):
                return self.hf(**dict(zip(names, tensors))).logits

        with windowed(hf):
            yield Logits().eval()

    def example(self) -> dict[str, Any]:
        """Two padded pairs of different lengths, to trace the graph with a masked row."""
        tokenizer = self.source()[0].tokenizer
        batch = tokenizer([("what is a reranker", "a model that orders passages by relevance to a query"),
                           ("short", "text")], padding=True, truncation="longest_first", return_tensors="pt")
        return {name: batch[name] for name in self.meta["inputs"]}

    # -- artifacts -------------------------------------------------------------------------------------

    def artifact(self, relpath: str, build: Callable[[Path], None]) -> Path:
        """`root/relpath`, made by build(tmp_path) under the lock if it is not there yet."""
        target = self.root / relpath
        if target.is_file():
            return target
        with locked(self.root):
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f"tmp-{os.getpid()}-{target.name}")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer and deprecation warnings: expected, harmless
                    build(tmp)
                for side in _companions(tmp):  # e.g. OpenVINO's .bin next to the .xml
                    os.replace(side, target.with_suffix(side.suffix))
                os.replace(tmp, target)
        return target

    def folder(self, relpath: str, build: Callable[[Path], None]) -> Path:
        """The directory `root/relpath`, filled by build(tmp_dir) under the lock if it is not there yet:
        for files that name each other (a graph and its weights file), made whole or not at all."""
        target = self.root / relpath
        if target.is_dir():
            return target
        with locked(self.root):
            if not target.is_dir():
                tmp = target.with_name(f"tmp-{os.getpid()}-{target.name}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    build(tmp)
                os.replace(tmp, target)
        return target

    def release_source(self) -> None:
        """Drop the torch model once exports are done (it is ~4 bytes a parameter)."""
        self._source = None


def _companions(tmp: Path) -> list[Path]:
    return [p for p in tmp.parent.glob(tmp.stem + ".*") if p != tmp]


class Exported:
    """Tokenizer and activation for an exported model, set up exactly as the CrossEncoder had them,
    with neither torch nor transformers (worker/tokenizing.py, worker/activations.py).

    The runtime that extends it sets `path`, the exported file it runs.
    """

    path: Path

    def __init__(self, export: Export, max_length: int | None) -> None:
        meta = export.meta
        directory = export.root / "tokenizer"
        # Caches written before the call settings were recorded get them now (this once, with transformers).
        export.artifact(f"tokenizer/{SETTINGS}", lambda tmp: _write_pair_settings(directory, tmp))
        self.inputs = meta["inputs"]
        self.tokenizer = PairTokenizer(directory, self.inputs, max_length)
        self.max_length = self.tokenizer.model_max_length
        self.padding_side = meta.get("padding_side", "right")
        self.num_labels = meta.get("num_labels", 1)
        self.activation = ACTIVATIONS.get(meta["activation"]) or self.other_activation(meta["activation"])

    def other_activation(self, path: str) -> Callable[[Any], Any]:
        """An activation_fn that worker/activations.py does not have (the torch backend runs it in torch)."""
        raise ScorerError(f"RERANKER_MODEL's activation {path} is not one of {', '.join(ACTIVATIONS)}; "
                          "use RERANKER_BACKEND=torch for this model")

    @property
    def info(self) -> dict[str, Any]:
        return {"export": str(self.path)}

    def tokenize(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        return self.tokenizer.encode(pairs)  # what sentence-transformers' Transformer.preprocess does for pairs


def _write_pair_settings(directory: Path, tmp: Path) -> None:
    from transformers import AutoTokenizer

    tmp.write_text(json.dumps(pair_settings(AutoTokenizer.from_pretrained(str(directory))), indent=1))


def load_exported(runtime: Callable[..., Exported], settings: Settings) -> Exported:
    """`runtime` on the model's export cache; an export or load failure becomes one line with its cause."""
    root = export_root(settings.model, settings.export_dir)
    try:
        return runtime(settings.model, root, settings.precision, settings.num_threads, settings.max_length)
    except ScorerError:
        raise
    except Exception as exc:  # noqa: BLE001 - export/load failures: one line, with the cause
        raise load_failure(settings.model, exc) from exc
