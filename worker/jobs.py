"""What a worker does with a JOB: score each task as its options say, in one pass where they allow.

Tasks tokenized alike (the same truncation side) are scored together, so merged requests still share
batches; `raw` only changes which pairs skip the activation. A chunked task's long texts become their
windows (worker/chunking.py), scored in the same pass, and each text gets its best window's score. A
task that cannot be scored as asked fails alone (its scores stay NaN and it is listed in the errors),
so the other requests in the job get their answers.
"""

from __future__ import annotations

import weakref

import numpy as np

from shared.protocol import ErrorKind, Task

from .chunking import Chunker
from .scorer import Scorer

Failure = tuple[int, ErrorKind, str]


_chunkers: "weakref.WeakKeyDictionary[object, Chunker]" = weakref.WeakKeyDictionary()


def chunker_for(scorer: Scorer) -> Chunker | None:
    """The scorer's chunker, made once per runtime: None for a scorer without a tokenizer and window
    (the stub), whose texts are always scored whole."""
    runtime = getattr(scorer, "runtime", None)
    if runtime is None or not getattr(runtime, "max_length", None):
        return None
    if runtime not in _chunkers:
        _chunkers[runtime] = Chunker(runtime.tokenizer, runtime.max_length)
    return _chunkers[runtime]


def score_job(scorer: Scorer, tasks: list[Task]) -> tuple[np.ndarray, list[Failure]]:
    """The scores of every task's pairs, concatenated in task order, and the tasks that failed."""
    offsets = np.cumsum([0] + [len(t.sentences) for t in tasks])
    scores = np.full(int(offsets[-1]), np.nan, dtype=np.float32)
    failures: list[Failure] = []
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        options = task.options
        if options.chunk is None and not options.truncate and any(
                scorer.too_long([(task.query, s) for s in task.sentences])):
            limit = scorer.info.get("max_length")
            failures.append((i, ErrorKind.TOO_LONG, f"a query and text together exceed the model's {limit} "
                                                    "tokens, and truncation is off"))
        else:
            groups.setdefault(options.truncation_side, []).append(i)
    chunker = chunker_for(scorer) if any(t.options.chunk is not None for t in tasks) else None
    for side, members in groups.items():
        pairs, raw, slots = [], [], []  # slots: the score each pair counts towards
        for i in members:
            task = tasks[i]
            if task.options.chunk is not None and chunker is not None:
                texts = chunker.windows(task.query, task.sentences, task.options.chunk)
            else:
                texts = [[s] for s in task.sentences]
            for slot, windows in enumerate(texts, start=int(offsets[i])):
                pairs += [(task.query, w) for w in windows]
                raw += [task.options.raw] * len(windows)
                slots += [slot] * len(windows)
        out = scorer.score(pairs, raw=raw if any(raw) else None, truncation_side=side)
        slots = np.asarray(slots, dtype=np.intp)
        if len(pairs) == sum(len(tasks[i].sentences) for i in members):  # one window a text: its score
            scores[slots] = out
            continue
        best = np.full(len(scores), -np.inf, dtype=np.float32)
        np.maximum.at(best, slots, out)  # a text's best window; a text scored whole, its one score
        scores[slots] = best[slots]
    return scores, failures
