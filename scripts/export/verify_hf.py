"""Runs an HF BitNet export in transformers, for the `export` stage's `verify`.

Loads the folder with `AutoModelForCausalLM.from_pretrained` (no custom code,
no trust_remote_code) and writes its logits on the given token ids to a
safetensors file; the stage compares them with our model's. Also records which
module classes transformers built, so the stage can check that the linears
really became transformers' BitNet layers.

    python verify_hf.py MODEL_DIR TOKENS_JSON OUT.safetensors

Exit status 3: transformers (or torch, safetensors, accelerate) is not installed.
`torch.compile` is disabled (TORCHDYNAMO_DISABLE=1 by the caller): transformers'
BitNet layers decorate their quantizers with it, and compiling them on CPU costs
tens of seconds for the same ops run eagerly.
"""
import json
import sys

try:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    import accelerate  # noqa: F401  (transformers' BitNet quantizer requires it)
except ImportError as e:  # the engine is not installed
    print(f"not installed: {e}", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    model_dir, tokens_path, out_path = sys.argv[1:4]
    with open(tokens_path) as f:
        ids = json.load(f)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long)).logits[0]
    classes = {}
    for m in model.modules():
        name = type(m).__name__
        classes[name] = classes.get(name, 0) + 1
    save_file(
        {"logits": logits.float().contiguous()},
        out_path,
        metadata={
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "model_class": type(model).__name__,
            "module_classes": json.dumps(classes),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
