#!/usr/bin/env python3
"""Check that an EvoMerge demo checkpoint is a genuine HF LLaMA.

Why: the demo model is written in plain PyTorch so that training needs no
`transformers`; this check loads the same state dict into
`transformers.LlamaForCausalLM` (strict: every tensor name must match) and
compares logits with our implementation on held-out text. It needs
`transformers` in the venv and is not part of the pipeline.

Usage: check_hf_equivalence.py --checkpoint data/demo/evomerge-demo.pt --corpus data/corpus/moby-dick.txt
"""

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from demo_common import LlamaConfig, LlamaForCausalLM, byte_encode, split_corpus  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True, type=pathlib.Path)
    p.add_argument("--corpus", required=True, type=pathlib.Path)
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    args = p.parse_args()
    torch.set_num_threads(1)
    import transformers

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    hf_cfg_dict = dict(ckpt["config"])
    state = {k: v.float() for k, v in ckpt["model_state_dict"].items()}
    fields = LlamaConfig.__dataclass_fields__
    ours = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf_cfg_dict.items() if k in fields}))
    ours.load_state_dict(state, strict=True)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in hf_cfg_dict.items() if k not in ("architectures", "torch_dtype")})
    hf_cfg._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        print(f"FAIL: missing {missing}, unexpected {unexpected}")
        return 1
    _, heldout = split_corpus(args.corpus.read_bytes(), args.heldout_fraction)
    ids = byte_encode(heldout[: 4 * hf_cfg.max_position_embeddings]).view(4, -1)
    with torch.no_grad():
        a = ours(ids)
        b = hf(input_ids=ids).logits
    diff = (a - b).abs().max().item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    print(f"transformers {transformers.__version__}: max |logit diff| {diff:.3e}, top-1 agreement {agree:.4f}")
    # f32 on CPU, different op order (eager softmax vs SDPA): 1e-3 absolute is generous.
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
