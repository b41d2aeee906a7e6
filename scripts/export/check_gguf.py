"""Checks a GGUF export with gguf-py (llama.cpp's own Python package), for the
`export` stage's `verify`.

Reads the file with `gguf.GGUFReader`, dequantizes every tensor with
`gguf.quants.dequantize`, and compares it with the HF export of the same
model, unpacked and renamed here independently of our Rust writer: names as
llama.cpp's `convert_hf_to_gguf.py` maps them, Q/K rows permuted with its
`reshape(n_head, 2, d/2, ...).swapaxes(1, 2)`, dims in GGML order. Ternary
values must agree up to the f16 rounding of the scale (2^-11 relative).

    python check_gguf.py MODEL.gguf HF_DIR OUT.json [TOKENIZER.json]

With TOKENIZER.json (the model's HF BPE tokenizer), the vocabulary and merges
gguf-py reads from the file must equal it token for token.

Exit status 3: gguf (or numpy, safetensors) is not installed.
"""
import json
import sys

try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
    from safetensors.numpy import load_file
except ImportError as e:
    print(f"not installed: {e}", file=sys.stderr)
    sys.exit(3)

NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def byte_symbols() -> list:
    """GPT-2's byte -> printable character table (HF tokenizers' ByteLevel):
    the 256 byte tokens as the vocabulary strings a byte-level GGUF holds."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def gguf_name(hf: str) -> str:
    base = hf[: -len(".weight")]
    if base == "model.embed_tokens":
        return "token_embd.weight"
    if base == "model.norm":
        return "output_norm.weight"
    if base == "lm_head":
        return "output.weight"
    _, _, rest = base.partition("model.layers.")
    i, _, tail = rest.partition(".")
    return f"blk.{i}.{NAMES[tail]}.weight"


def unpack(packed: np.ndarray) -> np.ndarray:
    """transformers' unpack_weights: rows [i*R, (i+1)*R) in bits 2i, value = code - 1."""
    rows = packed.shape[0]
    out = np.zeros((rows * 4, packed.shape[1]), dtype=np.float32)
    for i in range(4):
        out[i * rows:(i + 1) * rows] = ((packed >> (2 * i)) & 3).astype(np.float32) - 1
    return out


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_tokenizer(reader, path: str) -> dict:
    """The GGUF's tokens and merges against an HF tokenizer.json."""
    with open(path) as f:
        tok = json.load(f)
    model = tok["model"]
    by_id = {i: t for t, i in model["vocab"].items()}
    for a in tok.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    field = lambda k: reader.fields[k].contents() if k in reader.fields else None
    tokens = field("tokenizer.ggml.tokens") or []
    got_merges = field("tokenizer.ggml.merges") or []
    wrong = [i for i, t in by_id.items() if i >= len(tokens) or tokens[i] != t]
    return {
        "tokens": len(tokens),
        "merges": len(got_merges),
        "pre": field("tokenizer.ggml.pre"),
        "tokens_differing": len(wrong),
        "first_differing": wrong[:5],
        "merges_equal": got_merges == merges,
        "ok": not wrong and got_merges == merges,
    }


def main() -> int:
    gguf_path, hf_dir, out_path = sys.argv[1:4]
    tokenizer_path = sys.argv[4] if len(sys.argv) > 4 else None
    with open(f"{hf_dir}/config.json") as f:
        cfg = json.load(f)
    direct = cfg["quantization_config"]["linear_class"] == "autobitlinear"
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hf = load_file(f"{hf_dir}/model.safetensors")
    expected = {}
    for name, t in hf.items():
        if name.endswith(".weight_scale"):
            continue
        if t.dtype == np.uint8:
            s = float(hf[name[: -len("weight")] + "weight_scale"][0])
            t = unpack(t) * np.float32(s if direct else 1.0 / s)
        t = t.astype(np.float32)
        if name.endswith("q_proj.weight"):
            t = permute(t, n_head)
        elif name.endswith("k_proj.weight"):
            t = permute(t, n_kv)
        expected[gguf_name(name)] = t

    reader = gguf.GGUFReader(gguf_path)
    fields = {}
    for key in ("general.architecture", "tokenizer.ggml.model"):
        f = reader.fields.get(key)
        fields[key] = f.contents() if f is not None else None
    tensors = []
    ok = True
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = expected.pop(t.name, None)
        entry = {
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
        }
        if ref is None:
            entry["problem"] = "not in the HF export"
            ok = False
        elif values.shape != ref.shape:
            entry["problem"] = f"shape {list(values.shape)} vs HF {list(ref.shape)}"
            ok = False
        else:
            diff = np.abs(values - ref)
            bound = np.float32(2.0 ** -11) * np.abs(ref) + np.float32(2.0 ** -24)
            entry["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
            entry["within_f16_rounding"] = bool((diff <= bound).all())
            ok = ok and entry["within_f16_rounding"]
        tensors.append(entry)
    missing = sorted(expected)
    ok = ok and not missing and fields["general.architecture"] == "llama"
    tokenizer = check_tokenizer(reader, tokenizer_path) if tokenizer_path else None
    ok = ok and (tokenizer is None or tokenizer["ok"])
    with open(out_path, "w") as f:
        json.dump(
            {"ok": ok, "gguf_version": gguf.__version__ if hasattr(gguf, "__version__") else None,
             "fields": fields, "tensors": tensors, "missing": missing, "tokenizer": tokenizer},
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
