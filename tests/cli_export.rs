//! The `export` stage through the real binary (issue #12): a tiny random
//! LLaMA (hidden 256, so TQ blocks fit; intermediate 320, so `ffn_down` needs
//! the exact fallback) converted to BitNet, exported as an HF folder and as
//! GGUF, each checked by its engine (`verify: required`: transformers and
//! gguf-py from the project's venv, llama.cpp through node-llama-cpp in
//! `.llama-cpp`, all installed by `scripts/setup.sh`), our own
//! loader reading the HF export back, and the refusals (never converted,
//! unknown format, existing path, thought mixers). Needs `cargo build --workspace`.
mod common;
use common::*;

const HIDDEN: usize = 256;
const FFN: usize = 320;
const LAYERS: usize = 2;

/// A tiny random LLaMA: 4 heads of 64 over 2 kv heads, byte vocabulary.
fn tiny_model() -> Vec<u8> {
    tiny_model_with_vocab(256)
}

fn tiny_model_with_vocab(v: usize) -> Vec<u8> {
    let (c, f, kv) = (HIDDEN, FFN, 128usize);
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": v, "hidden_size": c,
        "intermediate_size": f, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": false
    });
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, c])];
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        t.extend([
            (format!("{p}.input_layernorm.weight"), vec![c]),
            (format!("{p}.self_attn.q_proj.weight"), vec![c, c]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, c]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, c]),
            (format!("{p}.self_attn.o_proj.weight"), vec![c, c]),
            (format!("{p}.post_attention_layernorm.weight"), vec![c]),
            (format!("{p}.mlp.gate_proj.weight"), vec![f, c]),
            (format!("{p}.mlp.up_proj.weight"), vec![f, c]),
            (format!("{p}.mlp.down_proj.weight"), vec![c, f]),
        ]);
    }
    t.push(("model.norm.weight".into(), vec![c]));
    t.push(("lm_head.weight".into(), vec![v, c]));
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = t
        .into_iter()
        .enumerate()
        .map(|(i, (n, shape))| {
            let numel = shape.iter().product();
            let vals = if shape.len() == 1 {
                values(numel, i as u64 + 100, 0.2)
                    .iter()
                    .map(|x| 1.0 + x)
                    .collect()
            } else {
                values(numel, i as u64 + 1, 0.1)
            };
            (n, shape, vals)
        })
        .collect();
    safetensors(&tensors, &[("config", config.to_string())])
}

fn thought_artifact() -> Vec<u8> {
    safetensors(
        &[
            (
                "thought_vectors".into(),
                vec![3, HIDDEN],
                values(3 * HIDDEN, 99, 1.0),
            ),
            (
                "mixing_head.weight".into(),
                vec![1, HIDDEN],
                values(HIDDEN, 7, 0.1),
            ),
            ("mixing_head.bias".into(), vec![1], vec![-2.0]),
        ],
        &[("num_thoughts", "3".into()), ("thought_length", "4".into())],
    )
}

fn workspace() -> Workspace {
    let ws = Workspace::new();
    std::fs::write(ws.path().join("tiny.safetensors"), tiny_model()).unwrap();
    std::fs::write(ws.path().join("thoughts.safetensors"), thought_artifact()).unwrap();
    ws
}

fn export_json(ws: &Workspace, run: i64, stage: &str) -> serde_json::Value {
    let p = ws.path().join(format!("runs/{run}/{stage}/export.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

const PIPELINE: &str = r#"version: 1
name: export-test
params: {device: cpu}
stages:
  load:
    uses: load_checkpoint
    with: {path: tiny.safetensors}
  convert:
    uses: convert_bitnet
    needs: [load]
  hf:
    uses: export
    needs: [convert]
    with: {format: hf, verify: required}
  hf_bitlinear:
    uses: export
    needs: [convert]
    with: {format: hf, linear_class: bitlinear, verify: required}
  gguf:
    uses: export
    needs: [convert]
    with: {format: gguf, verify: required}
  gguf_tq1:
    uses: export
    needs: [convert]
    with: {format: gguf, ternary_type: tq1_0, fallback_type: q8_0, kept_type: f32, verify: required}
"#;

#[test]
fn exports_load_in_their_engines_and_agree_with_our_model() {
    let ws = workspace();
    ws.write("p.yaml", PIPELINE);
    let o = ws.run(&["run", "p.yaml", "-q", "--jobs", "2"]);
    let errors: String = ["hf", "hf_bitlinear", "gguf", "gguf_tq1"]
        .iter()
        .map(|s| format!("{s}: {}\n", stage_error(&ws, s)))
        .collect();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}{errors}",
        stdout(&o),
        stderr(&o)
    );

    // transformers: AutoModelForCausalLM loads both linear classes; its logits
    // match ours within the int8-rounding tolerance (2% of the largest logit),
    // and every position with a clear winner has the same argmax.
    for s in ["hf", "hf_bitlinear"] {
        assert_eq!(last_metric(&ws, s, "engine_verified"), 1.0, "{s}");
        let diff = last_metric(&ws, s, "engine_max_abs_diff");
        let scale = last_metric(&ws, s, "engine_max_abs_logit");
        assert!(
            diff > 0.0 && diff <= 0.02 * scale,
            "{s}: {diff} vs max |logit| {scale}"
        );
        let doc = export_json(&ws, 1, s);
        assert_eq!(doc["verify"]["engine"], "transformers");
        assert_eq!(
            doc["verify"]["bitnet_layers"],
            serde_json::json!(7 * LAYERS)
        );
        assert_eq!(
            doc["verify"]["decisive_disagreements"],
            serde_json::json!(0),
            "{s}"
        );
    }
    assert_eq!(last_metric(&ws, "hf", "engine_top1_agreement"), 1.0);
    // Our own loader reads the autobitlinear export back bit for bit.
    assert_eq!(last_metric(&ws, "hf", "roundtrip_max_abs_diff"), 0.0);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path().join("runs/1/hf/hf/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "bitnet");
    assert_eq!(cfg["quantization_config"]["linear_class"], "autobitlinear");
    assert_eq!(
        cfg["quantization_config"]["modules_to_not_convert"],
        serde_json::json!(["lm_head"])
    );
    assert_eq!(
        cfg["architectures"],
        serde_json::json!(["LlamaForCausalLM"])
    );

    // GGUF: gguf-py reads every tensor back to our weights; rows of 320
    // (ffn_down) take the exact fallback and are listed.
    for (s, ternary, fallback, kept) in [
        ("gguf", "TQ2_0", "Q4_0", "F16"),
        ("gguf_tq1", "TQ1_0", "Q8_0", "F32"),
    ] {
        assert_eq!(last_metric(&ws, s, "engine_verified"), 1.0, "{s}");
        let doc = export_json(&ws, 1, s);
        let types: std::collections::BTreeMap<String, String> = doc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(types["blk.0.attn_q.weight"], ternary, "{s}");
        assert_eq!(types["blk.1.ffn_up.weight"], ternary, "{s}");
        assert_eq!(types["blk.0.ffn_down.weight"], fallback, "{s}");
        assert_eq!(types["token_embd.weight"], kept, "{s}");
        assert_eq!(types["output_norm.weight"], "F32", "{s}");
        assert_eq!(
            doc["fallback_tensors"],
            serde_json::json!(["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]),
            "{s}"
        );
        // llama.cpp (node-llama-cpp, installed by scripts/setup.sh) runs the
        // GGUF on the prompt: its perplexity equals ours on the same 225
        // predictions within the issue's 2 % (activations quantized per
        // 256/32-value block there, per token here).
        assert_eq!(last_metric(&ws, s, "llama_cpp_verified"), 1.0, "{s}");
        let (theirs, ours) = (
            last_metric(&ws, s, "llama_cpp_ppl"),
            last_metric(&ws, s, "ppl_ours_same_windows"),
        );
        assert_eq!(ours, last_metric(&ws, s, "ppl_exported_model"), "{s}");
        let rel = last_metric(&ws, s, "llama_cpp_ppl_rel_diff");
        assert!(
            theirs > 1.0 && (theirs / ours - 1.0 - rel).abs() < 1e-9 && rel.abs() <= 0.02,
            "{s}: llama.cpp {theirs} vs ours {ours} ({rel})"
        );
        let v = &doc["verify_llama_cpp"];
        assert_eq!(v["engine"], "llama.cpp", "{s}");
        assert_eq!(v["windows_from"], "prompt", "{s}");
        assert_eq!(
            v["tokens_scored"].as_u64(),
            Some(doc["prompt_tokens"].as_u64().unwrap() - 1),
            "{s}"
        );
        assert!(v["min_probability_mass"].as_f64().unwrap() > 0.999, "{s}");
        let file = ws.path().join(format!("runs/1/{s}/model.gguf"));
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(last_metric(&ws, s, "export_bytes"), bytes.len() as f64);
    }
    // Ternary tensors cost 66 (TQ2_0) and 54 (TQ1_0) bytes per 256 values.
    let q_bytes = |s: &str| -> u64 {
        export_json(&ws, 1, s)["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "blk.0.attn_q.weight")
            .unwrap()["bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(q_bytes("gguf"), (HIDDEN * HIDDEN / 256 * 66) as u64);
    assert_eq!(q_bytes("gguf_tq1"), (HIDDEN * HIDDEN / 256 * 54) as u64);
    // Nothing half-written is left behind.
    let partials = walk(&ws.path().join("runs"))
        .into_iter()
        .filter(|p| p.contains(".partial"))
        .count();
    assert_eq!(partials, 0);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.to_string_lossy().into_owned());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

#[test]
fn bad_exports_are_refused_with_a_reason_and_write_nothing() {
    let ws = workspace();
    // Unknown format: caught by `validate` before anything runs (exit 2).
    ws.write(
        "bad-format.yaml",
        "version: 1\nname: e\nstages:\n  load:\n    uses: load_checkpoint\n    with: {path: tiny.safetensors}\n  x:\n    uses: export\n    needs: [load]\n    with: {format: onnx}\n",
    );
    let o = ws.run(&["run", "bad-format.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("onnx") && stderr(&o).contains("`hf`"),
        "{}",
        stderr(&o)
    );

    ws.write("taken.gguf", "someone's file");
    ws.write(
        "p.yaml",
        r#"version: 1
name: e
params: {device: cpu}
stages:
  load:
    uses: load_checkpoint
    with: {path: tiny.safetensors}
  convert:
    uses: convert_bitnet
    needs: [load]
  thoughts:
    uses: attach_thoughts
    needs: [convert]
    with: {path: thoughts.safetensors}
  never_converted:
    uses: export
    needs: [load]
    with: {format: hf}
  exists:
    uses: export
    needs: [convert]
    with: {format: gguf, path: taken.gguf}
  with_thoughts:
    uses: export
    needs: [thoughts]
    with: {format: hf}
  dropped:
    uses: export
    needs: [thoughts]
    with: {format: gguf, drop_thoughts: true, path: out/model.gguf}
"#,
    );
    std::fs::create_dir_all(ws.path().join("out")).unwrap();
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let e = stage_error(&ws, "never_converted");
    assert!(
        e.contains("full-precision model") && e.contains("convert_bitnet"),
        "{e}"
    );
    let e = stage_error(&ws, "exists");
    assert!(
        e.contains("taken.gguf") && e.contains("overwrite: true"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("taken.gguf")).unwrap(),
        "someone's file"
    );
    let e = stage_error(&ws, "with_thoughts");
    assert!(
        e.contains("thought mixers") && e.contains("drop_thoughts: true"),
        "{e}"
    );
    assert!(!ws.path().join("runs/1/never_converted/hf").exists());
    assert!(!ws.path().join("runs/1/with_thoughts/hf").exists());
    // With drop_thoughts the export goes through and says what it dropped.
    assert!(
        ws.path().join("out/model.gguf").is_file(),
        "{}",
        stage_error(&ws, "dropped")
    );
    let doc = export_json(&ws, 1, "dropped");
    assert_eq!(doc["dropped"], serde_json::json!(["thoughts.safetensors"]));
    let partials = walk(ws.path())
        .into_iter()
        .filter(|p| p.contains(".partial"))
        .count();
    assert_eq!(partials, 0);

    // `overwrite: true` replaces the file.
    ws.write(
        "q.yaml",
        "version: 1\nname: e2\nparams: {device: cpu}\nstages:\n  load:\n    uses: load_checkpoint\n    with: {path: tiny.safetensors}\n  convert:\n    uses: convert_bitnet\n    needs: [load]\n  exists:\n    uses: export\n    needs: [convert]\n    with: {format: gguf, path: taken.gguf, overwrite: true}\n",
    );
    let o = ws.run(&["run", "q.yaml", "-q"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stderr(&o),
        stage_error(&ws, "exists")
    );
    assert_eq!(
        &std::fs::read(ws.path().join("taken.gguf")).unwrap()[..4],
        b"GGUF"
    );
}

/// An engine that is not installed is a warning under `verify: true` (the
/// stage passes, the check is recorded as not run) and an error naming the
/// fix under `verify: required` (issue #12).
#[test]
fn missing_llama_cpp_warns_unless_verify_is_required() {
    let ws = workspace();
    let empty = ws.path().join("no-llama-cpp");
    std::fs::create_dir_all(&empty).unwrap();
    ws.write(
        "p.yaml",
        r#"version: 1
name: e
params: {device: cpu}
stages:
  load:
    uses: load_checkpoint
    with: {path: tiny.safetensors}
  convert:
    uses: convert_bitnet
    needs: [load]
  lenient:
    uses: export
    needs: [convert]
    with: {format: gguf, verify: true}
  strict:
    uses: export
    needs: [convert]
    with: {format: gguf, verify: required, path: strict.gguf}
"#,
    );
    let o = ws
        .cmd()
        .args(["run", "p.yaml", "-q"])
        .env("BITNET_LLAMA_CPP", &empty)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let status = |stage: &str| -> String {
        ws.sqlite()
            .query_row(
                "SELECT status FROM stage_runs WHERE stage = ?1",
                [stage],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        status("lenient"),
        "completed",
        "{}",
        stage_error(&ws, "lenient")
    );
    assert_eq!(last_metric(&ws, "lenient", "engine_verified"), 1.0);
    assert_eq!(last_metric(&ws, "lenient", "llama_cpp_verified"), 0.0);
    let doc = export_json(&ws, 1, "lenient");
    assert_eq!(doc["verify_llama_cpp"]["status"], "not installed");
    let log = std::fs::read_to_string(ws.path().join("runs/1/logs/lenient.log")).unwrap();
    assert!(
        log.contains("warning: verify: the engine is not installed"),
        "{log}"
    );

    assert_eq!(status("strict"), "failed");
    let e = stage_error(&ws, "strict");
    assert!(
        e.contains("node-llama-cpp")
            && e.contains("scripts/setup.sh")
            && e.contains("`verify: required`"),
        "{e}"
    );
}

/// GPT-2's byte -> printable character table, as HF byte-level BPE spells tokens.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE `tokenizer.json` with SmolLM's pre-tokenizer (every
/// digit on its own) and a few merges, one of them (`4 2`) across the
/// boundary that pre-tokenizer draws: llama.cpp's `default` and `gpt-2`
/// splits keep `42` in one piece and merge it, SmolLM's does not, so a GGUF
/// that names the wrong pre-tokenizer tokenizes `42` differently in llama.cpp
/// (checked: with `default` written, the llama.cpp check fails).
fn bpe_tokenizer_json() -> serde_json::Value {
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::json!(i));
    }
    let merges = ["Ġ t", "h e", "Ġt he", "4 2", "a n"];
    for (i, m) in merges.iter().enumerate() {
        vocab.insert(m.replace(' ', ""), serde_json::json!(256 + i));
    }
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 261, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    })
}

/// Issue #12: a BPE-tokenized model's GGUF carries its vocabulary, merges and
/// the pre-tokenizer's llama.cpp name (`smollm` here, not `default`):
/// gguf-py reads the tokens and merges back equal to the tokenizer.json, and
/// llama.cpp tokenizes a prompt with digits to the same ids as our tokenizer.
#[test]
fn bpe_tokenizer_survives_the_gguf_export() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("tiny.safetensors"),
        tiny_model_with_vocab(264),
    )
    .unwrap();
    ws.write(
        "tok/tokenizer.json",
        &serde_json::to_string(&bpe_tokenizer_json()).unwrap(),
    );
    ws.write(
        "p.yaml",
        r#"version: 1
name: bpe
params: {device: cpu}
stages:
  load:
    uses: load_checkpoint
    with: {path: tiny.safetensors}
  convert:
    uses: convert_bitnet
    needs: [load]
  gguf:
    uses: export
    needs: [convert]
    with:
      format: gguf
      verify: required
      tokenizer: tok/tokenizer.json
      prompt: "In 1851 the whale ate 42 tuna, then the man ran to the 4 masts."
"#,
    );
    let prompt_bytes =
        "In 1851 the whale ate 42 tuna, then the man ran to the 4 masts.".len() as u64;
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}{}",
        stdout(&o),
        stderr(&o),
        stage_error(&ws, "gguf")
    );
    let doc = export_json(&ws, 1, "gguf");
    assert_eq!(doc["pre_tokenizer"]["name"], "smollm");
    assert_eq!(doc["pre_tokenizer"]["recognised"], true);
    let tok = &doc["verify"]["tokenizer"];
    assert_eq!(tok["pre"], "smollm", "{tok}");
    assert_eq!(tok["tokens"], 264, "{tok}");
    assert_eq!(tok["merges"], 5, "{tok}");
    assert_eq!(tok["ok"], true, "{tok}");
    assert_eq!(last_metric(&ws, "gguf", "llama_cpp_tokenizer_agrees"), 1.0);
    let v = &doc["verify_llama_cpp"];
    assert_eq!(v["tokenizer_agrees"], true, "{v}");
    // The merges are in use: fewer ids than bytes.
    let ids = v["prompt_tokens_ours"].as_u64().unwrap();
    assert!(ids < prompt_bytes, "{v}");
    assert!(last_metric(&ws, "gguf", "llama_cpp_ppl_rel_diff").abs() <= 0.02);
}
