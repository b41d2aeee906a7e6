// Runs a GGUF export in llama.cpp (through the npm package node-llama-cpp,
// which ships prebuilt linux-x64 llama.cpp libraries) and measures its
// perplexity on the held-out token windows the `export` stage wrote, next to
// ours on the same windows, plus llama.cpp's prefill and decode speed.
//
// Not part of the test suite (node-llama-cpp is ~730 MB): install it once with
//   npm i -E --prefix ~/.cache/bitnet-pipeline/node node-llama-cpp@3.21.1
// and run
//   NODE_PATH=~/.cache/bitnet-pipeline/node/node_modules \
//     node scripts/export/llama-cpp-check.mjs runs/<run>/<stage>/model.gguf \
//          runs/<run>/<stage>/llama_cpp_windows.json [threads]
// The windows file comes from an `export` stage with `format: gguf` and
// `eval_text`; it holds the token windows and our perplexity on them.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modelPath, windowsPath, threadsArg] = process.argv.slice(2);
if (!modelPath || !windowsPath) {
  console.error("usage: node llama-cpp-check.mjs MODEL.gguf WINDOWS.json [threads]");
  process.exit(2);
}
const require = createRequire(path.join(process.cwd(), "noop.js"));
let nlc;
try {
  nlc = await import(require.resolve("node-llama-cpp"));
} catch (e) {
  console.error(`not installed: node-llama-cpp (${e.message}); see the comment at the top of this script`);
  process.exit(3);
}
const threads = Number(threadsArg || 2);
const spec = JSON.parse(readFileSync(windowsPath, "utf8"));
const llama = await nlc.getLlama({ gpu: false, build: "never" });
const model = await llama.loadModel({ modelPath });
const seqLen = spec.seq_len;
const context = await model.createContext({ contextSize: seqLen + 1, batchSize: seqLen + 1, threads });
const sequence = context.getSequence();

// Perplexity: for each window of T+1 tokens, the probability of token i+1
// given tokens 0..i, as our `evaluate` does (no BOS: the byte-level model has none).
let nll = 0;
let count = 0;
let minMass = 1;
const t0 = performance.now();
for (const w of spec.windows) {
  await sequence.clearHistory();
  const input = w.map((tok, i) =>
    i < w.length - 1
      ? [tok, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }]
      : tok,
  );
  const out = await sequence.controlledEvaluate(input);
  for (let i = 0; i < w.length - 1; i++) {
    const probs = out[i].next.probabilities;
    let mass = 0;
    for (const p of probs.values()) mass += p;
    minMass = Math.min(minMass, mass);
    const p = probs.get(w[i + 1]) ?? 0;
    nll -= Math.log(Math.max(p, 1e-30));
    count++;
  }
}
const pplSeconds = (performance.now() - t0) / 1000;
const ppl = Math.exp(nll / count);

// Speed: prefill of one window, then greedy decode steps.
await sequence.clearHistory();
const w = spec.windows[0].slice(0, seqLen / 2);
let t = performance.now();
await sequence.evaluateWithoutGeneratingNewTokens(w);
const prefillS = (performance.now() - t) / 1000;
let decoded = 0;
t = performance.now();
for await (const _tok of sequence.evaluate([w[w.length - 1]], { temperature: 0 })) {
  if (++decoded >= seqLen / 2 - 1) break;
}
const decodeS = (performance.now() - t) / 1000;

const result = {
  engine: "llama.cpp via node-llama-cpp",
  threads,
  windows: spec.windows.length,
  tokens_scored: count,
  ppl_llama_cpp: ppl,
  ppl_ours: spec.ppl_ours,
  relative_diff: spec.ppl_ours ? ppl / spec.ppl_ours - 1 : null,
  min_probability_mass: minMass,
  ppl_seconds: pplSeconds,
  prefill_tokens_per_s: w.length / prefillS,
  decode_tokens_per_s: decoded / decodeS,
};
console.log(JSON.stringify(result, null, 1));
await context.dispose();
await model.dispose();
