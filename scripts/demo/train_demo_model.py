#!/usr/bin/env python3
"""Train the bundled demo model from scratch and save it in EvoMerge format.

Why it exists: the Phase 4 pipeline needs a real LLaMA-style checkpoint in the
EvoMerge `torch.save` layout to load, convert, distil and evaluate, and it must
be small enough to train on 2 CPU cores in minutes. This script is that
checkpoint's recipe; `pipelines/demo-model.yaml` runs it.

What it does:
* reads the corpus, splits it into train / held-out with the rule in
  `demo_common.split_point` (the Rust data module uses the same rule);
* tokenizes with the byte-level tokenizer (vocab 256 = raw bytes, no special
  tokens);
* trains a pure-PyTorch LLaMA (RMSNorm, RoPE, GQA, SwiGLU, no biases) in f32
  with AdamW, linear warm-up and cosine decay, for a fixed number of steps
  (fixed, not time-boxed, so that a seed gives the same weights);
* evaluates next-token NLL on fixed non-overlapping held-out windows;
* writes `evomerge-demo.pt` ({"model_state_dict", "generation",
  "fitness_score", "is_final", "config"}), `config.json` (HF LlamaConfig
  fields) and `train_log.json` (loss curve and final figures).

fitness_score = 1 / held-out perplexity = exp(-mean held-out NLL per byte):
in (0, 1], higher is better, like an EvoMerge fitness.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from demo_common import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    byte_decode,
    byte_encode,
    heldout_nll,
    heldout_windows,
    split_corpus,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the bundled demo LLaMA on a byte-level corpus.")
    p.add_argument("--corpus", required=True, type=pathlib.Path, help="UTF-8 text file")
    p.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (changes float summation order: keep fixed to compare runs)")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=640)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--tie-word-embeddings", action="store_true")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--generation", type=int, default=0,
                   help="EvoMerge generation to record (0: trained from scratch, not evolved)")
    p.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    return p.parse_args()


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cosine)


@torch.no_grad()
def sample(model: LlamaForCausalLM, prompt: str, n: int, seed: int, temperature: float = 0.8) -> str:
    g = torch.Generator().manual_seed(seed)
    ids = byte_encode(prompt.encode("utf-8")).unsqueeze(0)
    model.eval()
    for _ in range(n):
        ctx = ids[:, -model.cfg.max_position_embeddings :]
        logits = model(ctx)[0, -1] / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)
        ids = torch.cat([ids, nxt.unsqueeze(0)], dim=1)
    model.train()
    return byte_decode(ids[0].tolist())


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.hidden_size % args.heads or args.heads % args.kv_heads:
        raise SystemExit("error: hidden-size must divide by heads, and heads by kv-heads")

    data = args.corpus.read_bytes()
    train_bytes, heldout_bytes = split_corpus(data, args.heldout_fraction)
    train = byte_encode(train_bytes)
    heldout = byte_encode(heldout_bytes)
    eval_x, eval_y = heldout_windows(heldout, args.seq_len)
    print(f"corpus {args.corpus}: {len(data)} bytes, train {len(train_bytes)}, held-out {len(heldout_bytes)}"
          f" ({eval_x.shape[0]} windows of {args.seq_len})", flush=True)

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden_size // args.heads,
        rope_theta=args.rope_theta,
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=args.tie_word_embeddings,
    )
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters, config {cfg}", flush=True)

    # Weight decay on matrices only (norm gains and, by convention, embeddings excluded).
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(args.seed)
    span = args.seq_len + 1
    offsets_hi = train.numel() - span
    log = {"steps": [], "evals": []}
    t_start = time.perf_counter()
    init_nll = heldout_nll(model, eval_x, eval_y)
    log["evals"].append({"step": 0, "heldout_nll": init_nll})
    print(f"step 0 held-out nll {init_nll:.4f}", flush=True)
    tokens_seen = 0
    for step in range(args.steps):
        lr = lr_at(step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, offsets_hi + 1, (args.batch_size,), generator=gen)
        batch = train[starts.unsqueeze(1) + torch.arange(span).unsqueeze(0)]  # (B, T+1)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip).item()
        opt.step()
        tokens_seen += y.numel()
        log["steps"].append({"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm})
        if (step + 1) % 10 == 0:
            el = time.perf_counter() - t_start
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} lr {lr:.2e} gnorm {grad_norm:.2f}"
                  f" {tokens_seen / el:.0f} tok/s {el:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            nll = heldout_nll(model, eval_x, eval_y)
            log["evals"].append({"step": step + 1, "heldout_nll": nll})
            print(f"step {step + 1} held-out nll {nll:.4f} ppl {math.exp(nll):.3f}", flush=True)
    train_seconds = time.perf_counter() - t_start

    final_nll = log["evals"][-1]["heldout_nll"]
    ppl = math.exp(final_nll)
    fitness = 1.0 / ppl
    save_dtype = getattr(torch, args.save_dtype)
    state = {k: v.detach().to(save_dtype).contiguous().clone() for k, v in model.state_dict().items()}
    hf_config = cfg.to_hf_dict()
    hf_config["torch_dtype"] = args.save_dtype
    checkpoint = {
        "model_state_dict": state,
        "generation": int(args.generation),
        "fitness_score": float(fitness),
        "is_final": True,
        "config": hf_config,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out / "evomerge-demo.pt")
    (args.out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")

    # Perplexity of the weights as saved (differs from f32 only if save-dtype is 16-bit).
    if save_dtype != torch.float32:
        model.load_state_dict({k: v.float() for k, v in state.items()})
        saved_nll = heldout_nll(model, eval_x, eval_y)
    else:
        saved_nll = final_nll
    prompt = "Call me Ishmael. "
    text = sample(model, prompt, 200, args.seed)
    summary = {
        "corpus": str(args.corpus),
        "corpus_bytes": len(data),
        "train_bytes": len(train_bytes),
        "heldout_bytes": len(heldout_bytes),
        "heldout_windows": int(eval_x.shape[0]),
        "seq_len": args.seq_len,
        "parameters": n_params,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "seed": args.seed,
        "heldout_nll_initial": init_nll,
        "heldout_nll": final_nll,
        "heldout_bits_per_byte": final_nll / math.log(2),
        "heldout_perplexity": ppl,
        "heldout_perplexity_saved_weights": math.exp(saved_nll),
        "fitness_score": fitness,
        "save_dtype": args.save_dtype,
        "sample_prompt": prompt,
        "sample": text,
        "torch_version": torch.__version__,
        "args": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
    }
    log["summary"] = summary
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
