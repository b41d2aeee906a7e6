//! Checkpoint tests on committed fixtures (see scripts/fixtures/make_checkpoint_fixtures.py).

use std::collections::BTreeMap;
use std::path::PathBuf;

use tch::{Device, Kind, Tensor};

use super::*;
use crate::bitnet::{
    convert_to_bitnet, ActQuant, ConvertSpec, LlamaModel, QuantConfig, UnpackBackend, WeightQuant,
};

/// CPU always, CUDA when this machine has it (numbers are checked on both).
fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        d.push(Device::Cuda(0));
    }
    d
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `(tokens, logits)` of transformers with SDPA attention.
fn reference() -> (Tensor, Tensor) {
    let (t, l, _) = references();
    (t, l)
}

/// `(tokens, logits_sdpa, logits_eager)`.
fn references() -> (Tensor, Tensor, Tensor) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/fixtures/hf_tiny_reference_logits.safetensors");
    let (ts, meta) = safetensors_io::read_safetensors(&p).unwrap();
    assert!(meta.contains_key("transformers"));
    let get = |n: &str| ts.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    (get("tokens"), get("logits"), get("logits_eager"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

fn logits_of(ck: &Checkpoint, cfg: &Config, device: Device) -> Tensor {
    let m = LlamaModel::from_state_dict(cfg, &ck.tensors, ActQuant::INT8, &UnpackBackend, device)
        .unwrap();
    m.forward(&reference().0.to_device(device))
        .unwrap()
        .to_device(Device::Cpu)
}

/// HF parity: logits of transformers' `LlamaForCausalLM` (stored reference, fp32).
#[test]
fn hf_parity_single_and_sharded_folder() {
    let (_, want, want_eager) = references();
    for (dir, device) in ["hf_tiny", "hf_tiny_sharded"]
        .into_iter()
        .flat_map(|d| devices().into_iter().map(move |dev| (d, dev)))
    {
        let opts = LoadOptions {
            device,
            ..LoadOptions::default()
        };
        let ck = load_checkpoint(&fixture(dir), &opts).unwrap();
        assert_eq!(ck.format, CheckpointFormat::HfFolder);
        let cfg = ck.config.clone().unwrap();
        assert_eq!(cfg.rope_theta(), 500_000.0); // from rope_parameters (transformers 5)
        ck.validate_for(&cfg).unwrap();
        let got = logits_of(&ck, &cfg, device);
        let d = max_abs_diff(&got, &want);
        // transformers' eager attention is a different kernel (explicit softmax):
        // agreement with both shows the parity is not an artefact of sharing SDPA.
        let d_eager = max_abs_diff(&got, &want_eager);
        eprintln!(
            "{dir} on {device:?}: max |logits - transformers| = {d:e} (sdpa), {d_eager:e} (eager)"
        );
        assert!(d <= 1e-4 && d_eager <= 1e-4, "{dir}: {d} / {d_eager}");
    }
}

/// The same parity through the trainable VarStore model.
#[test]
fn hf_parity_through_varstore_model() {
    let ck = load_checkpoint(&fixture("hf_tiny"), &LoadOptions::default()).unwrap();
    let cfg = ck.config.clone().unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let mut m = LlamaModel::new(&vs.root(), &cfg).unwrap();
    let unused = m.load_state_dict(&ck.tensors).unwrap();
    assert!(unused.is_empty(), "{unused:?}");
    let (tokens, want) = reference();
    assert!(max_abs_diff(&m.forward(&tokens).unwrap(), &want) <= 1e-4);
}

#[test]
fn evomerge_pt_loads_with_metadata() {
    let ck = load_checkpoint(&fixture("evomerge_tiny.pt"), &LoadOptions::default()).unwrap();
    assert_eq!(ck.format, CheckpointFormat::TorchPt);
    assert_eq!(ck.metadata["generation"], serde_json::json!(12));
    assert_eq!(ck.metadata["fitness_score"], serde_json::json!(0.8731));
    assert_eq!(ck.metadata["is_final"], serde_json::json!(true));
    assert_eq!(ck.metadata["merge_method"], serde_json::json!("slerp"));
    let hf = load_checkpoint(&fixture("hf_tiny"), &LoadOptions::default()).unwrap();
    assert_eq!(ck.tensors.len(), hf.tensors.len());
    for (name, t) in &hf.tensors {
        assert!(ck.tensors[name].equal(t), "{name}");
    }
    // bf16 weights converted to the run dtype
    let opts = LoadOptions {
        dtype: Some(Kind::Float),
        ..LoadOptions::default()
    };
    let bf = load_checkpoint(&fixture("evomerge_tiny_bf16.pt"), &opts).unwrap();
    let w = &bf.tensors["model.layers.0.mlp.up_proj.weight"];
    assert_eq!(w.kind(), Kind::Float);
    let d = max_abs_diff(w, &hf.tensors["model.layers.0.mlp.up_proj.weight"]);
    assert!(d > 0.0 && d < 1e-2, "bf16 rounding: {d}");
    assert_eq!(bf.metadata["generation"], serde_json::json!(3));
}

#[test]
fn pickle_calling_os_system_is_refused() {
    let e =
        load_checkpoint(&fixture("malicious_os_system.pt"), &LoadOptions::default()).unwrap_err();
    match &e {
        CheckpointError::DisallowedGlobal { global, path } => {
            assert!(
                global == "posix.system" || global == "os.system" || global == "nt.system",
                "{global}"
            );
            assert!(path.ends_with("malicious_os_system.pt"));
        }
        other => panic!("expected DisallowedGlobal, got {other}"),
    }
    assert!(e.to_string().contains("system"));
}

#[test]
fn non_state_dict_and_legacy_pickles_are_typed_errors() {
    let e = load_checkpoint(&fixture("not_state_dict.pt"), &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, CheckpointError::NotAStateDict { .. }), "{e}");
    let e = load_checkpoint(&fixture("unsupported_dtype.pt"), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::UnsupportedDtype { ref tensor, ref dtype, .. } if tensor == "w" && dtype.contains("Complex")),
        "{e}"
    );
    let e = load_checkpoint(&fixture("legacy_format.pt"), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::UnknownFormat { ref reason, .. } if reason.contains("legacy")),
        "{e}"
    );
}

#[test]
fn truncated_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let st = std::fs::read(fixture("hf_tiny/model.safetensors")).unwrap();
    let pt = std::fs::read(fixture("evomerge_tiny.pt")).unwrap();
    for cut in [4usize, 100, st.len() / 2, st.len() - 1] {
        let p = dir.path().join("cut.safetensors");
        std::fs::write(&p, &st[..cut]).unwrap();
        let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Corrupt { .. } | CheckpointError::BadTensor { .. }
            ),
            "{cut}: {e}"
        );
        assert!(e.to_string().contains("cut.safetensors"));
    }
    for cut in [10usize, pt.len() / 2, pt.len() - 10] {
        let p = dir.path().join("cut.pt");
        std::fs::write(&p, &pt[..cut]).unwrap();
        let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
        assert!(e.to_string().contains("cut.pt"), "{e}");
    }
}

/// Builds a safetensors file by hand: header JSON then `data`.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn bad_headers_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    // offsets overrun the data
    std::fs::write(&p, raw_safetensors(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#, &[0u8; 16])).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::BadTensor { ref tensor, .. } if tensor == "b"),
        "{e}"
    );
    // shape disagrees with offsets
    std::fs::write(
        &p,
        raw_safetensors(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0u8; 8],
        ),
    )
    .unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::BadTensor { ref tensor, .. } if tensor == "w"),
        "{e}"
    );
    // unsupported dtypes: known to safetensors but not to torch, and unknown to both
    for dt in ["U16", "F8_E4M3"] {
        let h = format!(r#"{{"q":{{"dtype":"{dt}","shape":[2],"data_offsets":[0,4]}}}}"#);
        std::fs::write(&p, raw_safetensors(&h, &[0u8; 4])).unwrap();
        let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(e, CheckpointError::UnsupportedDtype { ref tensor, .. } if tensor == "q"),
            "{dt}: {e}"
        );
    }
}

#[test]
fn nan_missing_and_shape_mismatch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.safetensors");
    let t = Tensor::from_slice(&[1.0f32, f32::NAN, f32::INFINITY]);
    save_safetensors(&p, &[("model.norm.weight".into(), t)], &BTreeMap::new()).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::NonFinite { ref tensor, count: 2, .. } if tensor == "model.norm.weight"),
        "{e}"
    );

    let mut ck = load_checkpoint(&fixture("hf_tiny"), &LoadOptions::default()).unwrap();
    let cfg = ck.config.clone().unwrap();
    let mut wider = cfg.clone();
    wider.intermediate_size = 96;
    let e = ck.validate_for(&wider).unwrap_err();
    assert!(
        matches!(e, CheckpointError::ShapeMismatch { ref tensor, .. } if tensor.contains("mlp")),
        "{e}"
    );
    ck.tensors.remove("model.layers.1.self_attn.k_proj.weight");
    let e = ck.validate_for(&cfg).unwrap_err();
    assert!(
        matches!(e, CheckpointError::MissingTensor { ref tensor, .. } if tensor == "model.layers.1.self_attn.k_proj.weight"),
        "{e}"
    );
}

#[test]
fn save_round_trip_with_config_metadata_and_name_map() {
    let dir = tempfile::tempdir().unwrap();
    let ck = load_checkpoint(&fixture("evomerge_tiny.pt"), &LoadOptions::default()).unwrap();
    let cfg = load_checkpoint(&fixture("hf_tiny"), &LoadOptions::default())
        .unwrap()
        .config
        .unwrap();
    let p = dir.path().join("out.safetensors");
    let tensors: Vec<(String, Tensor)> = ck
        .tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    save_checkpoint(&p, &tensors, Some(&cfg), &ck.metadata).unwrap();
    let back = load_checkpoint(&p, &LoadOptions::default()).unwrap();
    assert_eq!(back.config.as_ref(), Some(&cfg));
    assert_eq!(back.metadata["generation"], serde_json::json!("12"));
    assert_eq!(back.metadata["format"], serde_json::json!("pt"));
    for (k, v) in &ck.tensors {
        assert!(back.tensors[k].equal(v), "{k}");
    }
    let opts = LoadOptions {
        name_map: NameMap::new(&[NameRule {
            pattern: r"^model\.".into(),
            replace: "m.".into(),
        }])
        .unwrap(),
        ..LoadOptions::default()
    };
    let renamed = load_checkpoint(&p, &opts).unwrap();
    assert!(renamed.tensors.contains_key("m.norm.weight"));
    // a rename that merges two names is refused
    let opts = LoadOptions {
        name_map: NameMap::new(&[NameRule {
            pattern: r"layers\.\d+".into(),
            replace: "layers.0".into(),
        }])
        .unwrap(),
        ..LoadOptions::default()
    };
    assert!(matches!(
        load_checkpoint(&p, &opts).unwrap_err(),
        CheckpointError::DuplicateTensor { .. }
    ));
}

#[test]
fn shard_index_naming_an_absent_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("hf_tiny_sharded");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let idx = dir.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    v["weight_map"]["model.extra.weight"] = serde_json::json!("model-00001-of-00003.safetensors");
    std::fs::write(&idx, v.to_string()).unwrap();
    let e = load_checkpoint(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::MissingTensor { ref tensor, .. } if tensor == "model.extra.weight"),
        "{e}"
    );
}

/// Packed inference vs the fake-quant training graph on the HF fixture's weights
/// (init std 0.2, logits up to ~4), both weight modes, int8 activations.
#[test]
fn packed_form_of_converted_hf_model_matches_fake_quant() {
    for device in devices() {
        let opts = LoadOptions {
            device,
            ..LoadOptions::default()
        };
        let ck = load_checkpoint(&fixture("hf_tiny"), &opts).unwrap();
        let cfg = ck.config.clone().unwrap();
        let vs = tch::nn::VarStore::new(device);
        let mut fp = LlamaModel::new(&vs.root(), &cfg).unwrap();
        fp.load_state_dict(&ck.tensors).unwrap();
        let tokens = reference().0.to_device(device);
        for weight in [WeightQuant::Ternary, WeightQuant::Binary] {
            let spec = ConvertSpec {
                quant: QuantConfig {
                    weight,
                    act: ActQuant::INT8,
                },
                ..ConvertSpec::default()
            };
            let bvs = tch::nn::VarStore::new(device);
            let (bit, report) = convert_to_bitnet(&fp, &bvs.root(), &spec).unwrap();
            assert_eq!(report.converted.len(), 14);
            let packed = bit.to_packed(&UnpackBackend).unwrap();
            let a = bit.forward(&tokens).unwrap();
            let b = packed.forward(&tokens).unwrap();
            let d = max_abs_diff(&a, &b);
            let fp_gap = max_abs_diff(&a, &fp.forward(&tokens).unwrap());
            eprintln!("{device:?} {weight:?}: packed vs fake-quant max abs diff {d:e}; quantized vs fp {fp_gap:.3}");
            // f32 rounding of where the scales multiply (see bitnet::tests); the
            // quantization error itself (fp_gap) is orders of magnitude larger.
            assert!(d <= 1e-4, "{d}");
            assert!(fp_gap > 100.0 * d);
        }
    }
}

/// A torch-style zip with a hand-written `data.pkl`: `{"w": tensor}` whose view is
/// `size` over a FloatStorage of `numel` elements backed by `storage_bytes`.
fn handmade_pt(size: u8, numel: u8, storage_bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut pkl = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK".to_vec();
    pkl.push(numel);
    pkl.extend_from_slice(b"tQK\x00K");
    pkl.push(size);
    pkl.extend_from_slice(b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(&pkl).unwrap();
        z.start_file("archive/data/0", opts).unwrap();
        z.write_all(storage_bytes).unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn handmade_pt_views_are_bounds_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hand.pt");
    let two_floats: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    // well-formed: size 2 over 2 elements
    std::fs::write(&p, handmade_pt(2, 2, &two_floats)).unwrap();
    let ck = load_checkpoint(&p, &LoadOptions::default()).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&ck.tensors["w"]).unwrap(),
        vec![1.5, -2.0]
    );
    // the view overruns its storage
    std::fs::write(&p, handmade_pt(5, 2, &two_floats)).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::BadTensor { ref tensor, ref detail, .. } if tensor == "w" && detail.contains("overruns")),
        "{e}"
    );
    // the storage file is shorter than its declared element count
    std::fs::write(&p, handmade_pt(2, 2, &two_floats[..4])).unwrap();
    let e = load_checkpoint(&p, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, CheckpointError::BadTensor { ref tensor, .. } if tensor == "w"),
        "{e}"
    );
}
