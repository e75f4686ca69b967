"""What a worker does with a JOB: score each task as its options say, in one pass where they allow.

Tasks tokenized alike (the same truncation side) are scored together, so merged requests still share
batches; `raw` only changes which pairs skip the activation. A task that cannot be scored as asked
fails alone (its scores stay NaN and it is listed in the errors), so the other requests in the job
get their answers.
"""

from __future__ import annotations

import numpy as np

from shared.protocol import ErrorKind, Task

from .scorer import Scorer

Failure = tuple[int, ErrorKind, str]


def score_job(scorer: Scorer, tasks: list[Task]) -> tuple[np.ndarray, list[Failure]]:
    """The scores of every task's pairs, concatenated in task order, and the tasks that failed."""
    offsets = np.cumsum([0] + [len(t.sentences) for t in tasks])
    scores = np.full(int(offsets[-1]), np.nan, dtype=np.float32)
    failures: list[Failure] = []
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        options = task.options
        if options.chunk is not None:
            failures.append((i, ErrorKind.UNSUPPORTED, "chunked scoring is not available on this worker"))
        elif not options.truncate and any(scorer.too_long([(task.query, s) for s in task.sentences])):
            limit = scorer.info.get("max_length")
            failures.append((i, ErrorKind.TOO_LONG, f"a query and text together exceed the model's {limit} "
                                                    "tokens, and truncation is off"))
        else:
            groups.setdefault(options.truncation_side, []).append(i)
    for side, members in groups.items():
        pairs = [(tasks[i].query, s) for i in members for s in tasks[i].sentences]
        raw = [tasks[i].options.raw for i in members for _ in tasks[i].sentences]
        out = scorer.score(pairs, raw=raw if any(raw) else None, truncation_side=side)
        at = 0
        for i in members:
            n = int(offsets[i + 1] - offsets[i])
            scores[offsets[i]:offsets[i + 1]] = out[at:at + n]
            at += n
    return scores, failures
