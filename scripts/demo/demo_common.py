"""Shared pieces of the demo scripts: corpus split, byte tokenizer, LLaMA model.

Why one module: `train_demo_model.py` and `make_thoughts.py` must agree on the
held-out split and on the model definition, and the Rust data module
(`crates/bitnet-torch/src/data/`) mirrors the split rule written here. Change
one, change the other (the Rust tests pin the rule on small inputs).

The model is a plain-PyTorch LLaMA with Hugging Face's exact parameter names,
so that the checkpoint loads into `transformers.LlamaForCausalLM` and into the
project's Rust model library without a name map.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Corpus split and tokenizer
# ---------------------------------------------------------------------------

PARAGRAPH_BREAK = b"\n\n"


def split_point(data: bytes, heldout_fraction: float) -> int:
    """Byte offset where the held-out part starts.

    Rule (mirrored by `bitnet_torch::data::corpus::split_point`):
    1. cut = floor(len * (1 - heldout_fraction)), computed in IEEE f64;
    2. the held-out part starts right after the first paragraph break
       (b"\\n\\n") found at or after `cut`, so no paragraph is cut in two;
    3. if there is none, it starts at `cut` moved forward to the next UTF-8
       character boundary (a byte that is not 0b10xxxxxx), or at len.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    n = len(data)
    cut = int(math.floor(n * (1.0 - heldout_fraction)))
    cut = min(max(cut, 0), n)
    found = data.find(PARAGRAPH_BREAK, cut)
    if found >= 0:
        return found + len(PARAGRAPH_BREAK)
    while cut < n and (data[cut] & 0xC0) == 0x80:
        cut += 1
    return cut


def split_corpus(data: bytes, heldout_fraction: float) -> tuple[bytes, bytes]:
    """(train, held-out) bytes; disjoint and together equal to `data`."""
    at = split_point(data, heldout_fraction)
    return data[:at], data[at:]


def byte_encode(data: bytes) -> torch.Tensor:
    """Byte-level tokenizer: token id = byte value (0..=255), no special tokens."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def byte_decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def heldout_windows(tokens: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed evaluation windows, mirrored by `bitnet_torch::data::heldout_windows`.

    Window k covers tokens[k*seq_len : k*seq_len + seq_len + 1]: inputs are its
    first seq_len tokens, targets the last seq_len (shifted by one). Stride is
    seq_len, so every held-out token except the first is predicted exactly
    once; the trailing partial window is dropped.
    """
    count = (tokens.numel() - 1) // seq_len
    if count == 0:
        raise ValueError(f"held-out part has {tokens.numel()} tokens, need > {seq_len}")
    idx = torch.arange(count).unsqueeze(1) * seq_len + torch.arange(seq_len + 1).unsqueeze(0)
    windows = tokens[idx]  # (N, T+1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass
class LlamaConfig:
    """Mirrors the fields of Hugging Face `LlamaConfig` that the demo uses."""

    vocab_size: int = 256
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def to_hf_dict(self) -> dict:
        d = asdict(self)
        d.update(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_act": "silu",
                "attention_bias": False,
                "attention_dropout": 0.0,
                "mlp_bias": False,
                "pretraining_tp": 1,
                "rope_scaling": None,
                "torch_dtype": "float32",
                # Byte-level vocabulary: there are no special tokens.
                "bos_token_id": None,
                "eos_token_id": None,
                "pad_token_id": None,
                "use_cache": True,
            }
        )
        return d


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As HF LlamaRMSNorm: normalise in f32, scale, cast back.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(cfg: LlamaConfig, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """HF LLaMA default RoPE: inv_freq_i = theta^(-2i/d), emb = cat(freqs, freqs)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, d)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_attention_heads * d, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_key_value_heads * d, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_key_value_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(b, t, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)  # (B, KV, T, d)
        v = self.v_proj(x).view(b, t, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)  # (B, KV, T, d)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # HF repeat_kv: query head h reads key/value head h // n_rep.
        n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
        k = k.repeat_interleave(n_rep, dim=1)  # (B, H, T, d)
        v = v.repeat_interleave(n_rep, dim=1)  # (B, H, T, d)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d)
        y = y.transpose(1, 2).reshape(b, t, cfg.num_attention_heads * cfg.head_dim)  # (B, T, H*d)
        return self.o_proj(y)


class Mlp(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = Mlp(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """State-dict keys equal HF's: model.embed_tokens.weight, model.layers.{i}..., lm_head.weight."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # HF LlamaPreTrainedModel._init_weights: N(0, initializer_range), norms at 1.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.initializer_range)

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states after `model.norm`, (B, T, C)."""
        t = ids.shape[1]
        cos, sin = rope_cos_sin(self.cfg, t, ids.device)
        x = self.model.embed_tokens(ids)  # (B, T, C)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden_states(ids))  # (B, T, V)


@torch.no_grad()
def heldout_nll(model: LlamaForCausalLM, inputs: torch.Tensor, targets: torch.Tensor, batch: int = 32) -> float:
    """Mean next-token NLL (nats) over all targets of the fixed windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, inputs.shape[0], batch):
        x, y = inputs[i : i + batch], targets[i : i + batch]
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count
