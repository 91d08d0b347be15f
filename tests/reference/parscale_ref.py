"""PyTorch (float64) reference of the upstream ParScale / Qwen2 forward semantics.

Two independent formulations live here so the reference can check itself:
  * `forward_batched`: batched over streams (row = s*B + b), KV cache initialised with the learned
    prefix, mirrors the upstream control flow (prefix queries prepended during multi-token prefill).
  * `forward_plain`: one sequence, one stream at a time, per-head loops, RoPE written as explicit
    pair rotations, aggregation written per position. For P = 1 this is a plain Qwen2 forward.

All arithmetic is float64; weights come in as float64 tensors holding the stored (rounded) values.
"""
import math
from dataclasses import dataclass

import torch

F64 = torch.float64


@dataclass
class RefConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    parscale_n: int
    parscale_n_tokens: int
    parscale_attn_smooth: float
    attention_bias: bool = True  # q/k/v projections carry biases (Qwen2 always; Qwen3 if attention_bias)
    qk_norm: bool = False        # Qwen3: per-head RMSNorm of q and k after the projection, before RoPE


def parse_config(d: dict) -> RefConfig:
    """Interpret an HF config.json dict the way upstream does (class defaults for absent fields)."""
    heads = d["num_attention_heads"]
    kv = d.get("num_key_value_heads", heads)
    if kv is None:  # upstream: None means multi-head attention
        kv = heads
    assert d.get("hidden_act", "silu") == "silu"
    assert d.get("rope_scaling") is None
    qwen3 = d.get("model_type") in ("qwen3", "qwen3_parscale")
    if d.get("model_type") in ("qwen2_parscale", "qwen3_parscale"):
        p = d.get("parscale_n", 1)
        t = d.get("parscale_n_tokens", 48)
        smooth = d.get("parscale_attn_smooth", 0.01)
    else:
        p, t, smooth = 1, 0, 0.0
    return RefConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
        num_heads=heads, num_kv_heads=kv,
        # Qwen3's config class defaults head_dim to 128; Qwen2 derives it from hidden/heads.
        head_dim=(d.get("head_dim") or 128) if qwen3 else d["hidden_size"] // heads,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(d.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        parscale_n=p, parscale_n_tokens=t if p > 1 else 0, parscale_attn_smooth=float(smooth),
        attention_bias=bool(d.get("attention_bias", False)) if qwen3 else True, qk_norm=qwen3)


def lm_head_weight(cfg: RefConfig, w: dict) -> torch.Tensor:
    if "lm_head.weight" in w:
        return w["lm_head.weight"]
    assert cfg.tie_word_embeddings, "lm_head.weight absent but tie_word_embeddings is false"
    return w["model.embed_tokens.weight"]


def rms_norm(x, weight, eps):
    # x: [..., H]; normalise over the last dim then scale.
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def proj(cfg: RefConfig, w: dict, pre: str, name: str, h):
    """h @ W^T (+ bias when the model has attention biases) for self_attn.{name}_proj."""
    out = h @ w[pre + f"self_attn.{name}_proj.weight"].T
    if cfg.attention_bias:
        out = out + w[pre + f"self_attn.{name}_proj.bias"]
    return out


def rope_cos_sin(cfg: RefConfig, positions: torch.Tensor):
    """positions [L] -> cos, sin [L, D] with emb = cat(freqs, freqs)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=F64) / d))  # [D/2]
    freqs = positions.to(F64)[:, None] * inv_freq[None, :]  # [L, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def repeat_kv(x, n_rep):
    # [N, kvh, S, D] -> [N, kvh*n_rep, S, D]; query head h uses kv head h // n_rep.
    if n_rep == 1:
        return x
    n, kvh, s, d = x.shape
    return x[:, :, None].expand(n, kvh, n_rep, s, d).reshape(n, kvh * n_rep, s, d)


def aggregate_streams(cfg: RefConfig, w: dict, streams: torch.Tensor):
    """streams [P, B, L, H] (final-normed) -> (mixed [B, L, H], stream weights [B, L, P])."""
    p = cfg.parscale_n
    _, b, l, h = streams.shape
    feats = streams.permute(1, 2, 3, 0).reshape(b, l, h * p)  # feature index = h*P + s
    hid = torch.nn.functional.silu(feats @ w["model.aggregate_layer.0.weight"].T + w["model.aggregate_layer.0.bias"])
    scores = hid @ w["model.aggregate_layer.2.weight"].T + w["model.aggregate_layer.2.bias"]  # [B, L, P]
    weights = torch.softmax(scores, dim=-1)
    if cfg.parscale_attn_smooth != 0.0:
        weights = weights * (1.0 - cfg.parscale_attn_smooth) + cfg.parscale_attn_smooth / p
    mixed = (streams.permute(1, 2, 0, 3) * weights[..., None]).sum(dim=2)
    return mixed, weights


class KVCache:
    """Per layer K/V of shape [P*B, kvh, S, D]; the first T slots of each stream hold its prefix."""

    def __init__(self, cfg: RefConfig, w: dict, batch: int):
        self.cfg = cfg
        self.n_prefix = cfg.parscale_n_tokens
        self.keys, self.values = [], []
        for i in range(cfg.num_layers):
            if cfg.parscale_n > 1:
                pk = w[f"model.layers.{i}.self_attn.prefix_k"]  # [P, kvh, T, D]
                pv = w[f"model.layers.{i}.self_attn.prefix_v"]
                # stream-major rows: row s*B + b gets prefix of stream s
                self.keys.append(pk.repeat_interleave(batch, dim=0))
                self.values.append(pv.repeat_interleave(batch, dim=0))
            else:
                empty = torch.zeros(batch, cfg.num_kv_heads, 0, cfg.head_dim, dtype=F64)
                self.keys.append(empty)
                self.values.append(empty.clone())

    def seen_tokens(self) -> int:
        return self.keys[0].shape[2] - self.n_prefix


def forward_batched(cfg: RefConfig, w: dict, ids: torch.Tensor, cache: KVCache = None):
    """ids [B, L] (appended after what `cache` has seen). Returns logits [B, L, V] and stream weights
    [B, L, P] (None for P = 1). `cache` is updated in place when given."""
    b, l = ids.shape
    p, t = cfg.parscale_n, cfg.parscale_n_tokens
    nh, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    if cache is None:
        cache = KVCache(cfg, w, b)
    past = cache.seen_tokens()
    x = w["model.embed_tokens.weight"][ids]  # [B, L, H]
    if p > 1:
        x = x.repeat(p, 1, 1)  # [P*B, L, H], row s*B + b
    n = x.shape[0]
    cos, sin = rope_cos_sin(cfg, torch.arange(past, past + l))
    key_len = t + past + l
    # additive mask [L, key_len]: prefix slots always visible, real slot m visible iff m <= past + i
    real_slot = torch.arange(key_len - t)
    mask = torch.zeros(l, key_len, dtype=F64)
    mask[:, t:] = torch.where(real_slot[None, :] > (past + torch.arange(l))[:, None],
                              torch.tensor(-math.inf, dtype=F64), torch.tensor(0.0, dtype=F64))
    prepend_prefix_queries = p > 1 and l != 1  # upstream prepends T zero queries during prefill
    if prepend_prefix_queries:
        mask = torch.cat([torch.zeros(t, key_len, dtype=F64), mask], dim=0)
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        h = rms_norm(x, w[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = proj(cfg, w, pre, "q", h).view(n, l, nh, d)
        k = proj(cfg, w, pre, "k", h).view(n, l, kvh, d)
        if cfg.qk_norm:  # per head, over head_dim
            q = rms_norm(q, w[pre + "self_attn.q_norm.weight"], cfg.rms_norm_eps)
            k = rms_norm(k, w[pre + "self_attn.k_norm.weight"], cfg.rms_norm_eps)
        q = q.transpose(1, 2)
        k = k.transpose(1, 2)
        v = proj(cfg, w, pre, "v", h).view(n, l, kvh, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        cache.keys[i] = torch.cat([cache.keys[i], k], dim=2)
        cache.values[i] = torch.cat([cache.values[i], v], dim=2)
        if prepend_prefix_queries:
            q = torch.cat([torch.zeros(n, nh, t, d, dtype=F64), q], dim=2)
        keys = repeat_kv(cache.keys[i], nh // kvh)
        values = repeat_kv(cache.values[i], nh // kvh)
        scores = (q @ keys.transpose(2, 3)) * (d ** -0.5) + mask
        attn = torch.softmax(scores, dim=-1) @ values  # [N, nh, Lq, D]
        if prepend_prefix_queries:
            attn = attn[:, :, t:]
        attn = attn.transpose(1, 2).reshape(n, l, nh * d)
        x = x + attn @ w[pre + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate = torch.nn.functional.silu(h @ w[pre + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ w[pre + "mlp.up_proj.weight"].T)) @ w[pre + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], cfg.rms_norm_eps)
    stream_weights = None
    if p > 1:
        x, stream_weights = aggregate_streams(cfg, w, x.view(p, b, l, -1))
    return x @ lm_head_weight(cfg, w).T, stream_weights


def _plain_stream_hidden(cfg: RefConfig, w: dict, ids, stream):
    """One sequence through the decoder for one stream (stream None: no prefix). Returns the final
    normed hidden states [L, H]. Written with explicit loops, independent of forward_batched."""
    nh, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    half = d // 2
    group = nh // kvh
    l = len(ids)
    x = torch.stack([w["model.embed_tokens.weight"][tok] for tok in ids])  # [L, H]
    angle = torch.zeros(l, half, dtype=F64)
    for pos in range(l):
        for j in range(half):
            angle[pos, j] = pos * cfg.rope_theta ** (-(2.0 * j) / d)

    def rotate(vec_rows):  # [L, D] -> rotated pairs (j, j + D/2)
        a, c = vec_rows[:, :half], vec_rows[:, half:]
        return torch.cat([a * angle.cos() - c * angle.sin(), c * angle.cos() + a * angle.sin()], dim=1)

    def norm(v, weight):
        return torch.stack([weight * row / math.sqrt(float((row * row).sum()) / row.numel() + cfg.rms_norm_eps)
                            for row in v])

    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        h = norm(x, w[pre + "input_layernorm.weight"])
        q_all = h @ w[pre + "self_attn.q_proj.weight"].T
        k_all = h @ w[pre + "self_attn.k_proj.weight"].T
        v_all = h @ w[pre + "self_attn.v_proj.weight"].T
        if cfg.attention_bias:
            q_all = q_all + w[pre + "self_attn.q_proj.bias"]
            k_all = k_all + w[pre + "self_attn.k_proj.bias"]
            v_all = v_all + w[pre + "self_attn.v_proj.bias"]

        def head_norm(rows, name):  # Qwen3: each head's [L, D] rows normalised separately
            return norm(rows, w[pre + f"self_attn.{name}_norm.weight"]) if cfg.qk_norm else rows

        out = torch.zeros(l, nh * d, dtype=F64)
        for qh in range(nh):
            g = qh // group
            q = rotate(head_norm(q_all[:, qh * d:(qh + 1) * d], "q"))
            k = rotate(head_norm(k_all[:, g * d:(g + 1) * d], "k"))
            v = v_all[:, g * d:(g + 1) * d]
            if stream is not None:
                k = torch.cat([w[pre + "self_attn.prefix_k"][stream, g], k], dim=0)
                v = torch.cat([w[pre + "self_attn.prefix_v"][stream, g], v], dim=0)
            n_pre = k.shape[0] - l
            for pos in range(l):
                visible = n_pre + pos + 1
                s = (k[:visible] @ q[pos]) / math.sqrt(d)
                e = torch.exp(s - s.max())
                out[pos, qh * d:(qh + 1) * d] = (e / e.sum()) @ v[:visible]
        x = x + out @ w[pre + "self_attn.o_proj.weight"].T
        h = norm(x, w[pre + "post_attention_layernorm.weight"])
        g_act = h @ w[pre + "mlp.gate_proj.weight"].T
        g_act = g_act / (1.0 + torch.exp(-g_act))
        x = x + (g_act * (h @ w[pre + "mlp.up_proj.weight"].T)) @ w[pre + "mlp.down_proj.weight"].T
    return norm(x, w["model.norm.weight"])


def forward_plain(cfg: RefConfig, w: dict, ids):
    """One sequence (list of ids) -> logits [L, V]; P streams run one after another."""
    p = cfg.parscale_n
    if p == 1:
        return _plain_stream_hidden(cfg, w, ids, None) @ lm_head_weight(cfg, w).T
    hs = [_plain_stream_hidden(cfg, w, ids, s) for s in range(p)]  # P x [L, H]
    l, hdim = hs[0].shape
    a0w, a0b = w["model.aggregate_layer.0.weight"], w["model.aggregate_layer.0.bias"]
    a2w, a2b = w["model.aggregate_layer.2.weight"], w["model.aggregate_layer.2.bias"]
    mixed = torch.zeros(l, hdim, dtype=F64)
    for pos in range(l):
        feats = torch.zeros(hdim * p, dtype=F64)
        for s in range(p):
            for j in range(hdim):
                feats[j * p + s] = hs[s][pos, j]
        z = a0w @ feats + a0b
        z = z / (1.0 + torch.exp(-z))
        sc = a2w @ z + a2b
        e = torch.exp(sc - sc.max())
        wt = e / e.sum()
        eps = cfg.parscale_attn_smooth
        if eps != 0.0:
            wt = wt * (1.0 - eps) + eps / p
        for s in range(p):
            mixed[pos] += wt[s] * hs[s][pos]
    return mixed @ lm_head_weight(cfg, w).T
