"""Random tiny Qwen2 / ParScale checkpoints in the HF folder format, and loading them back."""
import json
import os

import torch

import st_io
from parscale_ref import parse_config


def make_config(spec: dict) -> dict:
    """HF config.json dict from a fixture spec. Spec keys: vocab, hidden, inter, layers, heads, kv
    (None -> written as JSON null), theta, eps, tie, dtype (F32/BF16/F16), model_type, and for
    qwen2_parscale: P, T, smooth (a key set to the string "omit" is left out of the file)."""
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": spec["model_type"],
        "vocab_size": spec["vocab"],
        "hidden_size": spec["hidden"],
        "intermediate_size": spec["inter"],
        "num_hidden_layers": spec["layers"],
        "num_attention_heads": spec["heads"],
        "num_key_value_heads": spec["kv"],
        "max_position_embeddings": spec.get("max_pos", 128),
        "rms_norm_eps": spec["eps"],
        "rope_theta": spec["theta"],
        "rope_scaling": None,
        "tie_word_embeddings": spec["tie"],
        "hidden_act": "silu",
        "torch_dtype": st_io.TORCH_DTYPE_NAMES[spec["dtype"]],
        "bos_token_id": spec["bos"],
        "eos_token_id": spec["eos"],
        "use_sliding_window": False,
        "sliding_window": spec.get("sliding_window", None),
        "max_window_layers": spec["layers"],
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if spec["model_type"].startswith("qwen3"):
        cfg["architectures"] = ["Qwen3ParScaleForCausalLM" if spec["model_type"] == "qwen3_parscale" else "Qwen3ForCausalLM"]
        cfg["head_dim"] = spec["head_dim"]
        cfg["attention_bias"] = spec.get("attention_bias", False)
    if spec["model_type"] == "qwen3_parscale":
        for key, field in (("P", "parscale_n"), ("T", "parscale_n_tokens"), ("smooth", "parscale_attn_smooth")):
            if spec[key] != "omit":
                cfg[field] = spec[key]
    if spec["model_type"] == "qwen2_parscale":
        cfg["architectures"] = ["Qwen2ParScaleForCausalLM"]
        cfg["auto_map"] = {
            "AutoConfig": "configuration_qwen2_parscale.Qwen2ParScaleConfig",
            "AutoModelForCausalLM": "modeling_qwen2_parscale.Qwen2ParScaleForCausalLM",
        }
        for key, field in (("P", "parscale_n"), ("T", "parscale_n_tokens"), ("smooth", "parscale_attn_smooth")):
            if spec[key] != "omit":
                cfg[field] = spec[key]
    return cfg


def make_weights(cfg_json: dict, spec: dict, seed: int) -> dict:
    """fp32 random weights {name: tensor}; scales chosen so logits spread over a few units, attention
    is far from uniform, prefixes make streams differ and the stream weights are non-uniform."""
    cfg = parse_config(cfg_json)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean

    h, i_sz, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    nh, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    lin = spec.get("lin_std", 0.2)
    w = {"model.embed_tokens.weight": rnd(v, h, std=spec.get("embed_std", 0.3))}
    for li in range(cfg.num_layers):
        pre = f"model.layers.{li}."
        w[pre + "input_layernorm.weight"] = rnd(h, std=0.2, mean=1.0)
        w[pre + "post_attention_layernorm.weight"] = rnd(h, std=0.2, mean=1.0)
        w[pre + "self_attn.q_proj.weight"] = rnd(nh * d, h, std=lin)
        w[pre + "self_attn.q_proj.bias"] = rnd(nh * d, std=0.2)
        w[pre + "self_attn.k_proj.weight"] = rnd(kvh * d, h, std=lin)
        w[pre + "self_attn.k_proj.bias"] = rnd(kvh * d, std=0.2)
        w[pre + "self_attn.v_proj.weight"] = rnd(kvh * d, h, std=lin)
        w[pre + "self_attn.v_proj.bias"] = rnd(kvh * d, std=0.2)
        w[pre + "self_attn.o_proj.weight"] = rnd(h, nh * d, std=lin)
        if not cfg.attention_bias:
            for name in "qkv":
                del w[pre + f"self_attn.{name}_proj.bias"]
        if cfg.qk_norm:
            w[pre + "self_attn.q_norm.weight"] = rnd(d, std=0.2, mean=1.0)
            w[pre + "self_attn.k_norm.weight"] = rnd(d, std=0.2, mean=1.0)
        w[pre + "mlp.gate_proj.weight"] = rnd(i_sz, h, std=lin)
        w[pre + "mlp.up_proj.weight"] = rnd(i_sz, h, std=lin)
        w[pre + "mlp.down_proj.weight"] = rnd(h, i_sz, std=lin)
        if cfg.parscale_n > 1:
            t = cfg.parscale_n_tokens
            w[pre + "self_attn.prefix_k"] = rnd(cfg.parscale_n, kvh, t, d, std=spec.get("prefix_std", 0.8))
            w[pre + "self_attn.prefix_v"] = rnd(cfg.parscale_n, kvh, t, d, std=spec.get("prefix_std", 0.8))
    w["model.norm.weight"] = rnd(h, std=0.2, mean=1.0)
    if cfg.parscale_n > 1:
        p = cfg.parscale_n
        w["model.aggregate_layer.0.weight"] = rnd(h, p * h, std=1.5 / (p * h) ** 0.5)
        w["model.aggregate_layer.0.bias"] = rnd(h, std=0.3)
        w["model.aggregate_layer.2.weight"] = rnd(p, h, std=spec.get("agg_std", 1.0) / h ** 0.5)
        w["model.aggregate_layer.2.bias"] = rnd(p, std=0.5)
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = rnd(v, h, std=spec.get("head_std", 0.3))
    return w


def write_model_folder(folder: str, cfg_json: dict, gen_json: dict, weights_fp32: dict, dtype: str,
                       sharded: bool) -> None:
    """Round every tensor to `dtype` and write config.json, generation_config.json and the weights
    (one file, or two shards plus model.safetensors.index.json)."""
    os.makedirs(folder, exist_ok=True)
    for stale in os.listdir(folder):
        if stale.endswith(".safetensors") or stale.endswith(".json"):
            os.remove(os.path.join(folder, stale))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(gen_json, f, indent=2)
        f.write("\n")
    stored = {name: st_io.round_to_storage(t, dtype) for name, t in weights_fp32.items()}
    if not sharded:
        st_io.write_safetensors(os.path.join(folder, "model.safetensors"), stored)
        return
    names = sorted(stored)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    total = 0
    weight_map = {}
    for fname, part in shards.items():
        total += st_io.write_safetensors(os.path.join(folder, fname), {n: stored[n] for n in part})
        weight_map.update({n: fname for n in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")


def load_model_folder(folder: str):
    """Read a model folder back: (config json dict, parsed RefConfig, {name: float64 tensor})."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg_json = json.load(f)
    index = os.path.join(folder, "model.safetensors.index.json")
    weights = {}
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for fname in files:
        weights.update(st_io.read_safetensors(os.path.join(folder, fname)))
    return cfg_json, parse_config(cfg_json), weights
