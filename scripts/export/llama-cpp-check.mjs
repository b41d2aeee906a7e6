// Runs a GGUF file in llama.cpp, through the npm package node-llama-cpp
// (prebuilt linux-x64 CPU libraries, installed by scripts/bootstrap-llama-cpp.sh
// into ~/.cache/bitnet-pipeline/node-llama-cpp-3.21.1, linked as `.llama-cpp`).
// The `export` stage runs it for `verify` (it is compiled into the plugin);
// scripts/bench-llama-cpp.sh runs it for the speed yardstick.
//
//   .llama-cpp/node scripts/export/llama-cpp-check.mjs REQUEST.json
//
// REQUEST.json: {"model": "x.gguf", "threads": 2, and any of
//   "windows": [[token ids]...], "ppl_ours": 9.5   -> perplexity, as `evaluate`
//        scores: token i+1 given tokens 0..i of each window, no BOS added;
//   "tokenize": ["text", ...]                       -> llama.cpp's token ids;
//   "bench": {"prompt": [ids], "gen_tokens": 64, "repeats": 3}
//        -> prefill tokens/s of the prompt, then greedy decode tokens/s}
// Prints one JSON object on stdout. Exit 3: node-llama-cpp is not installed
// (BITNET_LLAMA_CPP names the folder holding its node_modules; default: the
// working folder).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [requestPath] = process.argv.slice(2);
if (!requestPath) {
  console.error("usage: node llama-cpp-check.mjs REQUEST.json");
  process.exit(2);
}
const req = JSON.parse(readFileSync(requestPath, "utf8"));
const roots = [process.env.BITNET_LLAMA_CPP, process.cwd()].filter(Boolean);
let nlc;
let tried = [];
for (const root of roots) {
  try {
    const require = createRequire(path.join(root, "noop.js"));
    nlc = await import(require.resolve("node-llama-cpp"));
    break;
  } catch (e) {
    tried.push(root);
  }
}
if (!nlc) {
  console.error(`node-llama-cpp not found from ${tried.join(", ")}; run scripts/setup.sh (scripts/bootstrap-llama-cpp.sh)`);
  process.exit(3);
}

const threads = Number(req.threads || 2);
const llama = await nlc.getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath: req.model });
const result = {
  engine: "llama.cpp via node-llama-cpp",
  llama_cpp_release: llama.llamaCppRelease?.release ?? null,
  build: llama.buildType,
  threads,
};

const longest = Math.max(
  1,
  ...(req.windows ?? []).map((w) => w.length),
  req.bench ? req.bench.prompt.length + req.bench.gen_tokens + 1 : 1,
);
const context = await model.createContext({ contextSize: longest + 1, batchSize: longest + 1, threads });
const sequence = context.getSequence();

if (req.windows) {
  // Full softmax (top-k off), so the probability of every target token is there.
  const sampling = { temperature: 1, topK: 0, topP: 1, minP: 0 };
  let nll = 0;
  let count = 0;
  let minMass = 1;
  const t0 = performance.now();
  for (const w of req.windows) {
    await sequence.clearHistory();
    const input = w.map((tok, i) =>
      i < w.length - 1 ? [tok, { generateNext: { probabilities: true, options: sampling } }] : tok,
    );
    const out = await sequence.controlledEvaluate(input);
    for (let i = 0; i < w.length - 1; i++) {
      const probs = out[i].next.probabilities;
      let mass = 0;
      for (const p of probs.values()) mass += p;
      minMass = Math.min(minMass, mass);
      nll -= Math.log(Math.max(probs.get(w[i + 1]) ?? 0, 1e-30));
      count++;
    }
  }
  result.windows = req.windows.length;
  result.tokens_scored = count;
  result.ppl_llama_cpp = Math.exp(nll / count);
  result.ppl_ours = req.ppl_ours ?? null;
  result.relative_diff = req.ppl_ours ? result.ppl_llama_cpp / req.ppl_ours - 1 : null;
  result.min_probability_mass = minMass;
  result.ppl_seconds = (performance.now() - t0) / 1000;
}

if (req.tokenize) {
  result.tokenized = req.tokenize.map((text) => model.tokenize(text, false));
}

if (req.bench) {
  // Prefill: the whole prompt in one batch. Decode: greedy steps after it,
  // one token each, with the KV cache; the first (warm-up) repeat is dropped
  // when there are more than one.
  const { prompt, gen_tokens: gen } = req.bench;
  const repeats = Math.max(1, req.bench.repeats ?? 3);
  const runs = [];
  for (let r = 0; r < repeats + (repeats > 1 ? 1 : 0); r++) {
    await sequence.clearHistory();
    let t = performance.now();
    await sequence.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
    const prefillS = (performance.now() - t) / 1000;
    let decoded = 0;
    t = performance.now();
    for await (const _tok of sequence.evaluate([prompt[prompt.length - 1]], { temperature: 0 })) {
      if (++decoded >= gen) break;
    }
    const decodeS = (performance.now() - t) / 1000;
    runs.push({
      prefill_tokens_per_s: (prompt.length - 1) / prefillS,
      decode_tokens_per_s: decoded / decodeS,
    });
  }
  const kept = runs.length > 1 ? runs.slice(1) : runs;
  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  result.bench = {
    prompt_tokens: prompt.length - 1,
    gen_tokens: gen,
    repeats: kept.length,
    prefill_tokens_per_s: median(kept.map((r) => r.prefill_tokens_per_s)),
    decode_tokens_per_s: median(kept.map((r) => r.decode_tokens_per_s)),
    runs: kept,
  };
}

console.log(JSON.stringify(result));
await context.dispose();
await model.dispose();
