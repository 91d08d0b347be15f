#!/usr/bin/python3
"""PyTorch CPU baseline for `parscale train --bench`: the same ParScale/Qwen2 model shape and the
same training step (forward, cross-entropy over seq_len-1 predictions per sequence, backward,
global-norm clipping, AdamW) in fp32, timed after warmup steps. Prints one JSON line.

Run with Debian's torch: /usr/bin/python3 bench/train_torch.py --config CFG.json [options]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, h, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Layer(nn.Module):
    def __init__(self, c, P, T):
        super().__init__()
        H, NH, KVH = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        D = H // NH
        self.NH, self.KVH, self.D, self.P, self.T = NH, KVH, D, P, T
        self.input_layernorm = RMSNorm(H, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(H, c["rms_norm_eps"])
        self.q_proj = nn.Linear(H, NH * D)
        self.k_proj = nn.Linear(H, KVH * D)
        self.v_proj = nn.Linear(H, KVH * D)
        self.o_proj = nn.Linear(NH * D, H, bias=False)
        I = c["intermediate_size"]
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)
        if P > 1:
            self.prefix_k = nn.Parameter(torch.randn(P, KVH, T, D) * 0.5)
            self.prefix_v = nn.Parameter(torch.randn(P, KVH, T, D) * 0.5)

    def forward(self, x, cos, sin, mask, B):
        PB, L, H = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(PB, L, self.NH, self.D).transpose(1, 2)
        k = self.k_proj(h).view(PB, L, self.KVH, self.D).transpose(1, 2)
        v = self.v_proj(h).view(PB, L, self.KVH, self.D).transpose(1, 2)

        def rot(t):
            t1, t2 = t[..., : self.D // 2], t[..., self.D // 2:]
            return t * cos + torch.cat((-t2, t1), dim=-1) * sin

        q, k = rot(q), rot(k)
        if self.P > 1:
            pk = self.prefix_k.repeat_interleave(B, dim=0)  # [P*B, KVH, T, D], row s*B+b
            pv = self.prefix_v.repeat_interleave(B, dim=0)
            k = torch.cat([pk, k], dim=2)
            v = torch.cat([pv, v], dim=2)
        g = self.NH // self.KVH
        if g > 1:
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.D) + mask
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(PB, L, self.NH * self.D)
        x = x + self.o_proj(o)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Model(nn.Module):
    def __init__(self, c, P, T, smooth):
        super().__init__()
        H, V = c["hidden_size"], c["vocab_size"]
        self.c, self.P, self.T, self.smooth = c, P, T, smooth
        self.embed_tokens = nn.Embedding(V, H)
        self.layers = nn.ModuleList([Layer(c, P, T) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(H, c["rms_norm_eps"])
        if P > 1:
            self.aggregate_layer = nn.Sequential(nn.Linear(P * H, H), nn.SiLU(), nn.Linear(H, P))
        self.tied = c.get("tie_word_embeddings", False)
        if not self.tied:
            self.lm_head = nn.Linear(H, V, bias=False)
        D = H // c["num_attention_heads"]
        self.inv_freq = 1.0 / (c.get("rope_theta", 10000.0) ** (torch.arange(0, D, 2).float() / D))

    def forward(self, ids):
        B, L = ids.shape
        P, T, H = self.P, self.T, self.c["hidden_size"]
        x = self.embed_tokens(ids).repeat(P, 1, 1)  # [P*B, L, H]
        freqs = torch.outer(torch.arange(L).float(), self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        causal = torch.full((L, L), float("-inf")).triu(1)
        mask = torch.cat([torch.zeros(L, T if P > 1 else 0), causal], dim=1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, B)
        x = self.norm(x)
        if P > 1:
            xs = x.view(P, B, L, H)
            cat = xs.permute(1, 2, 3, 0).reshape(B, L, H * P)  # feature h*P + s
            w = self.aggregate_layer(cat).softmax(-1)
            if self.smooth:
                w = w * (1 - self.smooth) + self.smooth / P
            x = (xs * w.permute(2, 0, 1).unsqueeze(-1)).sum(0)
        head = self.embed_tokens.weight if self.tied else self.lm_head.weight
        logits = x[:, :-1] @ head.t()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--prefix-tokens", type=int, default=48)
    ap.add_argument("--smooth", type=float, default=0.01)
    ap.add_argument("--mode", choices=["frozen", "full"], default="full")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = json.load(open(a.config))
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("rms_norm_eps", 1e-6)
    model = Model(c, a.streams, a.prefix_tokens, a.smooth)
    with torch.no_grad():  # HF-style init (std 0.02, biases 0), as `parscale init --config`
        for n, p in model.named_parameters():
            if p.dim() >= 2 and "prefix_" not in n:
                p.normal_(0.0, 0.02)
            elif n.endswith("bias"):
                p.zero_()
    for n, p in model.named_parameters():
        if a.mode == "frozen":
            p.requires_grad_("prefix_" in n or "aggregate_layer" in n)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, c["vocab_size"], (a.steps + a.warmup_steps, a.batch, a.seq_len))

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = model(ids[i])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    for i in range(a.warmup_steps):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.steps):
        loss = step(a.warmup_steps + i)
    dt = time.perf_counter() - t0
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "streams": a.streams, "mode": a.mode, "batch": a.batch, "seq_len": a.seq_len,
                      "steps": a.steps, "loss": loss, "tokens_per_second": a.steps * a.batch * a.seq_len / dt}))


if __name__ == "__main__":
    main()
