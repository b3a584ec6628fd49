"""CLIP text tower (ViT-L/14 for SD 1.x), parameter names as transformers' ``CLIPTextModel``.

Input: token ids [B, 77] (int32). Output: last hidden state [B, 77, hidden] after the final norm.
"""
from __future__ import annotations

import torch
from torch import nn

from models.config import ClipTextConfig, Optimizations
from models.layers import attention, merge_heads, split_heads


class ClipAttention(nn.Module):
    def __init__(self, cfg: ClipTextConfig, mode: str):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.mode = mode
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(attention(q, k, v, self.mode, mask=mask)))


class ClipMlp(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.act = cfg.hidden_act
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.act == "quick_gelu" else nn.functional.gelu(h)
        return self.fc2(h)


class ClipLayer(nn.Module):
    def __init__(self, cfg: ClipTextConfig, mode: str):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = ClipAttention(cfg, mode)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = ClipMlp(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class ClipEmbeddings(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]].unsqueeze(0)


class ClipEncoder(nn.Module):
    def __init__(self, cfg: ClipTextConfig, mode: str):
        super().__init__()
        self.layers = nn.ModuleList(ClipLayer(cfg, mode) for _ in range(cfg.num_hidden_layers))


class ClipTextTransformer(nn.Module):
    def __init__(self, cfg: ClipTextConfig, mode: str):
        super().__init__()
        self.embeddings = ClipEmbeddings(cfg)
        self.encoder = ClipEncoder(cfg, mode)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        n = cfg.max_position_embeddings
        causal = torch.full((n, n), float("-inf")).triu(1)
        # A large finite negative instead of -inf: identical softmax, and no inf in the graph.
        self.register_buffer("causal_mask", causal.clamp(min=-1e9), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids.long())
        n = ids.shape[1]
        mask = self.causal_mask[:n, :n]
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)


class ClipTextEncoder(nn.Module):
    """The text encoder component. The softmax switch applies to its attention; nothing else does."""

    def __init__(self, cfg: ClipTextConfig, opts: Optimizations = Optimizations()):
        super().__init__()
        self.config = cfg
        self.text_model = ClipTextTransformer(cfg, "partial" if opts.softmax else "softmax")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids)


def canonical_state_dict(state: dict) -> dict:
    """Text-encoder keys as SD checkpoints store them (``text_model.*``).

    transformers >= 5 saves ``CLIPTextModel`` without the ``text_model.`` prefix; older saves and
    every SD 1.x release have it. Both load; buffers that are not weights (``position_ids``) are dropped.
    """
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        out[k if k.startswith("text_model.") else "text_model." + k] = v
    return out
