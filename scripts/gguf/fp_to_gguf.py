"""Writes a full-precision LLaMA model folder (a `load_checkpoint` stage's
output: model.safetensors + config.json) as an F32 GGUF for llama.cpp's
`llama` architecture, for the llama.cpp yardstick (scripts/bench-llama-cpp.sh):
our `export` stage writes BitNet models only, and the demo model has no GGUF
of its own. `scripts/gguf/requant.py` then makes its F16 and Q8_0 forms.

Names, `llama.*` keys and the Q/K row permutation as llama.cpp's
convert_hf_to_gguf.py does them (the same mapping scripts/export/check_gguf.py
checks our exports against); the tokenizer is the byte-level one (GGUF `gpt2`,
256 byte tokens, no merges) unless TOKENIZER.json (an HF BPE tokenizer) is given.

    python scripts/gguf/fp_to_gguf.py MODEL_DIR OUT.gguf [TOKENIZER.json]
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from safetensors.numpy import load_file

# HF -> GGUF tensor names and llama.cpp's Q/K row permutation: one copy, in
# the export checker (scripts/export/check_gguf.py), which is written
# independently of our Rust writer.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "export"))
from check_gguf import byte_symbols, gguf_name, permute  # noqa: E402



def main() -> int:
    model_dir, out = sys.argv[1:3]
    tokenizer = sys.argv[3] if len(sys.argv) > 3 else None
    with open(f"{model_dir}/config.json") as f:
        cfg = json.load(f)
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    vocab = cfg["vocab_size"]
    w = gguf.GGUFWriter(out, "llama")
    w.add_name("fp")
    w.add_file_type(0)  # ALL_F32
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    if tokenizer is None:
        w.add_tokenizer_pre("default")
        tokens = byte_symbols() + [f"<unused{i}>" for i in range(256, vocab)]
        w.add_token_list(tokens)
        w.add_token_types([1] * 256 + [4] * (vocab - 256))
        # llama.cpp refuses a `gpt2` vocabulary without merges and gguf-py
        # cannot write an empty array: one merge whose result is not a token
        # ("ĠĠ"); llama.cpp then falls back to the two byte tokens, so
        # tokenization stays one token per byte.
        w.add_token_merges(["Ġ Ġ"])
        w.add_add_bos_token(False)
    else:
        with open(tokenizer) as f:
            tok = json.load(f)
        by_id = {i: t for t, i in tok["model"]["vocab"].items()}
        types = {}
        for a in tok.get("added_tokens", []):
            by_id[a["id"]] = a["content"]
            types[a["id"]] = 3 if a.get("special") else 4
        w.add_tokenizer_pre("smollm")  # the only BPE model this yardstick uses
        w.add_token_list([by_id.get(i, f"<unused{i}>") for i in range(vocab)])
        w.add_token_types([types.get(i, 1) for i in range(vocab)])
        merges = tok["model"].get("merges", [])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        w.add_add_bos_token(False)
    tensors = load_file(f"{model_dir}/model.safetensors")
    for name, t in sorted(tensors.items()):
        if not name.endswith(".weight"):
            continue
        t = t.astype(np.float32)
        if name.endswith("q_proj.weight"):
            t = permute(t, n_head)
        elif name.endswith("k_proj.weight"):
            t = permute(t, n_kv)
        w.add_tensor(gguf_name(name), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
