"""Architecture configs for Stable Diffusion 1.x components, and the optimization switches.

Field names follow the diffusers / transformers ``config.json`` keys, so a diffusers-format folder's
configs map onto these dataclasses one to one (see ``from_diffusers``). Only the SD 1.x family of
block types is supported; anything else is rejected with the offending key named.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config value that this project cannot build. The message names the key."""


@dataclass(frozen=True)
class ClipTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("text_encoder.hidden_size must be a multiple of num_attention_heads")
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ConfigError(f"text_encoder.hidden_act={self.hidden_act!r} is not supported")


SD_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = SD_DOWN_BLOCKS
    up_block_types: tuple[str, ...] = SD_UP_BLOCKS
    layers_per_block: int = 2
    # diffusers' legacy name: for SD 1.x this is the number of heads (8), not the head width.
    attention_head_dim: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    transformer_layers_per_block: int = 1

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @property
    def time_proj_dim(self) -> int:
        return self.block_out_channels[0]

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError("unet.down_block_types/up_block_types must have one entry per block_out_channels")
        for i, t in enumerate(self.down_block_types):
            if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
                raise ConfigError(f"unet.down_block_types[{i}]={t!r} is not an SD 1.x block")
        for i, t in enumerate(self.up_block_types):
            if t not in ("CrossAttnUpBlock2D", "UpBlock2D"):
                raise ConfigError(f"unet.up_block_types[{i}]={t!r} is not an SD 1.x block")
        for i, c in enumerate(self.block_out_channels):
            if c % self.norm_num_groups:
                raise ConfigError(f"unet.block_out_channels[{i}]={c} is not a multiple of norm_num_groups")
            if c % self.attention_head_dim:
                raise ConfigError(f"unet.block_out_channels[{i}]={c} is not a multiple of attention_head_dim")
        if self.transformer_layers_per_block != 1:
            raise ConfigError("unet.transformer_layers_per_block must be 1 for SD 1.x")


@dataclass(frozen=True)
class VaeDecoderConfig:
    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        if len(self.up_block_types) != len(self.block_out_channels):
            raise ConfigError("vae.up_block_types must have one entry per block_out_channels")
        for i, t in enumerate(self.up_block_types):
            if t != "UpDecoderBlock2D":
                raise ConfigError(f"vae.up_block_types[{i}]={t!r} is not supported")
        for i, c in enumerate(self.block_out_channels):
            if c % self.norm_num_groups:
                raise ConfigError(f"vae.block_out_channels[{i}]={c} is not a multiple of norm_num_groups")


@dataclass(frozen=True)
class ModelConfig:
    """One SD 1.x model: its three components plus the image geometry of the default generation."""

    name: str
    text_encoder: ClipTextConfig
    unet: UNetConfig
    vae: VaeDecoderConfig
    image_size: int = 512
    cfg_batch: int = 2

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downscale

    def validate(self) -> None:
        self.text_encoder.validate()
        self.unet.validate()
        self.vae.validate()
        if self.image_size % 64:
            raise ConfigError(f"image_size={self.image_size} is not a multiple of 64")
        if self.unet.cross_attention_dim != self.text_encoder.hidden_size:
            raise ConfigError("unet.cross_attention_dim must equal text_encoder.hidden_size")
        if self.unet.in_channels != self.vae.latent_channels:
            raise ConfigError("unet.in_channels must equal vae.latent_channels")

    def with_image_size(self, size: int) -> "ModelConfig":
        cfg = dataclasses.replace(self, image_size=size)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def sd14() -> ModelConfig:
    """Stable Diffusion 1.4 / 1.5 (same architecture): CLIP ViT-L/14 text tower, 860M UNet, KL-f8 VAE."""
    return ModelConfig(name="sd14", text_encoder=ClipTextConfig(), unet=UNetConfig(), vae=VaeDecoderConfig())


def tiny() -> ModelConfig:
    """The SD 1.x architecture at toy widths: every block type present, converts in seconds."""
    return ModelConfig(
        name="tiny",
        text_encoder=ClipTextConfig(
            vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        unet=UNetConfig(
            sample_size=8,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            attention_head_dim=4,
            cross_attention_dim=32,
            norm_num_groups=8,
        ),
        vae=VaeDecoderConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
        image_size=64,
    )


MODELS = {"sd14": sd14, "tiny": tiny}


def get_model_config(name: str) -> ModelConfig:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
    cfg = factory()
    cfg.validate()
    return cfg


def _pick(cls, raw: Mapping[str, Any], where: str):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw and raw[f.name] is not None:
            v = raw[f.name]
            if isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{where}: {e}") from None


def from_diffusers(
    name: str,
    unet: Mapping[str, Any],
    vae: Mapping[str, Any],
    text_encoder: Mapping[str, Any],
    image_size: int | None = None,
) -> ModelConfig:
    """Builds a ModelConfig from the three ``config.json`` dicts of a diffusers-format folder."""
    unet = dict(unet)
    # SD 1.x configs may give attention_head_dim as a per-block list; the architecture needs one value.
    ahd = unet.get("attention_head_dim")
    if isinstance(ahd, (list, tuple)):
        if len(set(ahd)) != 1:
            raise ConfigError(f"unet/config.json: attention_head_dim={list(ahd)} varies per block (not SD 1.x)")
        unet["attention_head_dim"] = ahd[0]
    if unet.get("num_attention_heads") not in (None, unet.get("attention_head_dim")):
        raise ConfigError("unet/config.json: num_attention_heads differs from attention_head_dim (not SD 1.x)")
    for key, expected in (("use_linear_projection", False), ("time_embedding_type", "positional"),
                          ("flip_sin_to_cos", True), ("freq_shift", 0), ("mid_block_type", "UNetMidBlock2DCrossAttn")):
        if key in unet and unet[key] is not None and unet[key] != expected:
            raise ConfigError(f"unet/config.json: {key}={unet[key]!r} is not supported (expected {expected!r})")
    tlpb = unet.get("transformer_layers_per_block")
    if isinstance(tlpb, (list, tuple)):
        unet["transformer_layers_per_block"] = tlpb[0] if len(set(tlpb)) == 1 else -1
    vae = dict(vae)
    if vae.get("scaling_factor") is None:
        vae["scaling_factor"] = 0.18215
    te = dict(text_encoder)
    ucfg = _pick(UNetConfig, unet, "unet/config.json")
    vcfg = _pick(VaeDecoderConfig, vae, "vae/config.json")
    tcfg = _pick(ClipTextConfig, te, "text_encoder/config.json")
    size = image_size or ucfg.sample_size * (2 ** (len(vcfg.block_out_channels) - 1))
    cfg = ModelConfig(name=name, text_encoder=tcfg, unet=ucfg, vae=vcfg, image_size=size)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# Optimization switches ("Speed Is All You Need", Google 2023) and quantization.
# ---------------------------------------------------------------------------------------------

WINOGRAD_TILES = (2, 4, 6)
QUANTIZATIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Optimizations:
    """Every switch of the paper's ablation ladder. Each is independent of the others.

    gn_gelu: GroupNorm as one fused op (litert-torch's ``odml.group_norm`` composite) and GELU as
        one op, instead of decomposed reductions / an erf polynomial.
    softmax: partially fused softmax: row max and row sum of exponentials computed apart, the
        normalisation applied after the product with V.
    flash: FlashAttention-style tiling with online softmax for the highest-resolution UNet attention
        (head dim 40 at full size), query and key tiles of ``flash_block_q`` / ``flash_block_kv`` tokens.
    winograd_unet / winograd_decoder: Winograd F(m x m, 3 x 3) output tile m for stride-1 3x3
        convolutions of that component, or 0 for direct convolution.
    winograd_wide_levels: the deepest this many UNet levels (at full size the 1280-channel 16x16 and 8x8
        ones) take the tile ``winograd_wide`` instead of ``winograd_unet``. The Winograd-domain kernel is
        (m+2)^2/9 times the 3x3 kernel (4x for m=4): at the high-resolution levels the products are
        compute-bound and F(4,3) pays for every conv, the concatenated 960..1920-channel inputs of the up
        blocks included; at 8x8 the bigger kernel is read for a few tiles and F(2,3) is faster, and at 16x16
        F(4,3) gains 5-15% per conv for 2.25x the bytes of F(2,3). Measured per conv, batch 2, median of 5
        profiled invokes on this project's host (2026-12-06): 960 -> 320 at 64x64 88 ms F(4,3) / 132 ms F(2,3);
        1280 -> 1280 at 32x32 98 / 138 ms; 1280 -> 1280 at 16x16 35 / 39 ms; at 8x8 23 / 15 ms.
    cfg_shared_prefix: the UNet computes what precedes its first cross-attention once. With classifier-free
        guidance both batch entries carry the same latent and timestep and differ only in the text context, so
        conv_in, the first resnet and the first transformer's self-attention give the same result twice; they run
        on batch entry 0 and are broadcast to the batch after that self-attention (and at the skip connection
        that carries conv_in's output up). The model then assumes CFG inputs: ``sample`` and ``t_emb`` the same
        in every batch entry, as the run protocol feeds them; for other inputs its output is wrong. At full size
        this saves one 4096-token self-attention (QK^T, softmax and the value product: ~150 ms per step on this
        project's host) and one 320-channel resnet.
    winograd_wide: the Winograd tile of the ``winograd_wide_levels`` deepest UNet levels, 0 for direct.
        F(2,3) grows a kernel 16/9 times instead of 4 times; on XNNPACK the wide direct convs are the slowest
        per FLOP in the UNet (a 2560 -> 1280 conv at 16x16: 500 ms direct, 85 ms F(2,3) on this project's host).
    """

    gn_gelu: bool = False
    softmax: bool = False
    flash: bool = False
    flash_block_q: int = 1024
    flash_block_kv: int = 1024
    winograd_unet: int = 0
    winograd_decoder: int = 0
    winograd_wide_levels: int = 2
    winograd_wide: int = 0
    cfg_shared_prefix: bool = False

    def validate(self) -> None:
        for key in ("winograd_unet", "winograd_decoder", "winograd_wide"):
            v = getattr(self, key)
            if v not in (0,) + WINOGRAD_TILES:
                raise ConfigError(f"{key}={v} must be 0 (off) or one of {WINOGRAD_TILES}")
        for key in ("flash_block_q", "flash_block_kv"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive")
        if self.winograd_wide_levels < 0:
            raise ConfigError(f"winograd_wide_levels={self.winograd_wide_levels} must be 0 or more")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Variant:
    name: str
    opts: Optimizations = field(default_factory=Optimizations)
    quantization: str = "fp32"

    def validate(self) -> None:
        self.opts.validate()
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"unknown quantization {self.quantization!r}; choose one of: {', '.join(QUANTIZATIONS)}")


LADDER: dict[str, Optimizations] = {
    "baseline": Optimizations(),
    "+gn_gelu": Optimizations(gn_gelu=True),
    "+softmax": Optimizations(gn_gelu=True, softmax=True),
    "+flash": Optimizations(gn_gelu=True, softmax=True, flash=True),
    "+winograd": Optimizations(gn_gelu=True, softmax=True, flash=True, winograd_unet=4, winograd_decoder=4),
}
LADDER["optimized"] = LADDER["+winograd"]
# The set that runs fastest on a CPU (LiteRT's XNNPACK, measured on this project's 2-core x86 host): fused
# GroupNorm/GELU and Winograd, but neither the partially fused softmax nor the flash tiling. Those two are GPU
# optimizations; on XNNPACK the fused SOFTMAX op beats the decomposed max / exp / sum, and the tiling adds
# reshapes (full-size down_blocks.0 alone: baseline 2.10 s, optimized 2.43 s, this set 1.47 s). The two
# deepest UNet levels take F(2,3) (see ``winograd_wide_levels``).
# The UNet's CFG-shared prefix (``cfg_shared_prefix``) is not one of the paper's switches; it only removes work.
LADDER["cpu"] = Optimizations(gn_gelu=True, winograd_unet=4, winograd_decoder=4, winograd_wide=2, cfg_shared_prefix=True)
#: the paper's ablation ladder, in order (the other names are aliases or device-specific sets)
RUNGS = ("baseline", "+gn_gelu", "+softmax", "+flash", "+winograd")


def get_variant(name: str, quantization: str = "fp32", **overrides: Any) -> Variant:
    """A named variant, optionally with individual switches overridden (``winograd_unet=6`` ...)."""
    try:
        opts = LADDER[name]
    except KeyError:
        raise ConfigError(f"unknown variant {name!r}; choose one of: {', '.join(LADDER)}") from None
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(Optimizations)}
        if unknown:
            raise ConfigError(f"unknown optimization switch {sorted(unknown)[0]!r}")
        opts = dataclasses.replace(opts, **overrides)
        name = name if opts == LADDER[name] else "custom"
    v = Variant(name=name, opts=opts, quantization=quantization)
    v.validate()
    return v


COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def component_opts(component: str, opts: Optimizations) -> dict[str, Any]:
    """The switches that change a component's graph (the rest must not change its cache key)."""
    d = opts.to_dict()
    if component == "text_encoder":
        return {"softmax": d["softmax"]}
    keep = {"gn_gelu", "softmax"}
    if component == "unet":
        keep |= {"winograd_unet", "flash", "cfg_shared_prefix"} | ({"flash_block_q", "flash_block_kv"} if opts.flash else set())
        keep |= {"winograd_wide_levels", "winograd_wide"} if opts.winograd_unet else set()
    else:
        keep |= {"winograd_decoder"}
    return {k: d[k] for k in sorted(keep)}
