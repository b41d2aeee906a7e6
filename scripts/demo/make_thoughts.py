#!/usr/bin/env python3
"""Write a Quiet-STaR "Phase 3" thought artifact for the demo model.

Why it exists: the `attach_thoughts` stage consumes a Phase 3 artifact
(safetensors with `thought_vectors`, optional `mixing_head.*`, and metadata).
There is no trained Quiet-STaR model for the demo checkpoint, so this script
derives one honestly from the demo model itself and says how:

* thought_vectors [num_thoughts, hidden] f32: k-means centroids of the demo
  model's final hidden states (after `model.norm`) over held-out sentences
  that contain reasoning connectives ("because", "therefore", "if", ...).
  Each clustered point is the mean hidden state of a span of
  `thought_length` consecutive byte positions, i.e. one "thought" summarises
  as many positions as a Quiet-STaR thought has tokens. k-means++ seeding and
  Lloyd iterations use a seeded generator, so the output is deterministic.
* mixing_head.weight [1, hidden], mixing_head.bias [1]: a logistic gate on the
  hidden state, as Quiet-STaR's mixing head. Quiet-STaR found thoughts help
  most on hard tokens, so the gate is fitted (logistic regression, full-batch
  gradient descent) to predict where the base model's top-1 next-byte guess
  is wrong, then its bias is shifted so that the mean gate on the held-out
  sentences is `mean_gate` (default 0.1, the Phase 4 guide's fixed weight):
  the gated mixer starts as strong as the fixed one, but opens more on
  positions where the model is uncertain.

Usage:
    make_thoughts.py --checkpoint data/demo/evomerge-demo.pt \
        --corpus data/corpus/moby-dick.txt --out data/demo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import re
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from demo_common import LlamaConfig, LlamaForCausalLM, byte_encode, split_corpus  # noqa: E402

REASONING = re.compile(
    r"\b(because|therefore|since|thus|hence|if|unless|though|although|for|so that|reason|must|cannot|would)\b",
    re.IGNORECASE,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Derive a Quiet-STaR thought artifact from the demo model.")
    p.add_argument("--checkpoint", required=True, type=pathlib.Path, help="EvoMerge .pt of the demo model")
    p.add_argument("--corpus", required=True, type=pathlib.Path)
    p.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument("--num-thoughts", type=int, default=8)
    p.add_argument("--thought-length", type=int, default=16)
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--mean-gate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def load_model(path: pathlib.Path) -> LlamaForCausalLM:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    fields = LlamaConfig.__dataclass_fields__
    cfg = LlamaConfig(**{k: v for k, v in ckpt["config"].items() if k in fields})
    model = LlamaForCausalLM(cfg)
    model.load_state_dict({k: v.float() for k, v in ckpt["model_state_dict"].items()}, strict=True)
    return model.eval()


def reasoning_sentences(heldout: bytes) -> list[str]:
    text = heldout.decode("utf-8")
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return [s.strip() for s in sentences if REASONING.search(s) and len(s.strip().encode()) >= 16]


@torch.no_grad()
def hidden_and_errors(model: LlamaForCausalLM, sentence: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states (T, C) of one sentence and whether top-1 was wrong (T-1,)."""
    ids = byte_encode(sentence.encode("utf-8"))[: model.cfg.max_position_embeddings].unsqueeze(0)
    h = model.hidden_states(ids)[0]  # (T, C)
    logits = model.lm_head(h)  # (T, V)
    wrong = (logits[:-1].argmax(-1) != ids[0, 1:]).float()  # (T-1,)
    return h, wrong


def kmeans(points: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding then Lloyd iterations; returns (centroids (k, C), assignment (N,))."""
    n = points.shape[0]
    first = torch.randint(0, n, (1,), generator=gen).item()
    centroids = [points[first]]
    for _ in range(1, k):
        d2 = torch.cdist(points, torch.stack(centroids)).pow(2).min(dim=1).values  # (N,)
        nxt = torch.multinomial(d2 / d2.sum(), 1, generator=gen).item()
        centroids.append(points[nxt])
    c = torch.stack(centroids)  # (k, C)
    for _ in range(iters):
        assign = torch.cdist(points, c).argmin(dim=1)  # (N,)
        new = torch.stack([points[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.equal(new, c):
            break
        c = new
    return c, torch.cdist(points, c).argmin(dim=1)


def fit_gate(h: torch.Tensor, y: torch.Tensor, mean_gate: float, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logistic regression y ~ sigmoid(h w + b), then shift b so mean sigmoid = mean_gate."""
    w = torch.zeros(h.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(h @ w + b, y) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w, b = w.detach(), b.detach()
    with torch.no_grad():
        score = h @ w
        # AUC: probability that a wrong position scores above a right one.
        pos, neg = score[y == 1], score[y == 0]
        auc = (pos.unsqueeze(1) > neg.unsqueeze(0)).float().mean().item() if len(pos) and len(neg) else float("nan")
        lo, hi = -50.0, 50.0
        for _ in range(100):  # bisection on the bias: mean gate is monotone in it
            mid = 0.5 * (lo + hi)
            if torch.sigmoid(score + mid).mean().item() < mean_gate:
                lo = mid
            else:
                hi = mid
        bias = torch.tensor([0.5 * (lo + hi)])
        gate = torch.sigmoid(score + bias)
    stats = {
        "gate_auc_top1_wrong": auc,
        "top1_error_rate": y.mean().item(),
        "gate_mean": gate.mean().item(),
        "gate_mean_where_wrong": gate[y == 1].mean().item(),
        "gate_mean_where_right": gate[y == 0].mean().item(),
    }
    return w.unsqueeze(0).contiguous(), bias.contiguous(), stats


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    model = load_model(args.checkpoint)
    _, heldout = split_corpus(args.corpus.read_bytes(), args.heldout_fraction)
    sentences = reasoning_sentences(heldout)
    if not sentences:
        raise SystemExit(f"error: no reasoning-like sentences in the held-out part of {args.corpus}")

    spans, gate_h, gate_y = [], [], []
    for s in sentences:
        h, wrong = hidden_and_errors(model, s)
        gate_h.append(h[:-1])
        gate_y.append(wrong)
        usable = (h.shape[0] // args.thought_length) * args.thought_length
        if usable:
            spans.append(h[:usable].view(-1, args.thought_length, h.shape[1]).mean(1))  # (S, C)
    points = torch.cat(spans)  # (N, C)
    if points.shape[0] < args.num_thoughts:
        raise SystemExit(f"error: {points.shape[0]} spans < {args.num_thoughts} thoughts; lower --thought-length")
    centroids, assign = kmeans(points, args.num_thoughts, args.kmeans_iters, gen)
    sizes = torch.bincount(assign, minlength=args.num_thoughts).tolist()
    inertia = (points - centroids[assign]).pow(2).sum(1).mean().item()
    total_var = (points - points.mean(0)).pow(2).sum(1).mean().item()

    weight, bias, gate_stats = fit_gate(torch.cat(gate_h), torch.cat(gate_y), args.mean_gate)

    ckpt_sha = hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()
    metadata = {
        "num_thoughts": str(args.num_thoughts),
        "thought_length": str(args.thought_length),
        "mixing_strategy": "gated",
        "hidden_size": str(model.cfg.hidden_size),
        "source": (
            "derived, not a trained Quiet-STaR model: k-means centroids of the demo model's final "
            f"hidden states (span means of {args.thought_length} bytes) over {len(sentences)} held-out "
            "reasoning-like sentences; mixing head = logistic gate fitted to the model's top-1 errors, "
            f"bias set for mean gate {args.mean_gate} (scripts/demo/make_thoughts.py)"
        ),
        "base_checkpoint_sha256": ckpt_sha,
        "seed": str(args.seed),
    }
    tensors = {
        "thought_vectors": centroids.float().contiguous(),  # (K, C)
        "mixing_head.weight": weight.float(),  # (1, C)
        "mixing_head.bias": bias.float(),  # (1,)
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / "thoughts-demo.safetensors"
    save_file(tensors, str(out_path), metadata=metadata)
    report = {
        "sentences": len(sentences),
        "sentence_bytes": sum(len(s.encode()) for s in sentences),
        "spans": int(points.shape[0]),
        "cluster_sizes": sizes,
        "kmeans_inertia_per_point": inertia,
        "total_variance_per_point": total_var,
        "explained_variance": 1.0 - inertia / total_var,
        "thought_vector_norms": centroids.norm(dim=1).tolist(),
        **gate_stats,
        "metadata": metadata,
    }
    (args.out / "thoughts_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=2))
    if not math.isfinite(report["explained_variance"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
