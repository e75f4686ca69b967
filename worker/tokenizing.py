"""predict's tokenization of (query, text) pairs, with the `tokenizers` library alone (no transformers,
no torch: a worker that runs an exported model starts in a fraction of the time).

A Hugging Face fast tokenizer is a `tokenizers.Tokenizer` (its `tokenizer.json`) plus a few call
settings that transformers applies around it: the maximum length and the truncation strategy and side,
the padding side and pad token. `save_pair_settings` records those settings of the CrossEncoder's own
tokenizer next to its saved files; `PairTokenizer` applies them to the same `tokenizer.json`, so its
ids equal predict's (tests/test_tokenizing.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = "pair_tokenizer.json"


def plain_copy(tokenizer: Any) -> Any:
    """A `tokenizers.Tokenizer` copy of the one under a Hugging Face fast tokenizer or a PairTokenizer,
    without truncation or padding, for counting and cutting texts without touching the original's settings."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer.backend
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def pair_settings(tokenizer: Any) -> dict[str, Any]:
    """The call settings of a Hugging Face fast tokenizer, as transformers applies them to its backend."""
    return {
        "max_length": int(tokenizer.model_max_length),
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "pad_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
        "pad_type_id": tokenizer.pad_token_type_id,
    }


def save_pair_settings(tokenizer: Any, directory: Path) -> None:
    """Write `tokenizer`'s backend (tokenizer.json) and call settings into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    (directory / SETTINGS).write_text(json.dumps(pair_settings(tokenizer), indent=1))


class PairTokenizer:
    """Encodes (query, text) pairs as predict does: special tokens, longest-first truncation to
    `max_length` at `truncation_side`, padding to the longest pair at `padding_side`."""

    def __init__(self, directory: Path, outputs: list[str], max_length: int | None = None) -> None:
        from tokenizers import Tokenizer

        # One job at a time uses NUM_THREADS compute threads; tokenizer threads would only compete.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        settings = json.loads((Path(directory) / SETTINGS).read_text())
        self.backend = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self.backend.no_truncation()
        self.backend.no_padding()
        self.model_max_length = int(max_length if max_length is not None else settings["max_length"])
        self.padding_side = settings["padding_side"]
        self.truncation_side = settings["truncation_side"]
        self._pad = {"pad_id": settings["pad_id"], "pad_token": settings["pad_token"],
                     "pad_type_id": settings["pad_type_id"]}
        self.outputs = outputs

    def _encode(self, pairs: list[tuple[str, str]], truncation: bool, padding: bool) -> list:
        backend = self.backend
        if truncation:
            backend.enable_truncation(self.model_max_length, stride=0, strategy="longest_first",
                                      direction=self.truncation_side)
        if padding:
            backend.enable_padding(direction=self.padding_side, **self._pad)
        try:
            return backend.encode_batch(pairs, add_special_tokens=True)
        finally:
            backend.no_truncation()
            backend.no_padding()

    def __call__(self, pairs: list[tuple[str, str]], truncation: bool = True, padding: bool = True) -> dict[str, list]:
        """As a Hugging Face tokenizer called with these arguments: {"input_ids": [[...], ...], ...}."""
        encodings = self._encode(list(pairs), truncation, padding)
        return {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                "token_type_ids": [e.type_ids for e in encodings]}

    def encode(self, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        """int64 arrays of the model's inputs, truncated and padded to the longest pair."""
        encodings = self._encode(list(pairs), True, True)
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        return {name: np.array([getattr(e, fields[name]) for e in encodings], dtype=np.int64)
                for name in self.outputs}
