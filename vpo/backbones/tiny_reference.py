"""The ``tiny`` denoiser's forward pass as it was before the fast one (issue 20), kept as the yardstick.

Same parameters, same arithmetic, line for line the old code: three separate Q/K/V projections,
attention as two matmuls with a float32 softmax, the temporal branch transposing the fp32
residual stream, tanh-GELU. ``tests/test_tiny_forward.py`` checks that the fast forward
(``vpo/backbones/tiny.py``) gives the same velocities within a stated tolerance on the shipped
weights, and ``benchmarks/sampling.py`` times both on the same videos (``reference_forward``).
Nothing in the product calls it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from vpo.backbones.tiny import SpaceTimeTransformer, modulate


def _attention(attn, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    context = x if context is None else context
    b, n, d = x.shape
    q = attn.to_q(x).view(b, n, attn.heads, -1).transpose(1, 2)
    k = attn.to_k(context).view(b, context.shape[1], attn.heads, -1).transpose(1, 2)
    v = attn.to_v(context).view(b, context.shape[1], attn.heads, -1).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    out = logits.float().softmax(-1).to(v.dtype) @ v
    return attn.to_out(out.transpose(1, 2).reshape(b, n, d))


def _mlp(mlp, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    b, n, _ = x.shape
    t, gh, gw = grid
    h = mlp.fc1(x)
    frames = h.view(b * t, gh, gw, -1).permute(0, 3, 1, 2)
    h = h + mlp.conv(frames).permute(0, 2, 3, 1).reshape(b, n, -1)
    return mlp.fc2(F.gelu(h, approximate="tanh"))


def _block(block, x, mod, text, grid: tuple[int, int, int]):
    b, n, d = x.shape
    frames, positions = grid[0], grid[1] * grid[2]
    shift_s, scale_s, gate_s, shift_t, scale_t, gate_t, shift_m, scale_m, gate_m = (block.modulation + mod).unbind(1)
    h = modulate(block.norm_s(x), shift_s, scale_s).reshape(b * frames, positions, d)
    x = x + gate_s[:, None] * _attention(block.attn_s, h).reshape(b, n, d)
    h = modulate(block.norm_t(x), shift_t, scale_t).reshape(b, frames, positions, d).transpose(1, 2)
    h = _attention(block.attn_t, h.reshape(b * positions, frames, d)).reshape(b, positions, frames, d).transpose(1, 2)
    x = x + gate_t[:, None] * h.reshape(b, n, d)
    x = x + _attention(block.attn_c, block.norm_c(x), text)
    return x + gate_m[:, None] * _mlp(block.mlp, modulate(block.norm_m(x), shift_m, scale_m), grid)


def reference_forward(model: SpaceTimeTransformer, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor):
    """``model.forward`` as it was: (B, 3, F, H, W) -> (B, 3, F, H, W)."""
    b, c, f, h, w = x.shape
    pt, ph, pw = model.config.patch_size
    t, gh, gw = model.grid
    patches = x.reshape(b, c, t, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t * gh * gw, -1)
    tokens = model.patch_embed(patches) + model.pos
    present = (text.abs().sum(-1, keepdim=True) > 0).to(text.dtype)
    sentence = (text * present).sum(1) / present.sum(1).clamp_min(1)
    emb = model.time_embed(model.timestep_embedding(sigma)) + model.sentence_embed(sentence)
    mod = model.adaln(emb).view(b, 9, -1)
    context = model.text_proj(text)
    for block in model.blocks:
        tokens = _block(block, tokens, mod, context, model.grid)
    shift, scale = model.out_modulation(emb).chunk(2, -1)
    out = model.proj_out(modulate(model.norm_out(tokens), shift, scale))
    return out.reshape(b, t, gh, gw, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, f, h, w)


@contextlib.contextmanager
def reference(model: SpaceTimeTransformer) -> Iterator[None]:
    """Within the block, ``model(...)`` runs the old forward (so ``Backbone.sample`` samples with it)."""
    model.forward = lambda x, sigma, text, first_frame=None, extra=None: reference_forward(model, x, sigma, text)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.forward
