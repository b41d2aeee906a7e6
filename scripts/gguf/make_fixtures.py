#!/usr/bin/env python3
"""Writes the GGUF test fixtures of `crates/bitnet-torch/src/checkpoint/gguf/tests.rs`.

Run by the Rust tests at test time (never committed): `python make_fixtures.py OUT_DIR`.
Everything is written by the `gguf` package (gguf-py, pinned in scripts/setup.sh), so the
Rust reader is checked against the reference implementation of the format, not against
itself:

- `types.gguf`: one tensor per GGML type the reader supports. Quantized blocks are random
  bytes (every bit pattern of scales and quants is exercised, including the ones a
  quantizer would rarely produce), with the fp16 scale fields forced finite.
  `types/<NAME>.f32` is gguf-py's `quants.dequantize` of that tensor (little-endian f32).
- `tiny-llama.gguf`: a 2-layer llama with tied embeddings and a byte-level BPE vocabulary,
  whose Q/K rows are permuted exactly as llama.cpp's `convert_hf_to_gguf.py` does;
  `tiny-llama-hf.safetensors` holds the same weights in HF layout (what the reader must
  give back).
- `tiny-llama-untied.gguf`: the same with its own `output.weight` (F16) and Q8_0 matrices.
- error cases: `no-tokenizer.gguf`, `gpt2-arch.gguf`, `spm-tokenizer.gguf`.
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

# The byte-level vocabulary strings, shared with the exporters' checks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "export"))
from check_gguf import byte_symbols  # noqa: E402

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(15)

# (type, byte offsets of fp16 scale fields inside a block)
QUANT_TYPES = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def finite_f16(n):
    # Scales of moderate size in both signs: products stay far from f32 overflow.
    return (rng.standard_normal(n) * 0.05).astype(np.float16)


def quant_tensor(qtype, rows, cols):
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in QUANT_TYPES[qtype]:
        raw[:, off:off + 2] = finite_f16(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * type_size)


def write_types():
    w = gguf.GGUFWriter(OUT / "types.gguf", "llama")
    ref_dir = OUT / "types"
    ref_dir.mkdir(exist_ok=True)
    rows, cols = 3, 512
    manifest = {}
    for qtype in [T.F32, T.F16, T.BF16]:
        x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
        x[0, :4] = [0.0, -0.0, 1e-8, 65504.0]
        if qtype == T.F32:
            data = x
        elif qtype == T.F16:
            data = x.astype(np.float16)
        else:
            data = quantize(x, T.BF16)
        w.add_tensor(qtype.name, data, raw_dtype=qtype if qtype == T.BF16 else None)
        manifest[qtype.name] = [rows, cols]
        dequantize(data, qtype).astype("<f4").tofile(ref_dir / f"{qtype.name}.f32")
    for qtype in QUANT_TYPES:
        raw = quant_tensor(qtype, rows, cols)
        w.add_tensor(qtype.name, raw, raw_dtype=qtype)
        manifest[qtype.name] = [rows, cols]
        dequantize(raw, qtype).astype("<f4").tofile(ref_dir / f"{qtype.name}.f32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (OUT / "types.json").write_text(json.dumps(manifest))


def permute(weights, n_head, n_head_kv):
    # Verbatim from llama.cpp convert_hf_to_gguf.py (LlamaModel.permute).
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


BYTE_SYMBOLS = byte_symbols()
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ 1", "1 2"]
TOKENS = ["<|endoftext|>"] + BYTE_SYMBOLS + ["Ġt", "he", "Ġthe", "Ġ1", "12"]
TOKEN_TYPES = [3] + [1] * (len(TOKENS) - 1)


def tiny_llama(path, tied=True, matrix_type=None, tokenizer="gpt2", arch="llama"):
    n_layer, hidden, ffn, n_head, n_kv, vocab = 2, 64, 96, 4, 2, len(TOKENS)
    head_dim = hidden // n_head
    hf = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(n_layer):
        p = f"model.layers.{i}"
        hf[f"{p}.input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        hf[f"{p}.post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        for name, shape in [("self_attn.q_proj", (n_head * head_dim, hidden)),
                            ("self_attn.k_proj", (n_kv * head_dim, hidden)),
                            ("self_attn.v_proj", (n_kv * head_dim, hidden)),
                            ("self_attn.o_proj", (hidden, n_head * head_dim)),
                            ("mlp.gate_proj", (ffn, hidden)),
                            ("mlp.up_proj", (ffn, hidden)),
                            ("mlp.down_proj", (hidden, ffn))]:
            hf[f"{p}.{name}.weight"] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    hf["model.norm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    if not tied:
        hf["lm_head.weight"] = (rng.standard_normal((vocab, hidden)) * 0.1).astype(np.float32)

    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    if tokenizer == "gpt2":
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(TOKENS)
        w.add_token_types(TOKEN_TYPES)
        w.add_token_merges(MERGES)
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
    elif tokenizer == "llama":
        w.add_tokenizer_model("llama")
        w.add_token_list(TOKENS)
        w.add_token_scores([0.0] * len(TOKENS))
        w.add_token_types(TOKEN_TYPES)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    expected = {}
    for name, x in hf.items():
        if name in names:
            gname = names[name]
        else:
            _, _, i, rest = name.split(".", 3)
            gname = f"blk.{i}.{parts[rest.removesuffix('.weight')]}.weight"
        stored = x
        if name.endswith("q_proj.weight"):
            stored = permute(x, n_head, n_head)
        elif name.endswith("k_proj.weight"):
            stored = permute(x, n_head, n_kv)
        if name == "lm_head.weight":
            data = stored.astype(np.float16)
            w.add_tensor(gname, data)
            expected[name] = data.astype(np.float32)
        elif matrix_type is not None and x.ndim == 2 and name != "model.embed_tokens.weight":
            q = quantize(np.ascontiguousarray(stored), matrix_type)
            w.add_tensor(gname, q, raw_dtype=matrix_type)
            deq = dequantize(q, matrix_type).reshape(stored.shape)
            # The reader must undo the permutation after dequantizing.
            if name.endswith("q_proj.weight"):
                deq = permute_back(deq, n_head, n_head)
            elif name.endswith("k_proj.weight"):
                deq = permute_back(deq, n_head, n_kv)
            expected[name] = deq.astype(np.float32)
        else:
            w.add_tensor(gname, np.ascontiguousarray(stored))
            expected[name] = x
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def permute_back(weights, n_head, n_head_kv):
    # transformers' GGUF loader (`_reverse_permute_weights`), the inverse of `permute`.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


write_types()
save_file(tiny_llama(OUT / "tiny-llama.gguf"), str(OUT / "tiny-llama-hf.safetensors"))
save_file(tiny_llama(OUT / "tiny-llama-untied.gguf", tied=False, matrix_type=T.Q8_0),
          str(OUT / "tiny-llama-untied-hf.safetensors"))
tiny_llama(OUT / "no-tokenizer.gguf", tokenizer=None)
tiny_llama(OUT / "spm-tokenizer.gguf", tokenizer="llama")
tiny_llama(OUT / "gpt2-arch.gguf", arch="gpt2")
print("ok")
