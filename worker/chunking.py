"""Chunked scoring of long texts: a text is scored by its best window of the model's length.

The text is tokenized once (with character offsets); windows of as many of its tokens as fit beside
the query in the model's max length are cut at word starts, consecutive windows sharing about
`overlap` tokens, over the first `max_tokens` tokens at most. A window goes to the scorer as the
slice of the text it covers, so it is scored in the same batched pass as every other pair, and the
text's score is its best window's (jobs.py takes the max; for raw scores, the max of the logits).

A text that fits whole is its own only window, the unchanged string: it scores exactly as without
chunking. So does every text where the query leaves no room for a window, or the scorer has no window
(the stub).
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

from shared.protocol import Chunking

from .tokenizing import plain_copy

MIN_ROOM = 16  # tokens: with less room beside the query, windows would say nothing; the text is truncated


class Chunker:
    """Cuts texts into windows with the runtime's own tokenization: a copy of the `tokenizers.Tokenizer`
    under it (a Hugging Face fast tokenizer's or a PairTokenizer's), so that no call setting of the
    runtime's is touched."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = plain_copy(tokenizer)
        self.max_length = max_length
        post = self.tokenizer.post_processor
        self.specials = post.num_special_tokens_to_add(True) if post is not None else 0

    def windows(self, query: str, texts: Sequence[str], chunking: Chunking) -> list[list[str]]:
        """Each text's windows, in order."""
        query_tokens = len(self.tokenizer.encode(query, add_special_tokens=False).ids)
        room = self.max_length - self.specials - query_tokens
        if room < MIN_ROOM or not texts:
            return [[text] for text in texts]
        out = []
        for text, encoding in zip(texts, self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            tokens = len(encoding.ids)
            limit = tokens if chunking.max_tokens is None else min(tokens, chunking.max_tokens)
            if limit == tokens and tokens <= room:
                out.append([text])
                continue
            offsets = encoding.offsets
            words = encoding.word_ids
            starts = [t for t in range(tokens) if t == 0 or words[t] is None or words[t] != words[t - 1]]
            out.append([text[offsets[a][0]:offsets[b - 1][1]] for a, b in spans(starts, limit, room, chunking.overlap)])
        return out


def spans(starts: list[int], limit: int, room: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans [a, b) covering tokens 0..limit: at most `room` tokens each, beginning and ending at
    word starts where a word fits (else at any token), each beginning about `overlap` tokens before
    the previous one ends."""
    overlap = min(overlap, room // 2)
    out = []
    a = 0
    while True:
        end = min(a + room, limit)
        if end < limit:
            # the last word start within the window ends it; a word longer than the window is cut
            k = bisect.bisect_right(starts, end) - 1
            end = starts[k] if starts[k] > a else end
        out.append((a, end))
        if end >= limit:
            return out
        k = bisect.bisect_right(starts, end - overlap) - 1
        a = starts[k] if k >= 0 and starts[k] > a else max(end - overlap, a + 1)
