#!/usr/bin/env python3
"""Writes a random-weight Llama in Hugging Face layout for the GPU check, with nothing
downloaded: config.json and model.safetensors (bf16) made here, the tokenizer files copied
from a folder `modelgen` wrote (its vocabulary sizes the embeddings).

    gpu-model.py OUT --tokenizer DIR [--size 1b|small]

`1b` is Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192):
about 0.97 B parameters with this vocabulary. `small` (hidden 512, 4 layers) is for a
CPU run of the check. Weights come from torch on the GPU when there is one (fast), else
from torch on the CPU, else from numpy; the safetensors file is written tensor by tensor.
"""

import argparse
import json
import os
import shutil
import struct
import sys

SHAPES = {
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192),
    "small": dict(hidden=512, layers=4, heads=8, kv_heads=4, intermediate=1536),
}


def tensors(vocab, hidden, layers, heads, kv_heads, intermediate):
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    yield "model.embed_tokens.weight", (vocab, hidden), "random"
    yield "lm_head.weight", (vocab, hidden), "random"
    for i in range(layers):
        p = f"model.layers.{i}"
        yield f"{p}.self_attn.q_proj.weight", (heads * head_dim, hidden), "random"
        yield f"{p}.self_attn.k_proj.weight", (kv, hidden), "random"
        yield f"{p}.self_attn.v_proj.weight", (kv, hidden), "random"
        yield f"{p}.self_attn.o_proj.weight", (hidden, heads * head_dim), "random"
        yield f"{p}.mlp.gate_proj.weight", (intermediate, hidden), "random"
        yield f"{p}.mlp.up_proj.weight", (intermediate, hidden), "random"
        yield f"{p}.mlp.down_proj.weight", (hidden, intermediate), "random"
        yield f"{p}.input_layernorm.weight", (hidden,), "ones"
        yield f"{p}.post_attention_layernorm.weight", (hidden,), "ones"
    yield "model.norm.weight", (hidden,), "ones"


def bf16_maker():
    """A function (shape, kind) -> little-endian bf16 bytes, and what makes them."""
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        gen = torch.Generator(device=device).manual_seed(7)

        def make(shape, kind):
            if kind == "ones":
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16)
            return t.contiguous().view(torch.int16).cpu().numpy().tobytes()

        return make, f"torch {torch.__version__} on {device}"
    except ImportError:
        import numpy as np

        rng = np.random.default_rng(7)

        def make(shape, kind):
            n = 1
            for d in shape:
                n *= d
            if kind == "ones":
                f = np.ones(n, dtype=np.float32)
            else:
                f = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
            # bf16 is the upper half of an f32 (rounded to nearest even).
            bits = f.view(np.uint32)
            bits = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
            return (bits >> np.uint32(16)).astype("<u2").tobytes()

        return make, f"numpy {np.__version__}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tokenizer", required=True, help="a folder modelgen wrote (tokenizer files)")
    ap.add_argument("--size", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--max-positions", type=int, default=4096)
    args = ap.parse_args()

    shape = SHAPES[args.size]
    tok = args.tokenizer
    with open(os.path.join(tok, "tokenizer.json")) as f:
        tokenizer = json.load(f)
    vocab = len(tokenizer["model"]["vocab"]) + sum(
        1 for t in tokenizer.get("added_tokens", []) if t["content"] not in tokenizer["model"]["vocab"]
    )
    with open(os.path.join(tok, "generation_config.json")) as f:
        generation = json.load(f)
    bos = generation["bos_token_id"]
    eos = generation["eos_token_id"]
    os.makedirs(args.out, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(tok, name), os.path.join(args.out, name))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape["hidden"],
        "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        "head_dim": shape["hidden"] // shape["heads"],
        "vocab_size": vocab,
        "max_position_embeddings": args.max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos[0] if isinstance(eos, list) else eos,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    plan = list(tensors(vocab, **shape))
    header, offset = {}, 0
    for name, dims, _ in plan:
        n = 2
        for d in dims:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    make, how = bf16_maker()
    with open(os.path.join(args.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dims, kind in plan:
            f.write(make(dims, kind))
    params = offset // 2
    print(json.dumps({"params": params, "bytes": offset, "vocab": vocab, "made_with": how, **shape}))


if __name__ == "__main__":
    sys.exit(main())
