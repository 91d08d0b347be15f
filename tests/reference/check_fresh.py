#!/usr/bin/python3
"""Hand check (not run by CI): make fresh random checkpoints with new seeds and shapes in a temp
folder, run the built engine (`parscale logits` and `parscale generate`) on them and compare with
this reference. Prints the largest logit error.

    /usr/bin/python3 tests/reference/check_fresh.py [--binary build/parscale] [--count 6] [--seed 7]
                                                    [--family qwen2|qwen3]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model_files  # noqa: E402
from make_fixtures import spec  # noqa: E402
from parscale_ref import KVCache, forward_batched  # noqa: E402


def random_spec(rng, i, family="qwen2"):
    heads = rng.choice([2, 3, 4, 6])
    kv = rng.choice([h for h in (1, 2, 3, heads) if heads % h == 0])
    head_dim = rng.choice([8, 10, 16])
    P = rng.choice([1, 2, 3, 4, 5, 8])
    hidden = heads * head_dim
    extra = {}
    if family == "qwen3":  # head_dim independent of hidden / heads; biases only sometimes
        hidden = rng.choice([16, 24, 32, 48])
        extra = dict(model_type="qwen3_parscale" if P > 1 else "qwen3", head_dim=head_dim,
                     attention_bias=rng.random() < 0.3)
    return spec(f"fresh{i}_p{P}", vocab=rng.randint(40, 200), hidden=hidden, **extra,
                inter=rng.randint(20, 120), layers=rng.randint(1, 4), heads=heads, kv=kv,
                theta=rng.choice([100.0, 10000.0, 1e6]), eps=rng.choice([1e-6, 1e-5]),
                tie=rng.random() < 0.5, dtype=rng.choice(["F32", "BF16", "F16"]), P=P,
                T=rng.randint(1, 9), smooth=rng.choice([0.0, 0.01, 0.2]), sharded=rng.random() < 0.3,
                lens=[rng.randint(1, 20) for _ in range(3)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "..", "build", "parscale"))
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--family", choices=["qwen2", "qwen3"], default="qwen2")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.count):
            s = random_spec(rng, i, a.family)
            folder = os.path.join(tmp, s["name"])
            cfg_json = model_files.make_config(s)
            weights = model_files.make_weights(cfg_json, s, seed=50000 + 97 * a.seed + i)
            model_files.write_model_folder(folder, cfg_json, {"eos_token_id": 2}, weights, s["dtype"], s["sharded"])
            _, cfg, w = model_files.load_model_folder(folder)
            g = torch.Generator().manual_seed(a.seed * 1000 + i)
            seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in s["lens"]]
            cmd = [a.binary, "logits", "--model", folder, "--json"]
            for q in seqs:
                cmd += ["--ids", ",".join(map(str, q))]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["logits"]
            err, argmax_ok = 0.0, True
            for q, rows in zip(seqs, got):
                ref = forward_batched(cfg, w, torch.tensor([q]))[0][0]
                t = torch.tensor(rows, dtype=torch.float64)
                err = max(err, float((t - ref).abs().max()))
                argmax_ok &= bool((t.argmax(-1) == ref.argmax(-1)).all())
            # greedy: 8 tokens
            cache = KVCache(cfg, w, 1)
            logits = forward_batched(cfg, w, torch.tensor([seqs[0]]), cache)[0][0, -1]
            ref_ids = []
            for k in range(8):
                ref_ids.append(int(torch.argmax(logits)))
                if k < 7:
                    logits = forward_batched(cfg, w, torch.tensor([[ref_ids[-1]]]), cache)[0][0, -1]
            out = subprocess.run([a.binary, "generate", "--model", folder, "--ids", ",".join(map(str, seqs[0])),
                                  "--max-tokens", "8", "--temperature", "0", "--ignore-eos", "--json"],
                                 check=True, capture_output=True, text=True).stdout
            gen = json.loads(out)["ids"]
            worst = max(worst, err)
            print(f"{s['name']:12s} P={cfg.parscale_n} T={cfg.parscale_n_tokens:2d} {s['dtype']:4s} "
                  f"layers={cfg.num_layers} H={cfg.hidden_size} heads={cfg.num_heads}/{cfg.num_kv_heads} "
                  f"V={cfg.vocab_size} tied={cfg.tie_word_embeddings!s:5s} lens={s['lens']} "
                  f"max|err|={err:.2e} argmax={'ok' if argmax_ok else 'DIFF'} greedy={'ok' if gen == ref_ids else 'DIFF'}")
    print(f"largest logit error over {a.count} fresh models: {worst:.3e}")


if __name__ == "__main__":
    main()
