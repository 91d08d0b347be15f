#!/usr/bin/python3
"""Write the training golden fixtures under tests/fixtures/train/<name>/.

Run by hand with Debian's torch:  /usr/bin/python3 tests/reference/make_train_fixtures.py
Deterministic (fixed seeds). Loss, gradients (float64 autograd) and ten AdamW steps; the format is
described in tests/reference/README.md.
"""
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import model_files  # noqa: E402
import st_io  # noqa: E402
from parscale_ref import F64, forward_batched, forward_plain  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "train")
BATCH, SEQ_LEN = 2, 8
ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, clip_norm=1.0, steps=10)


def spec(name, **kw):
    base = dict(name=name, model_type="qwen2_parscale", P=1, T=48, smooth=0.01, bos=1, eos=2, gen_eos=2,
                sharded=False, adamw=None)
    base.update(kw)
    return base


MODELS = [
    spec("train_p1_tied_f32", model_type="qwen2", vocab=64, hidden=16, inter=40, layers=2, heads=2, kv=1,
         theta=10000.0, eps=1e-6, tie=True, dtype="F32", adamw="full"),
    spec("train_p2_t3_untied_f32", vocab=64, hidden=16, inter=40, layers=2, heads=4, kv=2, theta=10000.0,
         eps=1e-6, tie=False, dtype="F32", P=2, T=3, smooth=0.01, adamw="frozen_backbone"),
    spec("train_p4_t2_tied_bf16", vocab=48, hidden=16, inter=32, layers=1, heads=2, kv=2, theta=1000000.0,
         eps=1e-5, tie=True, dtype="BF16", P=4, T=2, smooth=0.05),
    spec("train_p3_t5_smooth0_f32", vocab=56, hidden=24, inter=48, layers=2, heads=3, kv=1, theta=500.0,
         eps=1e-6, tie=False, dtype="F32", P=3, T=5, smooth=0.0),
    # Qwen3: per-head q/k norm (its backward), bias-less projections, head_dim != hidden/heads.
    spec("train_qwen3_p1_untied_f32", model_type="qwen3", vocab=64, hidden=16, inter=40, layers=2, heads=4, kv=2,
         head_dim=6, theta=1000000.0, eps=1e-6, tie=False, dtype="F32"),
    spec("train_qwen3_p2_t3_tied_f32", model_type="qwen3_parscale", vocab=48, hidden=24, inter=40, layers=2, heads=2,
         kv=1, head_dim=16, theta=10000.0, eps=1e-6, tie=True, dtype="F32", P=2, T=3, smooth=0.01, reparam=5),
    spec("train_qwen3_p4_t2_bias_bf16", model_type="qwen3_parscale", vocab=40, hidden=16, inter=32, layers=1,
         heads=4, kv=2, head_dim=8, attention_bias=True, theta=10000.0, eps=1e-5, tie=False, dtype="BF16", P=4, T=2,
         smooth=0.05, reparam=3),
]


# ---- prefix reparameterization (training only; folded into prefix_k / prefix_v when saved) ----------------
# Per layer l: E [P*T, R], an MLP Linear(R -> H) + tanh + Linear(H -> 2*KVH*D), and the fixed
# prefixes P0 the training started from:
#   out = tanh(E @ W1^T + b1) @ W2^T + b2                       [P*T, 2*KVH*D], row s*T + t
#   prefix_k[s, h, t, :] = P0_k[s, h, t, :] + out[s*T + t, h*D : (h+1)*D]
#   prefix_v[s, h, t, :] = P0_v[s, h, t, :] + out[s*T + t, KVH*D + h*D : KVH*D + (h+1)*D]
REPARAM_NAMES = ("embedding", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")


def reparam_name(layer, what):
    return f"reparam.layers.{layer}.{what}"


def reparam_prefixes(cfg, w, rp):
    """{prefix tensor name: P0 + MLP(E)} for every layer."""
    p, t, kvh, d = cfg.parscale_n, cfg.parscale_n_tokens, cfg.num_kv_heads, cfg.head_dim
    out = {}
    for li in range(cfg.num_layers):
        n = lambda what: rp[reparam_name(li, what)]  # noqa: E731
        hid = torch.tanh(n("embedding") @ n("mlp.0.weight").T + n("mlp.0.bias"))
        o = hid @ n("mlp.2.weight").T + n("mlp.2.bias")  # [P*T, 2*KVH*D]
        ok = o[:, :kvh * d].reshape(p, t, kvh, d).permute(0, 2, 1, 3)
        ov = o[:, kvh * d:].reshape(p, t, kvh, d).permute(0, 2, 1, 3)
        pre = f"model.layers.{li}.self_attn."
        out[pre + "prefix_k"] = w[pre + "prefix_k"] + ok
        out[pre + "prefix_v"] = w[pre + "prefix_v"] + ov
    return out


def make_reparam(cfg, dim, gen):
    """Random reparameterization tensors (W2 nonzero so every gradient is nonzero), fp32-representable."""
    h, kvh, d, pt = cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim, cfg.parscale_n * cfg.parscale_n_tokens
    shapes = {"embedding": (pt, dim), "mlp.0.weight": (h, dim), "mlp.0.bias": (h,),
              "mlp.2.weight": (2 * kvh * d, h), "mlp.2.bias": (2 * kvh * d,)}
    stds = {"embedding": 1.0, "mlp.0.weight": dim ** -0.5, "mlp.0.bias": 0.1, "mlp.2.weight": 0.3 * h ** -0.5,
            "mlp.2.bias": 0.1}
    rp = {}
    for li in range(cfg.num_layers):
        for what in REPARAM_NAMES:
            x = torch.randn(*shapes[what], generator=gen, dtype=torch.float32) * stds[what]
            rp[reparam_name(li, what)] = x.to(F64)
    return rp


def reparam_loss(cfg, w, rp, batch):
    return lm_loss(cfg, dict(w, **reparam_prefixes(cfg, w, rp)), batch)


def reparam_gradients(cfg, w, rp, batch):
    params = {n: v.clone().requires_grad_(True) for n, v in rp.items()}
    loss = reparam_loss(cfg, w, params, batch)
    names = sorted(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return float(loss), dict(zip(names, grads))


def reparam_fd_check(cfg, w, rp, batch, grads, gen, per_tensor=2, h=1e-4):
    worst = 0.0
    for name in sorted(grads):
        for _ in range(per_tensor):
            idx = int(torch.randint(0, rp[name].numel(), (1,), generator=gen))
            shifted = []
            for sign in (1.0, -1.0):
                moved = rp[name].clone().reshape(-1)
                moved[idx] += sign * h
                shifted.append(float(reparam_loss(cfg, w, dict(rp, **{name: moved.reshape(rp[name].shape)}), batch)))
            numeric = (shifted[0] - shifted[1]) / (2 * h)
            analytic = float(grads[name].reshape(-1)[idx])
            worst = max(worst, abs(numeric - analytic) / (1e-4 + abs(analytic)))
    return worst


def round9(x: float) -> float:
    return float(f"{x:.9g}")


def flat(t: torch.Tensor):
    return [round9(v) for v in t.detach().reshape(-1).tolist()]


def lm_loss(cfg, w, batch):
    """Mean next-token cross-entropy over all B*(L-1) positions: logits at t predict token t+1."""
    logits, _ = forward_batched(cfg, w, batch)  # [B, L, V]
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v), batch[:, 1:].reshape(-1))


def is_frozen_trainable(name: str) -> bool:
    return name.endswith("self_attn.prefix_k") or name.endswith("self_attn.prefix_v") or \
        name.startswith("model.aggregate_layer.")


def gets_weight_decay(name: str, t: torch.Tensor) -> bool:
    return t.dim() >= 2 and name != "model.embed_tokens.weight"


def gradients(cfg, w, batch, names):
    params = {n: w[n].clone().requires_grad_(n in names) for n in w}
    loss = lm_loss(cfg, params, batch)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return float(loss), dict(zip(names, grads))


def finite_difference_check(cfg, w, batch, grads, gen, per_tensor=2, h=1e-4):
    """Central differences at `per_tensor` random coordinates of EVERY tensor in `grads`; returns the
    max of |numeric - analytic| / (1e-4 + |analytic|)."""
    worst = 0.0
    for name in sorted(grads):
        for _ in range(per_tensor):
            idx = int(torch.randint(0, w[name].numel(), (1,), generator=gen))
            shifted = []
            for sign in (1.0, -1.0):
                moved = w[name].clone().reshape(-1)
                moved[idx] += sign * h
                shifted.append(float(lm_loss(cfg, dict(w, **{name: moved.reshape(w[name].shape)}), batch)))
            numeric = (shifted[0] - shifted[1]) / (2 * h)
            analytic = float(grads[name].reshape(-1)[idx])
            worst = max(worst, abs(numeric - analytic) / (1e-4 + abs(analytic)))
    return worst


def adamw_run(cfg, w, batch, names):
    """ADAMW["steps"] steps of torch.optim.AdamW on the same batch with global-norm clipping.
    Returns (losses before each step, grad norms before clipping, final trainable tensors)."""
    params = {n: w[n].clone().requires_grad_(n in names) for n in w}
    decay = [params[n] for n in names if gets_weight_decay(n, w[n])]
    no_decay = [params[n] for n in names if not gets_weight_decay(n, w[n])]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
    losses, norms = [], []
    for _ in range(ADAMW["steps"]):
        opt.zero_grad()
        loss = lm_loss(cfg, params, batch)
        loss.backward()
        losses.append(float(loss))
        norms.append(float(torch.nn.utils.clip_grad_norm_([params[n] for n in names], ADAMW["clip_norm"])))
        opt.step()
    return losses, norms, {n: params[n].detach().clone() for n in names}


def build(s, index):
    folder = os.path.join(OUT_DIR, s["name"])
    cfg_json = model_files.make_config(s)
    gen_json = {"bos_token_id": s["bos"], "eos_token_id": s["gen_eos"], "do_sample": False}
    weights = model_files.make_weights(cfg_json, s, seed=5000 + index)
    model_files.write_model_folder(folder, cfg_json, gen_json, weights, s["dtype"], s["sharded"])
    _, cfg, w = model_files.load_model_folder(folder)

    gen = torch.Generator().manual_seed(6000 + index)
    batch = torch.randint(0, cfg.vocab_size, (BATCH, SEQ_LEN), generator=gen)
    all_names = sorted(w)
    loss, full = gradients(cfg, w, batch, all_names)

    # independent loss from the per-stream plain path
    plain_loss = sum(float(torch.nn.functional.cross_entropy(forward_plain(cfg, w, row.tolist())[:-1], row[1:],
                                                             reduction="sum")) for row in batch)
    plain_loss /= BATCH * (SEQ_LEN - 1)
    fd_err = finite_difference_check(cfg, w, batch, full, gen)

    golden = {"batch": batch.tolist(), "loss": round9(loss),
              "full": {"grads": {n: flat(full[n]) for n in all_names}}}
    frozen_names = [n for n in all_names if is_frozen_trainable(n)]
    if cfg.parscale_n > 1:
        _, frozen = gradients(cfg, w, batch, frozen_names)
        golden["frozen_backbone"] = {"grads": {n: flat(frozen[n]) for n in frozen_names}}
        assert all(torch.equal(frozen[n], full[n]) for n in frozen_names)

    info = dict(name=s["name"], P=cfg.parscale_n, T=cfg.parscale_n_tokens, loss=loss,
                plain=abs(plain_loss - loss), fd=fd_err, adamw="-")
    if s["adamw"]:
        names = all_names if s["adamw"] == "full" else frozen_names
        losses, norms, final = adamw_run(cfg, w, batch, names)
        assert abs(losses[0] - loss) < 1e-12
        smallest = min(float(g.abs()[g != 0].min()) for g in (full[n] for n in names) if (g != 0).any())
        golden["adamw"] = {
            "mode": s["adamw"], "steps": ADAMW["steps"], "lr": ADAMW["lr"], "betas": list(ADAMW["betas"]),
            "eps": ADAMW["eps"], "weight_decay": ADAMW["weight_decay"], "clip_norm": ADAMW["clip_norm"],
            "decay": [n for n in names if gets_weight_decay(n, w[n])],
            "losses": [round9(x) for x in losses],
            "grad_norms": [round9(x) for x in norms],
            "final": {n: flat(final[n]) for n in names},
        }
        info["adamw"] = (f"{s['adamw']}: loss {losses[0]:.4f}->{losses[-1]:.4f}, norm {norms[0]:.2f}->"
                         f"{norms[-1]:.2f}, clipped {sum(x > ADAMW['clip_norm'] for x in norms)}/10, "
                         f"min|g| {smallest:.1e}")
    if s.get("reparam"):
        # Prefix reparameterization: loss and gradients of its tensors (stored in reparam.safetensors).
        rp = make_reparam(cfg, s["reparam"], gen)
        st_io.write_safetensors(os.path.join(folder, "reparam.safetensors"),
                                {n: v.to(torch.float32) for n, v in rp.items()})
        rp_loss, rp_grads = reparam_gradients(cfg, w, rp, batch)
        info["reparam_fd"] = reparam_fd_check(cfg, w, rp, batch, rp_grads, gen)
        folded = reparam_prefixes(cfg, w, rp)
        golden["reparam"] = {"dim": s["reparam"], "loss": round9(rp_loss),
                             "grads": {n: flat(rp_grads[n]) for n in sorted(rp_grads)},
                             "prefixes": {n: flat(folded[n]) for n in sorted(folded)}}
    with open(os.path.join(folder, "train_golden.json"), "w") as f:
        f.write(json.dumps(golden, separators=(",", ":")))
        f.write("\n")
    return info


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    only = set(sys.argv[1:])  # optional fixture names: rebuild just those
    results = [build(s, i) for i, s in enumerate(MODELS) if not only or s["name"] in only]
    print(f"{'model':26s} {'P':>2s} {'T':>2s} {'loss':>8s} {'|plain-batched|':>15s} {'FD rel err':>10s}  adamw")
    for r in results:
        print(f"{r['name']:26s} {r['P']:2d} {r['T']:2d} {r['loss']:8.4f} {r['plain']:15.3e} {r['fd']:10.2e}  "
              f"{r['adamw']}")
    assert all(r["plain"] < 1e-12 for r in results), "loss from the two reference paths disagrees"
    assert all(r["fd"] < 1e-6 for r in results), "autograd gradient disagrees with finite differences"
    for r in results:
        if "reparam_fd" in r:
            print(f"{r['name']}: reparameterization gradients vs finite differences: {r['reparam_fd']:.2e}")
            assert r["reparam_fd"] < 1e-6, "reparameterization gradient disagrees with finite differences"
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT_DIR) for f in fs)
    print(f"fixtures: {len(results)} models, {total / 1e6:.2f} MB in {os.path.relpath(OUT_DIR, REPO)}")


if __name__ == "__main__":
    main()
