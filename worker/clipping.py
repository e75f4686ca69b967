"""Texts far longer than the model's window, cut before they are tokenized.

A pair over the window keeps only its first (or, truncating on the left, its last) tokens, yet the
tokenizer would first read the whole text: a 100,000-character text costs as much time and memory to
tokenize as a few hundred windows. So a text over `CHARS_PER_TOKEN` characters per token of the window
is cut to that many characters at a word boundary first, and the cut is kept only where the cut text
alone still has `MARGIN` tokens more than the window: the pair is then truncated inside it, and the
tokens it keeps, well before the cut, are those of the whole text (tests/test_clipping.py compares the
model inputs). Otherwise (a text of very long tokens) the whole text is tokenized, as before.
"""

from __future__ import annotations

from typing import Any

from .runtime import Pairs
from .tokenizing import plain_copy

CHARS_PER_TOKEN = 16  # English runs at ~4-5 characters a token: a cut text keeps ~3-4 windows' worth
MARGIN = 64  # tokens between the last one a pair can keep and the cut


class TextClipper:
    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.counter = plain_copy(tokenizer)
        self.max_length = max_length
        self.limit = max_length * CHARS_PER_TOKEN

    def clip(self, pairs: Pairs, side: str = "right") -> list[tuple[str, str]]:
        """`pairs` with each text over the limit cut, where cutting keeps its tokens in the pair."""
        out = []
        for query, text in pairs:
            if len(text) > self.limit:
                cut = cut_text(text, self.limit, side)
                if len(self.counter.encode(cut, add_special_tokens=False).ids) >= self.max_length + MARGIN:
                    text = cut
            out.append((query, text))
        return out


def cut_text(text: str, limit: int, side: str) -> str:
    """The first (side "right") or last ("left") `limit` characters of `text` or a few fewer, ending
    (or starting) at whitespace where there is some in the second half."""
    if side == "left":
        tail = text[-limit:]
        i = tail.find(" ", 0, limit // 2)
        return tail[i:] if i > 0 else tail
    head = text[:limit]
    i = head.rfind(" ", limit // 2)
    return head[:i] if i > 0 else head
