#!/usr/bin/env bash
# The llama.cpp yardstick (issue #11): on the same model, machine and threads,
# llama.cpp's prompt-processing and generation tokens/s for the GGUF forms
#   TQ2_0  our `export` of the BitNet model (rows not divisible by 256 fall
#          back to exact Q4_0, listed in export.json: what llama-quantize does),
#   F16, Q8_0  the full-precision model (scripts/gguf/fp_to_gguf.py +
#          scripts/gguf/requant.py, gguf-py's reference quantizer; the npm
#          build of llama.cpp has no llama-quantize),
# next to ours: `profile_speed` prefill and KV-cache decode of the libtorch
# fp32 and bf16 baselines, and of the BitNet model: decode on the fused Rust
# loop (`decode_path: fused`) with its kept embedding / LM head in fp32, bf16
# and int8 (`kept_dtype`; compare like with like: llama.cpp's TQ2_0 file keeps
# token_embd, its tied head, in F16, next to our bf16 head), prefill (time to
# first token: the last position's logits) on the same path where it applies;
# each row names the path its phases ran. A benchmark, not a test.
#
#   scripts/bench-llama-cpp.sh demo|smollm2 [THREADS...]      (default: 1 2)
#
# Env: BENCH_BIN (default target/release/bitnet-pipeline if it exists, else
# target/debug), BENCH_DIR (default a fresh /tmp folder, removed at the end
# unless KEEP=1), ITERS (our timed iterations, 30), REPEATS (llama.cpp runs
# per form after one warm-up, 5), GEN (llama.cpp tokens generated, 64).
#
# Same work on both sides: a 128-token prompt (the first held-out Moby-Dick
# window, in the model's own tokenizer), batch 1. Ours: prefill = one forward
# of 128 tokens; decode = one step with the KV cache after 128 cached tokens
# (median of ITERS). llama.cpp: prefill = the same 128 tokens in one batch;
# decode = GEN greedy steps after them (contexts 128..128+GEN), tokens/s of
# the whole run, median over REPEATS. Prints a markdown table and the load
# average before and after each engine, and writes results.json.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-demo}"; shift || true
threads=("$@"); ((${#threads[@]})) || threads=(1 2)
iters="${ITERS:-30}"; repeats="${REPEATS:-5}"; gen="${GEN:-64}"
py="$repo/.venv/bin/python"
node="$repo/.llama-cpp/node"
[[ -x "$node" ]] || { echo "error: $repo/.llama-cpp/node missing; run scripts/setup.sh" >&2; exit 2; }

bin="${BENCH_BIN:-}"
if [[ -z "$bin" ]]; then
  if [[ -x "$repo/target/release/bitnet-pipeline" ]]; then bin="$repo/target/release/bitnet-pipeline"
  else bin="$repo/target/debug/bitnet-pipeline"; fi
fi
[[ -x "$bin" ]] || { echo "error: $bin missing; cargo build --release --workspace" >&2; exit 2; }

case "$model" in
  demo)
    load="{path: $repo/data/demo/evomerge-demo.pt, config: $repo/data/demo/config.json}"
    tokenizer_opt=""; eval_tok="" ;;
  smollm2)
    load="{path: $repo/.models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    tokenizer_opt="tokenizer: runs/1/load/tokenizer.json,"; eval_tok=", tokenizer_from: load" ;;
  *) echo "error: model \`$model\` is not demo or smollm2" >&2; exit 2 ;;
esac

work="${BENCH_DIR:-$(mktemp -d /tmp/bench-llama-cpp.XXXXXX)}"
mkdir -p "$work"
[[ "${KEEP:-0}" == 1 || -n "${BENCH_DIR:-}" ]] || trap 'rm -rf "$work"' EXIT
cd "$work"
load_avg() { cut -d' ' -f1 /proc/loadavg; }

# Per thread count, one profile_speed stage per kept dtype of the fused
# BitNet decode; the baseline runs in `dtype` (fp32 for the fp32 and int8
# kept dtypes, bf16 for bf16). Prefill (128 tokens) is timed in every stage.
speed_stages=""
prev="export_tq2"
for t in "${threads[@]}"; do
  for kept in fp32 bf16 int8; do
    dtype=fp32; [[ "$kept" == bf16 ]] && dtype=bf16
    seq=128
    speed_stages+="
  speed_t${t}_$kept:
    uses: profile_speed
    needs: [$prev, load, convert]
    with: {baseline: load, bitnet: convert, dtype: $dtype, batch_sizes: [1], seq_lens: [$seq], decode_contexts: [128], iters: $iters, threads: $t, decode_path: fused, kept_dtype: $kept}"
    prev="speed_t${t}_$kept"
  done
done
cat > bench.yaml <<EOF
version: 1
name: bench-llama-cpp-$model
params: {device: cpu}
stages:
  load:
    uses: load_checkpoint
    with: $load
  convert:
    uses: convert_bitnet
    needs: [load]
    with: {mode: ternary, activation_bits: 8, keep_full_precision: [embed_tokens, lm_head, "*norm*"]}
  export_tq2:
    uses: export
    needs: [convert, load]
    with: {model: convert, format: gguf, ternary_type: tq2_0, $tokenizer_opt eval_data: {corpus: $repo/data/corpus/moby-dick.txt$eval_tok}, eval_tokens: 256, eval_seq_len: 128}
$speed_stages
EOF
echo "bench: $model, threads ${threads[*]}, binary $bin, in $work (load $(load_avg))" >&2
"$bin" --db runs/results.db --runs-dir runs run bench.yaml -q >&2

tok=""; [[ "$model" == smollm2 ]] && tok="runs/1/load/tokenizer.json"
"$py" "$repo/scripts/gguf/fp_to_gguf.py" runs/1/load fp32.gguf $tok
"$py" "$repo/scripts/gguf/requant.py" fp32.gguf f16.gguf f16
"$py" "$repo/scripts/gguf/requant.py" fp32.gguf q8_0.gguf q8_0
rm -f fp32.gguf

for t in "${threads[@]}"; do
  for form in tq2_0 f16 q8_0; do
    gguf="$work/$form.gguf"; [[ "$form" == tq2_0 ]] && gguf="$work/runs/1/export_tq2/model.gguf"
    "$py" - "$gguf" "$t" "$repeats" "$gen" > "req-$form-$t.json" <<'PY'
import json, sys
gguf, threads, repeats, gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import os
# llama_cpp_request.json since issue #12's llama.cpp verify; llama_cpp_windows.json before.
name = "llama_cpp_request.json" if os.path.exists("runs/1/export_tq2/llama_cpp_request.json") else "llama_cpp_windows.json"
w = json.load(open(f"runs/1/export_tq2/{name}"))["windows"][0]
print(json.dumps({"model": gguf, "threads": threads,
                  "bench": {"prompt": w[:129], "gen_tokens": gen, "repeats": repeats}}))
PY
    before="$(load_avg)"
    BITNET_LLAMA_CPP="$repo/.llama-cpp" "$node" "$repo/scripts/export/llama-cpp-check.mjs" "req-$form-$t.json" > "out-$form-$t.json"
    echo "{\"load_before\": $before, \"load_after\": $(load_avg), \"bytes\": $(stat -c %s "$gguf")}" > "load-$form-$t.json"
  done
done

"$py" - "$model" "$bin" "${threads[@]}" <<'PY'
import json, sqlite3, sys
model, binary, threads = sys.argv[1], sys.argv[2], sys.argv[3:]
exp = json.load(open("runs/1/export_tq2/export.json"))
fallback = exp["fallback_tensors"]
rows, out = [], {"model": model, "binary": binary, "fallback_tensors": fallback, "threads": {}}
def shapes(t, kept):
    sp = json.load(open(f"runs/1/speed_t{t}_{kept}/speed.json"))
    return {s["mode"]: s for s in sp["shapes"]}
for t in threads:
    res = {"ours": {}, "llama_cpp": {}}
    for kept, side, name, prefill in (
            ("fp32", "baseline", "ours, libtorch fp32", True),
            ("bf16", "baseline", "ours, libtorch bf16", True),
            ("fp32", "bitnet", "ours, BitNet, fp32 head", True),
            ("bf16", "bitnet", "ours, BitNet, bf16 head", True),
            ("int8", "bitnet", "ours, BitNet, int8 head", True)):
        sh = shapes(t, kept)
        p, d = sh["prefill"][side], sh["decode"][side]
        if side == "bitnet":
            # Which path each phase ran is in the timings' meta (`decode_path`).
            name += f' (prefill {p.get("decode_path", "libtorch")}, decode {d.get("decode_path", "libtorch")})'

        key = f"{side}_{kept}" if side == "bitnet" else f"baseline_{kept}"
        pre = p["tokens_per_s"] if prefill else None
        res["ours"][key] = {"prefill_tokens_per_s": pre, "decode_tokens_per_s": d["tokens_per_s"],
                            "load": [p["load_before"], d["load_after"]]}
        rows.append((t, name, "-", pre, d["tokens_per_s"], f'{p["load_before"]}-{d["load_after"]}'))
    for form, label in (("tq2_0", "llama.cpp TQ2_0 (our export)"), ("f16", "llama.cpp F16"), ("q8_0", "llama.cpp Q8_0")):
        b = json.load(open(f"out-{form}-{t}.json"))["bench"]
        l = json.load(open(f"load-{form}-{t}.json"))
        res["llama_cpp"][form] = {**b, **l}
        rows.append((t, label, f'{l["bytes"]:,}', b["prefill_tokens_per_s"], b["decode_tokens_per_s"],
                     f'{l["load_before"]}-{l["load_after"]}'))
    res["ratios"] = {f"bitnet_{k}_decode_vs_llama_cpp_{f}":
                     res["ours"][f"bitnet_{k}"]["decode_tokens_per_s"] / res["llama_cpp"][f]["decode_tokens_per_s"]
                     for k in ("fp32", "bf16", "int8") for f in ("tq2_0", "f16", "q8_0")}
    out["threads"][t] = res
json.dump(out, open("results.json", "w"), indent=1)
print(f"model {model}; TQ2_0 export: {len(fallback)} matrices fell back to exact Q4_0 (rows not divisible by 256)")
print("| threads | engine / form | GGUF bytes | prefill tokens/s (128) | decode tokens/s | load average |")
print("|---|---|---|---|---|---|")
for t, name, size, p, d, l in rows:
    pre = "-" if p is None else f"{p:.1f}"
    print(f"| {t} | {name} | {size} | {pre} | {d:.1f} | {l} |")
llama_decode = {t: out["threads"][t]["llama_cpp"]["tq2_0"]["decode_tokens_per_s"] for t in threads}
for t in threads[1:]:
    if llama_decode[t] < llama_decode[threads[0]]:
        print(f"warning: llama.cpp TQ2_0 decodes slower at {t} threads ({llama_decode[t]:.1f} tokens/s) than at "
              f"{threads[0]} ({llama_decode[threads[0]]:.1f}): its {t}-thread figures are not a yardstick "
              f"(its threads meet at a spin barrier after every op), do not quote ratios against them")
for t in threads:
    r = out["threads"][t]["ratios"]
    for k in ("fp32", "bf16", "int8"):
        tq, f16 = r[f"bitnet_{k}_decode_vs_llama_cpp_tq2_0"], r[f"bitnet_{k}_decode_vs_llama_cpp_f16"]
        verdict = lambda x, goal: f"{x:.2f}x ({'met' if x >= goal else 'FAILED'}, target {goal}x)"
        print(f"threads {t}, {k} head: BitNet decode / llama.cpp TQ2_0 {verdict(tq, 0.8)}, "
              f"/ F16 {verdict(f16, 1.5)}, / Q8_0 {r[f'bitnet_{k}_decode_vs_llama_cpp_q8_0']:.2f}x")
PY
echo "results: $work/results.json" >&2
