//! `profile_memory` and `profile_speed` through the real engine (issue #5):
//! a tiny random model and its packed BitNet form are written as fixture
//! files, two `command` stages copy them into their outputs (as the Phase 4
//! stages do), and the profiling stages read them from there.
//!
//! Runs the `bitnet-pipeline` binary next to this test executable, so
//! `cargo build --workspace` must come first (as for tests/cli_torch.rs).
//! No timing assertions: the tests check relationships that a wrong model,
//! a wrong metadata key or a wrong unit would break (exact byte counts,
//! parameter counts equal on both stages, medians and intervals consistent
//! with the recorded samples).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use bitnet_torch::bitnet::{
    convert_to_bitnet, Config, ConvertSpec, LlamaModel, UnpackBackend, SPEC_METADATA_KEY,
};
use bitnet_torch::checkpoint::save_checkpoint;
use tch::{nn, Device};

fn binary() -> PathBuf {
    // target/debug/deps/profile_stages-HASH -> target/debug/bitnet-pipeline
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("bitnet-pipeline");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

/// Writes `fixture/{model,packed}.safetensors` and `config.json`.
fn write_fixture(dir: &Path) {
    let fixture = dir.join("fixture");
    std::fs::create_dir_all(&fixture).unwrap();
    tch::manual_seed(5);
    let cfg = Config::tiny();
    let vs = nn::VarStore::new(Device::Cpu);
    let fp = LlamaModel::new(&vs.root(), &cfg).unwrap();
    save_checkpoint(
        &fixture.join("model.safetensors"),
        &fp.named_tensors(),
        Some(&cfg),
        &BTreeMap::new(),
    )
    .unwrap();
    std::fs::write(fixture.join("config.json"), cfg.to_json_string()).unwrap();
    let bvs = nn::VarStore::new(Device::Cpu);
    let spec = ConvertSpec::default();
    let (bit, _) = convert_to_bitnet(&fp, &bvs.root(), &spec).unwrap();
    let packed = bit.to_packed(&UnpackBackend).unwrap();
    // Metadata as convert_bitnet/train write it: the spec under its key.
    let mut meta = BTreeMap::new();
    meta.insert(
        SPEC_METADATA_KEY.to_string(),
        serde_json::Value::String(serde_json::to_string(&spec).unwrap()),
    );
    save_checkpoint(
        &fixture.join("packed.safetensors"),
        &packed.named_tensors(),
        Some(&cfg),
        &meta,
    )
    .unwrap();
}

const PIPELINE_HEAD: &str = r#"version: 1
name: profile
params: { device: cpu }
stages:
  load:
    uses: command
    with: { cmd: "cp fixture/model.safetensors fixture/config.json $BP_OUT/" }
  train:
    uses: command
    with: { cmd: "cp fixture/packed.safetensors fixture/config.json $BP_OUT/" }
"#;

struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    fn new(stages: &str) -> Ws {
        let dir = tempfile::tempdir().unwrap();
        write_fixture(dir.path());
        std::fs::write(
            dir.path().join("p.yaml"),
            format!("{PIPELINE_HEAD}{stages}"),
        )
        .unwrap();
        Ws { dir }
    }

    fn run(&self) -> Output {
        std::process::Command::new(binary())
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .args(["run", "p.yaml", "-q"])
            .output()
            .unwrap()
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("runs/results.db")).unwrap()
    }

    /// (value, meta JSON) of every row of `key` in stage `stage`.
    fn metric(&self, stage: &str, key: &str) -> Vec<(f64, serde_json::Value)> {
        let conn = self.db();
        let mut stmt = conn
            .prepare("SELECT value, meta FROM metrics WHERE stage = ?1 AND key = ?2 ORDER BY step")
            .unwrap();
        stmt.query_map([stage, key], |r| {
            let meta: Option<String> = r.get(1)?;
            Ok((
                r.get::<_, f64>(0)?,
                meta.map(|m| serde_json::from_str(&m).unwrap())
                    .unwrap_or(serde_json::Value::Null),
            ))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }

    fn stage_error(&self, stage: &str) -> String {
        self.db()
            .query_row(
                "SELECT error FROM stage_runs WHERE stage = ?1",
                [stage],
                |r| r.get::<_, Option<String>>(0),
            )
            .unwrap()
            .unwrap_or_default()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn positive(ws: &Ws, stage: &str, key: &str) -> (f64, serde_json::Value) {
    let rows = ws.metric(stage, key);
    assert_eq!(rows.len(), 1, "`{key}` recorded once: {rows:?}");
    let (v, meta) = rows[0].clone();
    assert!(v.is_finite() && v > 0.0, "`{key}` = {v}");
    (v, meta)
}

/// Bytes of the stored u8 codes and the number of ternary weights of the
/// tiny model: every linear but `lm_head` (kept full precision).
fn ternary_layers(cfg: &Config) -> (i64, i64) {
    let (c, f, l) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
    );
    let (kv, d, h) = (cfg.num_kv_heads(), cfg.head_dim(), cfg.num_attention_heads);
    // (out, in) of q, k, v, o, gate, up, down.
    let shapes = [
        (h * d, c),
        (kv * d, c),
        (kv * d, c),
        (c, h * d),
        (f, c),
        (f, c),
        (c, f),
    ];
    let codes: i64 = shapes.iter().map(|(o, i)| (o + 3) / 4 * i).sum();
    let weights: i64 = shapes.iter().map(|(o, i)| o * i).sum();
    (l * codes, l * weights)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn profile_memory_measures_both_sides_in_isolated_processes() {
    let ws = Ws::new(
        r#"  mem:
    uses: profile_memory
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1, 2], seq_lens: [16], repeats: 3 }
  mem_unpack:
    uses: profile_memory
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1], seq_lens: [16], backend: unpack, repeats: 1 }
  mem_fused:
    uses: profile_memory
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1], seq_lens: [16], decode_tokens: 4, repeats: 1 }
"#,
    );
    let o = ws.run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Issue #15: at batch 1 the BitNet side runs the fused form read straight
    // from the fixture's packed file (written as before `kept_dtype`: fp32
    // kept layers, no key in its spec), and both sides run the same work.
    let (_, fb) = positive(&ws, "mem_fused", "peak_bytes_baseline");
    let (_, fnm) = positive(&ws, "mem_fused", "peak_bytes_bitnet");
    assert_eq!(fnm["decode_path"]["path"], "fused", "{fnm}");
    assert_eq!(fnm["decode_path"]["head"], "kept-fp32", "{fnm}");
    assert!(
        fnm["backend"].as_str().unwrap().starts_with("fused-"),
        "{fnm}"
    );
    assert_eq!(fb["decode_path"]["path"], "libtorch", "{fb}");
    assert_eq!(fb["work"], fnm["work"]);
    assert!(
        fnm["work"]
            .as_str()
            .unwrap()
            .contains("then 4 greedy decode steps"),
        "{fnm}"
    );
    assert_eq!(fnm["inputs"]["bitnet_decode_path"], "fused");
    let (fused_stored, _) = positive(&ws, "mem_fused", "weight_bytes_stored_bitnet");
    let (torch_stored, _) = positive(&ws, "mem", "weight_bytes_stored_bitnet");
    assert_eq!(
        fused_stored, torch_stored,
        "the same file, counted the same"
    );
    let (_, mmeta) = positive(&ws, "mem", "peak_bytes_bitnet");
    assert_eq!(mmeta["inputs"]["bitnet_decode_path"], "libtorch", "{mmeta}");
    let cfg = Config::tiny();
    let (codes, ternary) = ternary_layers(&cfg);
    // Exact counts: the fp32 baseline stores 4 bytes per parameter; the
    // BitNet side stores the same minus 4 bytes per ternary weight, plus
    // the codes and one f32 scale per ternary layer.
    let (sb, smeta) = positive(&ws, "mem", "weight_bytes_stored_baseline");
    assert_eq!(sb as i64, cfg.num_parameters() * 4, "{smeta}");
    let (sn, _) = positive(&ws, "mem", "weight_bytes_stored_bitnet");
    let layers = cfg.num_hidden_layers * 7;
    assert_eq!(
        sn as i64,
        cfg.num_parameters() * 4 - ternary * 4 + codes + layers * 4
    );
    // Resident: the baseline holds what it stores; the kernel side holds its
    // repacked layout instead of the released codes, never less than stored.
    let (rb, _) = positive(&ws, "mem", "weight_bytes_resident_baseline");
    assert_eq!(rb, sb);
    let (rn, rmeta) = positive(&ws, "mem", "weight_bytes_resident_bitnet");
    assert!(rn >= sn, "resident {rn} < stored {sn}: {rmeta}");
    assert!(rmeta["counted"].as_str().unwrap().contains("all copies"));
    // The unpack fallback holds 4 bytes per ternary weight instead of codes.
    let (ru, _) = positive(&ws, "mem_unpack", "weight_bytes_resident_bitnet");
    assert_eq!(ru as i64, sn as i64 - codes + ternary * 4);
    // Both sides are the models `evaluate` scores: same parameter count as
    // the config says (no thoughts in this fixture).
    for side in ["baseline", "bitnet"] {
        let (p, _) = positive(&ws, "mem", &format!("parameters_{side}"));
        assert_eq!(p as i64, cfg.num_parameters(), "{side}");
    }
    // The peak is the median of the repeats, each max(load, forward).
    let (pb, pmeta) = positive(&ws, "mem", "peak_bytes_baseline");
    let (pn, nmeta) = positive(&ws, "mem", "peak_bytes_bitnet");
    assert!(
        pmeta["method"].as_str().unwrap().contains("VmHWM"),
        "{pmeta}"
    );
    for (peak, meta) in [(pb, &pmeta), (pn, &nmeta)] {
        let peaks: Vec<f64> = meta["peaks_bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(peaks.len(), 3, "{meta}");
        assert_eq!(peak, median(peaks));
        let composition = &meta["composition"];
        assert_eq!(
            composition["weights_resident_bytes"].as_f64().unwrap(),
            meta["weight_bytes_resident"].as_f64().unwrap()
        );
    }
    // `auto` on CPU with int8 activations from the spec: the packed kernels.
    assert!(
        nmeta["matmul"].as_str().unwrap().starts_with("kernel-"),
        "{nmeta}"
    );
    assert_eq!(
        nmeta["act_quant"]["act"],
        serde_json::json!({"kind": "per_token_absmax", "bits": 8})
    );
    assert!(nmeta["act_quant"]["source"]
        .as_str()
        .unwrap()
        .contains("conversion spec"));
    let (_, umeta) = positive(&ws, "mem_unpack", "peak_bytes_bitnet");
    assert!(
        umeta["backend"]
            .as_str()
            .unwrap()
            .contains("no fast kernel"),
        "{umeta}"
    );
    let (mr, mmeta) = positive(&ws, "mem", "memory_reduction");
    assert!((mr - pb / pn).abs() < 1e-9 * mr);
    assert!(mmeta["method"].is_string());
    assert_eq!(mmeta["repeats"], 3);
    let (wr, _) = positive(&ws, "mem", "weight_memory_reduction");
    assert!((wr - rb / rn).abs() < 1e-9 * wr);
    let (ws_, _) = positive(&ws, "mem", "weight_memory_reduction_stored");
    assert!((ws_ - sb / sn).abs() < 1e-9 * ws_);
    assert!(ws.dir.path().join("runs/1/mem/memory.json").exists());
}

#[test]
fn profile_speed_times_every_shape_on_both_sides() {
    let ws = Ws::new(
        r#"  speed:
    uses: profile_speed
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1, 2], seq_lens: [4, 8], decode_contexts: [6], warmup: 1, iters: 5, threads: 1 }
  speed_unpack:
    uses: profile_speed
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1], seq_lens: [4], decode_contexts: [], warmup: 0, iters: 2, backend: unpack }
"#,
    );
    let o = ws.run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // 2 batch sizes x 2 seq lens + a decode step after 6 cached positions.
    for side in ["baseline", "bitnet"] {
        for key in [
            "latency_ms_median",
            "latency_ms_p95",
            "samples_per_s",
            "tokens_per_s",
        ] {
            let rows = ws.metric("speed", &format!("{key}_{side}"));
            assert_eq!(rows.len(), 5, "{key}_{side}");
            for (v, meta) in &rows {
                assert!(v.is_finite() && *v > 0.0, "{key}_{side} = {v}");
                assert_eq!(meta["side"], side);
                assert_eq!(meta["threads"], 1);
                assert_eq!(meta["iters"], 5);
                assert!(meta["load_before"].is_number(), "{meta}");
            }
            assert_eq!(rows[4].1["mode"], "decode");
            assert_eq!(
                (rows[4].1["batch"].as_i64(), rows[4].1["seq"].as_i64()),
                (Some(1), Some(6))
            );
            assert_eq!(rows[4].1["context"], 6);
        }
        // Order statistics in order, and throughput from the median.
        let med = ws.metric("speed", &format!("latency_ms_median_{side}"));
        let tps = ws.metric("speed", &format!("tokens_per_s_{side}"));
        for ((v, meta), (t, _)) in med.iter().zip(&tps) {
            let q = |k: &str| meta[k].as_f64().unwrap();
            assert!(q("min_ms") <= q("p25_ms") && q("p25_ms") <= *v && *v <= q("p75_ms"));
            assert!(q("p75_ms") <= q("p95_ms") && q("p95_ms") <= q("max_ms"));
            // A decode step makes one token per sequence.
            let per_sequence = if meta["mode"] == "decode" {
                1.0
            } else {
                meta["seq"].as_f64().unwrap()
            };
            let tokens = meta["batch"].as_f64().unwrap() * per_sequence;
            assert!((t - tokens / (v / 1e3)).abs() < 1e-6 * t);
        }
    }
    let bit = ws.metric("speed", "latency_ms_median_bitnet");
    assert!(bit[0].1["matmul"].as_str().unwrap().starts_with("kernel-"));
    // Issue #11: prefill and decode of batch 1 run on the fused loop, batch
    // 2 on the libtorch model; every shape computes the last position's
    // logits only (time to first token), and so does the baseline.
    let paths: Vec<_> = bit
        .iter()
        .map(|(_, m)| (m["batch"].as_i64().unwrap(), m["decode_path"].clone()))
        .collect();
    for (batch, path) in &paths {
        assert_eq!(
            path,
            if *batch == 1 { "fused" } else { "libtorch" },
            "{paths:?}"
        );
    }
    for side in ["baseline", "bitnet"] {
        for (_, m) in ws.metric("speed", &format!("latency_ms_median_{side}")) {
            assert_eq!(m["head"], "last position only", "{m}");
        }
    }
    let unpack = ws.metric("speed_unpack", "latency_ms_median_bitnet");
    assert_eq!(unpack.len(), 1);
    // No packed kernels, no fused loop: the libtorch model's prefill.
    assert_eq!(unpack[0].1["decode_path"], "libtorch");
    assert!(unpack[0].1["backend"]
        .as_str()
        .unwrap()
        .contains("no fast kernel"));
    // `decode_contexts: []` turns decode off.
    positive(&ws, "speed_unpack", "speedup_prefill");
    assert!(ws.metric("speed_unpack", "speedup_decode").is_empty());
    // No unnamed figure: prefill and decode are separate.
    assert!(ws.metric("speed", "speedup").is_empty());
    let shape = ws.metric("speed", "shape_speedup");
    assert_eq!(shape.len(), 5);
    let medians = |side: &str| ws.metric("speed", &format!("latency_ms_median_{side}"));
    let (b, n) = (medians("baseline"), medians("bitnet"));
    for (i, (v, meta)) in shape.iter().enumerate() {
        assert!((v - b[i].0 / n[i].0).abs() < 1e-9 * v, "shape {i}");
        let (lo, hi) = (
            meta["ci95_low"].as_f64().unwrap(),
            meta["ci95_high"].as_f64().unwrap(),
        );
        assert!(lo <= *v && *v <= hi, "{v} outside [{lo}, {hi}]");
    }
    let (prefill, pmeta) = positive(&ws, "speed", "speedup_prefill");
    let logs: f64 = shape[..4].iter().map(|(v, _)| v.ln()).sum::<f64>() / 4.0;
    assert!((prefill - logs.exp()).abs() < 1e-9 * prefill);
    assert_eq!(pmeta["shapes"].as_array().unwrap().len(), 4);
    assert!(pmeta["ci95_low"].as_f64().unwrap() <= prefill);
    let (decode, dmeta) = positive(&ws, "speed", "speedup_decode");
    assert!((decode - shape[4].0).abs() < 1e-12 * decode);
    assert!(dmeta["definition"]
        .as_str()
        .unwrap()
        .contains("with the KV cache"));
    assert!(ws.metric("speed", "speedup_single_token").is_empty());
    for side in ["baseline", "bitnet"] {
        let (p, _) = positive(&ws, "speed", &format!("parameters_{side}"));
        assert_eq!(p as i64, Config::tiny().num_parameters(), "{side}");
    }
}

#[test]
fn a_missing_packed_file_is_an_error_naming_it() {
    // `bitnet: load` points at a stage that has no packed form.
    let ws = Ws::new(
        r#"  speed:
    uses: profile_speed
    needs: [load, train]
    with: { baseline: load, bitnet: load, batch_sizes: [1], iters: 1 }
  mem:
    uses: profile_memory
    needs: [load]
    with: { baseline: load, bitnet: train }
"#,
    );
    let o = ws.run();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = ws.stage_error("speed");
    assert!(
        err.contains("upstream stage `load` has no `packed.safetensors`"),
        "{err}"
    );
    let err = ws.stage_error("mem");
    assert!(
        err.contains("`train`, which is not in its `needs`"),
        "{err}"
    );
}

#[test]
fn bad_configs_are_rejected_before_running() {
    let ws = Ws::new(
        r#"  speed:
    uses: profile_speed
    needs: [load, train]
    with: { baseline: load, bitnet: train, dtype: fp8 }
  mem:
    uses: profile_memory
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [0] }
"#,
    );
    let o = ws.run();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("unknown variant `fp8`"), "{t}");
    assert!(
        t.contains("`batch_sizes` has 0; sizes must be in 1..=65536"),
        "{t}"
    );
    // Nothing ran: the run was refused before any stage started.
    assert!(!ws.dir.path().join("runs/1/load").exists());
}
