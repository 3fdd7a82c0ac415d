"""Tiny, randomly initialised diffusers pipelines of the real backbones, written to a folder with
``save_pretrained`` — the same layout a downloaded diffusers repository has — so that tests, the
GPU benchmark's ``--dry-run`` and the web tests load them exactly as real weights are loaded
(``from_pretrained(dir, local_files_only=True)``).

Sizes follow diffusers' own pipeline tests (``get_dummy_components`` of
``tests/pipelines/{wan,cogvideo,ltx}``). Those pull a tiny T5 from the hub; here the text side is
built locally: a small (U)MT5 encoder and a word-level tokenizer, nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TEXT_DIM = 32  # d_model of the tiny text encoder (= the transformers' text_dim / caption_channels)
WORDS = [
    "a",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "cyan",
    "white",
    "circle",
    "square",
    "triangle",
    "ball",
    "box",
    "moving",
    "left",
    "right",
    "up",
    "down",
    "falling",
    "bouncing",
    "growing",
    "shrinking",
    "standing",
    "still",
    "the",
    "of",
    "and",
    "dance",
    "monkey",
]


def tiny_tokenizer(max_length: int = 512):
    """A word-level tokenizer with T5's special tokens (pad = 0, eos = 1, unk = 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


def tiny_text_encoder(umt5: bool):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs: dict[str, Any] = dict(
        vocab_size=len(WORDS) + 3,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    return UMT5EncoderModel(UMT5Config(**kwargs)) if umt5 else T5EncoderModel(T5Config(**kwargs))


def _toy_wan_vae_and_transformer(**transformer_kwargs):
    """Wan's VAE and transformer at toy size (diffusers' Wan pipeline tests), each from seed 0;
    ``transformer_kwargs`` add to or replace the T2V transformer's."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    kwargs = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return vae, WanTransformer3DModel(**{**kwargs, **transformer_kwargs})


def wan_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    vae, transformer = _toy_wan_vae_and_transformer()
    return WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=tiny_text_encoder(umt5=True),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def wan_i2v_pipeline(text_tokens: int = 16):
    """Wan2.1 I2V at toy size (diffusers' ``tests/pipelines/wan/test_wan_image_to_video.py``), with
    the image branch of cross-attention switched on (``added_kv_proj_dim``, as the released I2V
    models have it) and a tokenizer of ``text_tokens`` tokens: shorter than Wan's 512, so that the
    backbone's padding to 512 is what keeps diffusers' image/text split right."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    # 36 input channels: 16 of noisy latent + 4 of mask + 16 of the first frame's latent
    vae, transformer = _toy_wan_vae_and_transformer(
        in_channels=36,
        image_dim=4,
        added_kv_proj_dim=24,  # = heads x head dim, as in the released models
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            intermediate_size=16,
            patch_size=4,
        )
    )
    image_processor = CLIPImageProcessor(crop_size=16, size=16)
    return WanImageToVideoPipeline(
        tokenizer=tiny_tokenizer(text_tokens),
        text_encoder=tiny_text_encoder(umt5=True),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        image_encoder=image_encoder,
        image_processor=image_processor,
    )


def cogvideox_pipeline():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=TEXT_DIM,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    return CogVideoXPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=tiny_text_encoder(umt5=False),
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER),
    )


# CogVideoX-2b's scheduler_config.json (the released model's)
COGVIDEOX_SCHEDULER = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=True,
    snr_shift_scale=3.0,
    steps_offset=0,
    timestep_spacing="trailing",
)


def ltx_pipeline():
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=TEXT_DIM,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=(True, True, False, False),
        layers_per_block=(1, 1, 1, 1, 1),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
        # newer diffusers size the decoder on its own: keep it as tiny as the encoder
        decoder_block_out_channels=(8, 8, 8, 8),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
    )
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    # LTX-Video's scheduler_config.json: resolution-dependent shift
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    return LTXPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=tiny_text_encoder(umt5=False),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )


BUILDERS = {"wan": wan_pipeline, "cogvideox": cogvideox_pipeline, "ltx": ltx_pipeline, "wan-i2v": wan_i2v_pipeline}
# a size each tiny pipeline supports (frames, height, width): a few frames, a few latent pixels
TINY_SIZES = {"wan": (5, 16, 16), "cogvideox": (9, 16, 16), "ltx": (9, 32, 32), "wan-i2v": (5, 16, 16)}


def save_tiny_pipeline(name: str, folder) -> Path:
    """Build the tiny ``name`` pipeline and ``save_pretrained`` it into ``folder``; returns it."""
    folder = Path(folder)
    BUILDERS[name]().save_pretrained(str(folder))
    return folder
