#!/usr/bin/python3
"""Write the inference golden fixtures under tests/fixtures/models/<name>/.

Run by hand with Debian's torch:  /usr/bin/python3 tests/reference/make_fixtures.py
Deterministic (fixed seeds). See tests/reference/README.md for the format and the model table.
"""
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import model_files  # noqa: E402
from parscale_ref import KVCache, forward_batched, forward_plain  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "models")
GREEDY_TOKENS = 10
MIN_GREEDY_MARGIN = 1e-2  # stricter than needed: fp32 engines stay far below this


def spec(name, **kw):
    base = dict(name=name, model_type="qwen2_parscale", P=1, T=48, smooth=0.01, bos=1, eos=2,
                gen_eos=2, sharded=False, lens=[1, 5, 9, 12], prompt_len=5)
    base.update(kw)
    return base


# Each entry covers a mix of features; the README table lists them.
MODELS = [
    spec("qwen2_tied_f32_sharded", model_type="qwen2", vocab=96, hidden=32, inter=80, layers=2, heads=4,
         kv=2, theta=10000.0, eps=1e-6, tie=True, dtype="F32", sharded=True, gen_eos=[2, 3],
         sliding_window=4096, lens=[1, 4, 9, 12]),
    spec("qwen2_untied_bf16_gqa3", model_type="qwen2", vocab=128, hidden=48, inter=128, layers=2, heads=6,
         kv=2, theta=1000000.0, eps=1e-5, tie=False, dtype="BF16", lens=[2, 6, 11, 8]),
    spec("ps1_f16_tied_theta500", vocab=80, hidden=32, inter=64, layers=2, heads=2, kv=2, theta=500, eps=1e-6,
         tie=True, dtype="F16", P=1, T=48, smooth=0.01, lens=[3, 1, 12, 7]),
    spec("ps1_fields_omitted_f32", vocab=72, hidden=24, inter=64, layers=2, heads=3, kv=1, theta=10000.0,
         eps=1e-5, tie=False, dtype="F32", P="omit", T="omit", smooth="omit", lens=[6, 12, 2, 9]),
    spec("ps2_t1_f32_untied", vocab=100, hidden=32, inter=96, layers=2, heads=4, kv=2, theta=10000.0,
         eps=1e-6, tie=False, dtype="F32", P=2, T=1, smooth=0.01, lens=[1, 5, 10, 12]),
    spec("ps2_t3_bf16_tied_1layer", vocab=64, hidden=16, inter=48, layers=1, heads=2, kv=1, theta=500.0,
         eps=1e-5, tie=True, dtype="BF16", P=2, T=3, smooth=0.05, lens=[4, 12, 1, 8], gen_eos=[2]),
    spec("ps3_t5_f16_untied_gqa3", vocab=112, hidden=48, inter=96, layers=2, heads=6, kv=2, theta=1000000.0,
         eps=1e-5, tie=False, dtype="F16", P=3, T=5, smooth=0.01, lens=[2, 7, 12, 5]),
    spec("ps4_t7_f32_tied_sharded", vocab=72, hidden=32, inter=64, layers=3, heads=4, kv=4, theta=10000.0,
         eps=1e-6, tie=True, dtype="F32", P=4, T=7, smooth=0.02, sharded=True, lens=[1, 3, 8, 11]),
    spec("ps4_defaults_bf16_mqa", vocab=96, hidden=32, inter=64, layers=2, heads=4, kv=1, theta=10000.0,
         eps=1e-6, tie=False, dtype="BF16", P=4, T="omit", smooth="omit", lens=[5, 12, 2, 9]),
    spec("ps2_smooth0_kvnull_f32", vocab=160, hidden=32, inter=96, layers=2, heads=2, kv=None,
         theta=1000000.0, eps=1e-6, tie=True, dtype="F32", P=2, T=5, smooth=0.0, lens=[12, 1, 6, 3],
         gen_eos=[2, 7]),
    spec("ps3_t2_bf16_untied_d12", vocab=90, hidden=24, inter=64, layers=2, heads=2, kv=1, theta=10000.0,
         eps=1e-5, tie=False, dtype="BF16", P=3, T=2, smooth=0.01, lens=[3, 9, 12, 1]),
    spec("ps2_t4_f16_tied_h64", vocab=64, hidden=64, inter=128, layers=1, heads=8, kv=8, theta=200000.0,
         eps=1e-6, tie=True, dtype="F16", P=2, T=4, smooth=0.1, lens=[7, 2, 12, 4]),
    # Qwen3: per-head q/k RMSNorm, no q/k/v biases unless attention_bias, head_dim != hidden/heads.
    spec("qwen3_tied_f32_d12", model_type="qwen3", vocab=96, hidden=32, inter=80, layers=2, heads=4, kv=2,
         head_dim=12, theta=1000000.0, eps=1e-6, tie=True, dtype="F32", lens=[1, 6, 12, 9]),
    spec("qwen3_untied_f16_bias_d16", model_type="qwen3", vocab=112, hidden=48, inter=96, layers=2, heads=6,
         kv=2, head_dim=16, attention_bias=True, theta=10000.0, eps=1e-5, tie=False, dtype="F16",
         lens=[4, 12, 2, 7]),
    spec("qwen3ps2_t3_bf16_tied_d16", model_type="qwen3_parscale", vocab=80, hidden=32, inter=64, layers=2,
         heads=4, kv=2, head_dim=16, theta=1000000.0, eps=1e-6, tie=True, dtype="BF16", P=2, T=3, smooth=0.01,
         lens=[5, 1, 12, 8]),
    spec("qwen3ps4_t5_bf16_untied_sharded", model_type="qwen3_parscale", vocab=72, hidden=24, inter=64, layers=2,
         heads=6, kv=1, head_dim=8, theta=10000.0, eps=1e-6, tie=False, dtype="BF16", P=4, T=5, smooth=0.02,
         sharded=True, lens=[3, 12, 6, 1]),
]


def round9(x: float) -> float:
    """float64 rounded to 9 significant digits (json.dumps then prints its shortest repr)."""
    return float(f"{x:.9g}")


def incremental_logits(cfg, w, ids, prefill):
    """Prefill `prefill` tokens, then one token at a time; returns logits [L, V]."""
    cache = KVCache(cfg, w, 1)
    parts = [forward_batched(cfg, w, torch.tensor([ids[:prefill]]), cache)[0][0]]
    for tok in ids[prefill:]:
        parts.append(forward_batched(cfg, w, torch.tensor([[tok]]), cache)[0][0])
    return torch.cat(parts, dim=0)


def greedy(cfg, w, prompt, n_tokens):
    """Greedy continuation with a KV cache. Returns (generated ids, smallest top-2 logit gap)."""
    cache = KVCache(cfg, w, 1)
    logits = forward_batched(cfg, w, torch.tensor([prompt]), cache)[0][0, -1]
    out, margin = [], math.inf
    for step in range(n_tokens):
        top2 = torch.topk(logits, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        if step + 1 < n_tokens:
            logits = forward_batched(cfg, w, torch.tensor([[nxt]]), cache)[0][0, -1]
    return out, margin


def build(s, index):
    folder = os.path.join(OUT_DIR, s["name"])
    cfg_json = model_files.make_config(s)
    gen_json = {"bos_token_id": s["bos"], "eos_token_id": s["gen_eos"], "do_sample": False}
    weights = model_files.make_weights(cfg_json, s, seed=1000 + index)
    model_files.write_model_folder(folder, cfg_json, gen_json, weights, s["dtype"], s["sharded"])

    # Everything below uses the files as written (rounded storage values upcast to float64).
    _, cfg, w = model_files.load_model_folder(folder)
    g = torch.Generator().manual_seed(2000 + index)
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in s["lens"]]

    golden_logits, diff_inc, diff_plain, w_min, w_max = [], 0.0, 0.0, 1.0, 0.0
    for ids in seqs:
        full, stream_w = forward_batched(cfg, w, torch.tensor([ids]))
        full = full[0]
        golden_logits.append(full)
        if stream_w is not None:
            w_min, w_max = min(w_min, float(stream_w.min())), max(w_max, float(stream_w.max()))
        for prefill in sorted({1, max(1, len(ids) // 2), len(ids)}):
            diff_inc = max(diff_inc, float((incremental_logits(cfg, w, ids, prefill) - full).abs().max()))
        diff_plain = max(diff_plain, float((forward_plain(cfg, w, ids) - full).abs().max()))
    # batched rows (B > 1, equal lengths) must match each sequence run alone
    n_min = min(len(x) for x in seqs if len(x) > 1)
    rows = [x[:n_min] for x in seqs if len(x) >= n_min]
    batched = forward_batched(cfg, w, torch.tensor(rows))[0]
    diff_batch = max(float((batched[r] - forward_batched(cfg, w, torch.tensor([rows[r]]))[0][0]).abs().max())
                     for r in range(len(rows)))

    eos = set(s["gen_eos"] if isinstance(s["gen_eos"], list) else [s["gen_eos"]]) | {s["eos"]}
    for attempt in range(200):
        prompt = torch.randint(0, cfg.vocab_size, (s["prompt_len"],), generator=g).tolist()
        gen, margin = greedy(cfg, w, prompt, GREEDY_TOKENS)
        if margin >= MIN_GREEDY_MARGIN and not (set(gen) & eos):
            break
    else:
        raise RuntimeError(f"{s['name']}: no prompt with a clear greedy continuation")
    # greedy ids must also agree with full recomputation of the whole sequence
    full_seq = forward_batched(cfg, w, torch.tensor([prompt + gen]))[0][0]
    recomputed = [int(torch.argmax(full_seq[len(prompt) - 1 + k])) for k in range(GREEDY_TOKENS)]
    assert recomputed == gen, f"{s['name']}: greedy with cache disagrees with full recompute"

    golden = {
        "sequences": seqs,
        "logits": [[[round9(v) for v in row.tolist()] for row in lg] for lg in golden_logits],
        "greedy": {"prompt": prompt, "max_tokens": GREEDY_TOKENS, "ids": gen},
    }
    with open(os.path.join(folder, "golden.json"), "w") as f:
        f.write(json.dumps(golden, separators=(",", ":")))
        f.write("\n")
    logit_span = max(float(x.max() - x.min()) for x in golden_logits)
    return dict(name=s["name"], P=cfg.parscale_n, T=cfg.parscale_n_tokens, dtype=s["dtype"],
                tied=cfg.tie_word_embeddings, gqa=cfg.num_heads // cfg.num_kv_heads, inc=diff_inc,
                plain=diff_plain, batch=diff_batch, wmin=w_min, wmax=w_max, margin=margin,
                span=logit_span, attempt=attempt)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    only = set(sys.argv[1:])  # optional fixture names: rebuild just those
    results = [build(s, i) for i, s in enumerate(MODELS) if not only or s["name"] in only]
    print(f"{'model':28s} {'P':>2s} {'T':>3s} {'dtype':5s} {'tied':5s} {'gqa':>3s} "
          f"{'full-vs-incr':>12s} {'plain-path':>10s} {'batch-B':>9s} {'w_min':>6s} {'w_max':>6s} "
          f"{'greedy gap':>10s} {'logit span':>10s}")
    for r in results:
        wmin = f"{r['wmin']:.3f}" if r["P"] > 1 else "-"
        wmax = f"{r['wmax']:.3f}" if r["P"] > 1 else "-"
        print(f"{r['name']:28s} {r['P']:2d} {r['T']:3d} {r['dtype']:5s} {str(r['tied']):5s} {r['gqa']:3d} "
              f"{r['inc']:12.3e} {r['plain']:10.3e} {r['batch']:9.2e} {wmin:>6s} {wmax:>6s} "
              f"{r['margin']:10.4f} {r['span']:10.2f}")
    worst_inc = max(r["inc"] for r in results)
    worst_plain = max(r["plain"] for r in results)
    worst_batch = max(r["batch"] for r in results)
    print(f"max |full - incremental| = {worst_inc:.3e}; max |batched path - plain per-stream path| = "
          f"{worst_plain:.3e} (P=1 models: {max([r['plain'] for r in results if r['P'] == 1], default=0.0):.3e}); "
          f"max |batched rows - alone| = {worst_batch:.3e}")
    assert worst_inc < 1e-10 and worst_plain < 1e-10 and worst_batch < 1e-10, "reference self-check failed"
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT_DIR) for f in fs)
    print(f"fixtures: {len(results)} models, {total / 1e6:.2f} MB in {os.path.relpath(OUT_DIR, REPO)}")


if __name__ == "__main__":
    main()
