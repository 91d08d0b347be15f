#!/usr/bin/python3
"""Write the long-context golden fixtures under tests/fixtures/long_context/<name>/.

Run by hand with Debian's torch:  /usr/bin/python3 tests/reference/make_long_fixtures.py
Deterministic (fixed seeds). Read by tests/test_long_context.cpp; see tests/reference/README.md.

Each fixture is a tiny model folder plus long_golden.json:
  sequences  token id lists (the long ones are >= 700 tokens: several attention key blocks, and
             P * L rows cross the MLP's 512-row chunking)
  positions  per sequence, the positions whose logits are stored (to keep the files small: a
             stride over the prefix plus every position from decode_from - 1 on, which the decode
             test walks)
  logits     per sequence, [len(positions)][V], float64 reference rounded to 9 significant digits
  decode_from  the prefill length after which the test decodes one token at a time
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import model_files  # noqa: E402
from make_fixtures import round9, spec  # noqa: E402
from parscale_ref import KVCache, forward_batched  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "long_context")

MODELS = [
    # 760-token sequence with P = 2: 1520 rows in one prefill (> 512); a short and a 1-token one
    # for the mixed batch. Positions: every 37th of the first 700, then all of 700..759.
    dict(spec("long_ps2_f32", vocab=64, hidden=32, inter=64, layers=2, heads=4, kv=2, theta=10000.0,
              eps=1e-6, tie=True, dtype="F32", P=2, T=4, smooth=0.01, max_pos=1024),
         lens=[760, 33, 1], decode_from=700, stride=37),
    # P = 1 plain Qwen2, BF16, 720 tokens, GQA 3.
    dict(spec("long_qwen2_bf16", model_type="qwen2", vocab=48, hidden=24, inter=64, layers=2, heads=6, kv=2,
              theta=1000000.0, eps=1e-5, tie=False, dtype="BF16", max_pos=800),
         lens=[720, 5], decode_from=690, stride=41),
    # The context limit reached exactly: max_position_embeddings = 40, sequences of 40 tokens.
    dict(spec("ctx_limit_ps3_bf16", vocab=48, hidden=24, inter=48, layers=2, heads=2, kv=1, theta=10000.0,
              eps=1e-5, tie=False, dtype="BF16", P=3, T=2, smooth=0.02, max_pos=40),
         lens=[40, 40, 7], decode_from=30, stride=1),
]


def positions_for(n, decode_from, stride):
    if n <= decode_from:
        return list(range(n))
    return sorted(set(range(0, decode_from, stride)) | set(range(decode_from - 1, n)))


def build(s, index):
    folder = os.path.join(OUT_DIR, s["name"])
    cfg_json = model_files.make_config(s)
    gen_json = {"bos_token_id": s["bos"], "eos_token_id": s["gen_eos"], "do_sample": False}
    weights = model_files.make_weights(cfg_json, s, seed=5000 + index)
    model_files.write_model_folder(folder, cfg_json, gen_json, weights, s["dtype"], False)
    _, cfg, w = model_files.load_model_folder(folder)
    assert max(s["lens"]) <= cfg_json["max_position_embeddings"]
    g = torch.Generator().manual_seed(6000 + index)
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in s["lens"]]
    positions, logits, worst_inc = [], [], 0.0
    for ids in seqs:
        full = forward_batched(cfg, w, torch.tensor([ids]))[0][0]
        pos = positions_for(len(ids), s["decode_from"], s["stride"])
        positions.append(pos)
        logits.append([[round9(v) for v in full[p].tolist()] for p in pos])
        # Self-check: prefill decode_from tokens, then one at a time, equals the full forward.
        if len(ids) > s["decode_from"]:
            cache = KVCache(cfg, w, 1)
            parts = [forward_batched(cfg, w, torch.tensor([ids[:s["decode_from"]]]), cache)[0][0]]
            for tok in ids[s["decode_from"]:]:
                parts.append(forward_batched(cfg, w, torch.tensor([[tok]]), cache)[0][0])
            worst_inc = max(worst_inc, float((torch.cat(parts, 0) - full).abs().max()))
    assert worst_inc < 1e-10, f"{s['name']}: incremental differs from full by {worst_inc}"
    golden = {"sequences": seqs, "positions": positions, "logits": logits, "decode_from": s["decode_from"]}
    with open(os.path.join(folder, "long_golden.json"), "w") as f:
        f.write(json.dumps(golden, separators=(",", ":")))
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(folder, x)) for x in os.listdir(folder))
    print(f"{s['name']:22s} P={cfg.parscale_n} lens={s['lens']} max_pos={cfg_json['max_position_embeddings']} "
          f"stored rows={sum(len(p) for p in positions)} |full-incremental|={worst_inc:.1e} {size / 1e3:.0f} kB")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for i, s in enumerate(MODELS):
        build(s, i)


if __name__ == "__main__":
    main()
