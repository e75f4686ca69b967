"""DeBERTa-v2's relative attention, computed over the relative positions a batch can use (for exports).

transformers' `DisentangledSelfAttention.disentangled_attention_bias` multiplies every query (and key)
by the whole projected relative-position table, 2 x position_buckets rows (512 for mxbai-rerank),
copied once per row of the batch, then gathers the L columns each token needs. A pair of L tokens only
reaches the relative positions -(L-1)..L-1 (their buckets: the same numbers while L <= position_buckets
/ 2), so for the 20-60-token pairs of a reranking request ~90% of those products are thrown away: with
int8 projections they were ~20% of ONNX Runtime's time on mxbai-base.

`windowed_bias` computes the same values: the table's rows from the smallest to the largest position
index the batch gathers, multiplied with broadcasting instead of copies, and gathered at the shifted
indices. Each score is the same dot product as before, so results agree to float rounding
(tests/test_backends.py). `windowed(model)` patches it into a model for the duration of an export;
a model without DeBERTa-v2 attention is left alone.
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch


def windowed_bias(self, query_layer, key_layer, relative_pos, rel_embeddings, scale_factor):
    """`disentangled_attention_bias` over the window of relative positions in use (self-attention)."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position, scaled_size_sqrt

    if key_layer.size(-2) != query_layer.size(-2) or (relative_pos is not None and relative_pos.dim() == 4):
        return type(self).disentangled_attention_bias(self, query_layer, key_layer, relative_pos, rel_embeddings,
                                                      scale_factor)

    if relative_pos is None:
        relative_pos = build_relative_position(query_layer, key_layer, bucket_size=self.position_buckets,
                                               max_position=self.max_relative_positions)
    if relative_pos.dim() == 2:
        relative_pos = relative_pos.unsqueeze(0).unsqueeze(0)
    elif relative_pos.dim() == 3:
        relative_pos = relative_pos.unsqueeze(1)  # 1 x 1 x L x L: the same positions for every row and head
    relative_pos = relative_pos.to(dtype=torch.long)
    heads = self.num_attention_heads
    batch = query_layer.size(0) // heads
    att_span = self.pos_ebd_size
    rel_embeddings = rel_embeddings[0:att_span * 2, :].unsqueeze(0)
    # Each (query, key) pair's row in the table, both ways, and the rows they span.
    c2p_pos = torch.clamp(relative_pos + att_span, 0, att_span * 2 - 1).squeeze(0).squeeze(0)  # L x L
    p2c_pos = torch.clamp(-relative_pos + att_span, 0, att_span * 2 - 1).squeeze(0).squeeze(0)
    low = torch.minimum(c2p_pos.min(), p2c_pos.min())
    rows = torch.arange(low, torch.maximum(c2p_pos.max(), p2c_pos.max()) + 1, device=c2p_pos.device)

    def table(proj):  # heads x window x head_dim: the projected rows in use, shared by the whole batch
        return torch.index_select(self.transpose_for_scores(proj(rel_embeddings), heads), 1, rows)

    def by_position(layer, pos_layer):  # (batch*heads) x L x window, without copying the table per row
        out = torch.matmul(layer.view(batch, heads, layer.size(-2), layer.size(-1)),
                           pos_layer.transpose(-1, -2).unsqueeze(0))
        return out.view(batch * heads, layer.size(-2), pos_layer.size(-2))

    score = 0
    if "c2p" in self.pos_att_type:
        pos_key_layer = table(self.key_proj if self.share_att_key else self.pos_key_proj)
        scale = scaled_size_sqrt(query_layer, scale_factor)
        c2p_att = by_position(query_layer, pos_key_layer)
        c2p_att = torch.gather(c2p_att, dim=-1, index=(c2p_pos - low).expand(
            [query_layer.size(0), query_layer.size(1), relative_pos.size(-1)]))
        score += c2p_att / scale.to(dtype=c2p_att.dtype)
    if "p2c" in self.pos_att_type:
        pos_query_layer = table(self.query_proj if self.share_att_key else self.pos_query_proj)
        scale = scaled_size_sqrt(query_layer, scale_factor)
        p2c_att = by_position(key_layer, pos_query_layer)
        p2c_att = torch.gather(p2c_att, dim=-1, index=(p2c_pos - low).expand(
            [query_layer.size(0), key_layer.size(-2), key_layer.size(-2)])).transpose(-1, -2)
        score += p2c_att / scale.to(dtype=p2c_att.dtype)
    return score


def _attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "disentangled_attention_bias") and hasattr(m, "pos_ebd_size")
            and getattr(m, "relative_attention", False)]


@contextlib.contextmanager
def windowed(model: torch.nn.Module) -> Iterator[int]:
    """`model`'s DeBERTa-v2 attentions use `windowed_bias` inside the block; yields how many were patched."""
    patched = _attentions(model)
    for attention in patched:
        attention.disentangled_attention_bias = types.MethodType(windowed_bias, attention)
    try:
        yield len(patched)
    finally:
        for attention in patched:
            del attention.disentangled_attention_bias  # back to the class's method
