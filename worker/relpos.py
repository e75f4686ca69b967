"""Compute DeBERTa-v2's relative-position projections once, not on every forward pass.

transformers' `DisentangledSelfAttention.disentangled_attention_bias` projects the model's whole
relative-position table (2 x position_buckets rows, 512 for mxbai-rerank) through each layer's query
and key projections on every forward pass, whatever the batch holds: 24 GEMMs of 512 x 768 x 768 on
mxbai-rerank-base, ~14.5 GFLOP a pass, as much as ~85 tokens of real work. At inference the table
and the weights are constants, so each projection is computed the first time and then reused. It is
the same operation on the same values, so the scores are bit-identical (tests/test_relpos.py).

`memoize_relative_positions(model)` patches a model in place (after any quantization) and returns
the wrappers, whose `hits` count the reuses; on a model without this structure it does nothing.
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionMemo(nn.Module):
    """A projection that answers from memory when its input is a view of the position table.

    The table is one tensor kept alive for the model's life, so no other tensor can share its
    data pointer; a match on pointer, shape and strides is that same view of it.
    """

    def __init__(self, proj: nn.Module, table: torch.Tensor) -> None:
        super().__init__()
        self.proj = proj
        self.table = table
        self.memo: dict[tuple, torch.Tensor] = {}
        self.hits = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() != self.table.data_ptr():
            return self.proj(x)
        key = (tuple(int(d) for d in x.shape), x.stride(), x.dtype)  # ints: a tracer's sizes are tensors
        out = self.memo.get(key)
        if out is None:
            out = self.memo[key] = self.proj(x)
        else:
            self.hits += 1
        return out


def memoize_relative_positions(model: nn.Module) -> list[ProjectionMemo]:
    """Patch every DeBERTa-v2 encoder in `model` (inference only: the table is frozen)."""
    memos: list[ProjectionMemo] = []
    for encoder in model.modules():
        if not (hasattr(encoder, "get_rel_embedding") and getattr(encoder, "relative_attention", False)):
            continue
        with torch.inference_mode():
            table = encoder.get_rel_embedding()  # the LayerNorm'd table, computed once too
        encoder.get_rel_embedding = lambda table=table: table
        for attention in encoder.modules():
            if not hasattr(attention, "disentangled_attention_bias"):
                continue
            names = ("query_proj", "key_proj") if attention.share_att_key else ("pos_query_proj", "pos_key_proj")
            for name in names:
                proj = getattr(attention, name, None)
                if proj is not None and not isinstance(proj, ProjectionMemo):
                    setattr(attention, name, ProjectionMemo(proj, table))
                    memos.append(getattr(attention, name))
    return memos
