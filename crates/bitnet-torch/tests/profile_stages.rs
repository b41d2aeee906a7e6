//! `profile_memory` and `profile_speed` through the real engine (issue #5):
//! a tiny random model and its packed BitNet form are written as fixture
//! files, two `command` stages copy them into their outputs (as the Phase 4
//! stages do), and the profiling stages read them from there.
//!
//! Runs the `bitnet-pipeline` binary next to this test executable, so
//! `cargo build --workspace` must come first (as for tests/cli_torch.rs).
//! No timing assertions: only that every metric exists, is finite and
//! positive, and that both sides were measured.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use bitnet_torch::bitnet::{convert_to_bitnet, Config, ConvertSpec, LlamaModel, UnpackBackend};
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
    let mut meta = BTreeMap::new();
    meta.insert(
        "quant".to_string(),
        serde_json::to_value(serde_json::to_string(&spec.quant).unwrap()).unwrap(),
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

#[test]
fn profile_memory_measures_both_sides_in_isolated_processes() {
    let ws = Ws::new(
        r#"  mem:
    uses: profile_memory
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1, 2], seq_lens: [16] }
  mem_unpack:
    uses: profile_memory
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1], seq_lens: [16], backend: unpack }
"#,
    );
    let o = ws.run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (wb, _) = positive(&ws, "mem", "weight_bytes_baseline");
    let (wn, wmeta) = positive(&ws, "mem", "weight_bytes_bitnet");
    assert_eq!(wmeta["side"], "bitnet");
    // Exact counts: tiny fp32 baseline vs packed codes + fp32 embeddings/head.
    let cfg = Config::tiny();
    assert_eq!(wb as i64, cfg.num_parameters() * 4);
    assert!(
        wn < wb,
        "packed weights {wn} must be smaller than fp32 {wb}"
    );
    let (pb, pmeta) = positive(&ws, "mem", "peak_bytes_baseline");
    let (pn, nmeta) = positive(&ws, "mem", "peak_bytes_bitnet");
    assert!(
        pmeta["method"].as_str().unwrap().contains("VmHWM"),
        "{pmeta}"
    );
    for meta in [&pmeta, &nmeta] {
        let load = meta["load_peak_bytes"].as_f64().unwrap();
        let fwd = meta["forward_peak_bytes"].as_f64().unwrap();
        let peak = if meta["side"] == "bitnet" { pn } else { pb };
        assert_eq!(peak, load.max(fwd), "{meta}");
    }
    // `auto` on CPU with int8 activations: the packed kernels.
    assert!(
        nmeta["backend"].as_str().unwrap().starts_with("kernel-"),
        "{nmeta}"
    );
    assert_eq!(nmeta["side"], "bitnet");
    // The unpack fallback says so, and holds the ternary layers as f32 codes:
    // 4 bytes per ternary weight (every linear but lm_head, kept full precision).
    let (_, umeta) = positive(&ws, "mem_unpack", "peak_bytes_bitnet");
    assert!(
        umeta["backend"]
            .as_str()
            .unwrap()
            .contains("no fast kernel"),
        "{umeta}"
    );
    let (c, f, l) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
    );
    let (kv, d) = (cfg.num_kv_heads(), cfg.head_dim());
    let ternary = l * (2 * c * c + 2 * kv * d * c + 3 * c * f);
    assert_eq!(umeta["backend_extra_bytes"].as_i64(), Some(ternary * 4));
    let (mr, mmeta) = positive(&ws, "mem", "memory_reduction");
    assert!((mr - pb / pn).abs() < 1e-9 * mr);
    assert!(mmeta["method"].is_string());
    let (wr, _) = positive(&ws, "mem", "weight_memory_reduction");
    assert!((wr - wb / wn).abs() < 1e-9 * wr);
    assert!(ws.dir.path().join("runs/1/mem/memory.json").exists());
}

#[test]
fn profile_speed_times_every_shape_on_both_sides() {
    let ws = Ws::new(
        r#"  speed:
    uses: profile_speed
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1, 2], seq_lens: [4, 8], warmup: 1, iters: 3, threads: 1 }
  speed_unpack:
    uses: profile_speed
    needs: [load, train]
    with: { baseline: load, bitnet: train, batch_sizes: [1], seq_lens: [4], decode: false, warmup: 0, iters: 1, backend: unpack }
"#,
    );
    let o = ws.run();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // 2 batch sizes x 2 seq lens + the decode step.
    for side in ["baseline", "bitnet"] {
        for key in [
            "latency_ms_median",
            "latency_ms_p95",
            "latency_ms_p99",
            "samples_per_s",
            "tokens_per_s",
        ] {
            let rows = ws.metric("speed", &format!("{key}_{side}"));
            assert_eq!(rows.len(), 5, "{key}_{side}");
            for (v, meta) in &rows {
                assert!(v.is_finite() && *v > 0.0, "{key}_{side} = {v}");
                assert_eq!(meta["side"], side);
                assert_eq!(meta["threads"], 1);
            }
            assert_eq!(rows[4].1["mode"], "decode");
            assert_eq!(
                (rows[4].1["batch"].as_i64(), rows[4].1["seq"].as_i64()),
                (Some(1), Some(1))
            );
        }
        let med = ws.metric("speed", &format!("latency_ms_median_{side}"));
        for (v, meta) in &med {
            assert!(meta["p99_ms"].as_f64().unwrap() >= meta["p95_ms"].as_f64().unwrap());
            assert!(meta["p95_ms"].as_f64().unwrap() >= *v * 0.999_999);
        }
    }
    let bit = ws.metric("speed", "latency_ms_median_bitnet");
    assert!(bit[0].1["backend"].as_str().unwrap().starts_with("kernel-"));
    let unpack = ws.metric("speed_unpack", "latency_ms_median_bitnet");
    assert_eq!(unpack.len(), 1);
    assert!(unpack[0].1["backend"]
        .as_str()
        .unwrap()
        .contains("no fast kernel"));
    positive(&ws, "speed_unpack", "speedup");
    assert!(ws.metric("speed_unpack", "speedup_decode").is_empty());
    let shape = ws.metric("speed", "shape_speedup");
    assert_eq!(shape.len(), 5);
    let (overall, _) = positive(&ws, "speed", "speedup");
    let logs: f64 = shape.iter().map(|(v, _)| v.ln()).sum::<f64>() / 5.0;
    assert!((overall - logs.exp()).abs() < 1e-9 * overall);
    positive(&ws, "speed", "speedup_decode");
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
