//! Model-level tests on the tiny preset (CPU, fp32).

use std::collections::BTreeMap;

use tch::{nn, Device, Kind, Tensor};

use super::*;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

fn tokens() -> Tensor {
    Tensor::from_slice(&[1i64, 5, 9, 200, 3, 77, 12, 0, 255, 31, 64, 8]).reshape([2, 6])
}

fn fp_model(vs: &nn::VarStore) -> LlamaModel {
    tch::manual_seed(11);
    LlamaModel::new(&vs.root(), &Config::tiny()).unwrap()
}

#[test]
fn tensor_names_are_hf_names() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = fp_model(&vs);
    let vars = vs.variables();
    let expected = expected_tensor_shapes(&m.config);
    assert_eq!(vars.len(), expected.len());
    for (name, shape) in expected {
        assert_eq!(vars.get(&name).map(|t| t.size()), Some(shape), "{name}");
    }
    assert!(vars.contains_key("model.layers.1.self_attn.q_proj.weight"));
}

#[test]
fn forward_shapes_and_hidden_states() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = fp_model(&vs);
    let out = m
        .forward_with(
            &tokens(),
            ForwardOptions {
                output_hidden_states: true,
            },
        )
        .unwrap();
    assert_eq!(out.logits.size(), vec![2, 6, 256]);
    assert_eq!(out.hidden_states.len(), 3);
    assert!(out.hidden_states[2].equal(&out.last_hidden_pre_norm));
    // causal: logits at position 2 do not depend on later tokens
    let t2 = tokens();
    let _ = t2.get(0).get(5).fill_(99);
    let l2 = m.forward(&t2).unwrap();
    assert!(max_abs_diff(&out.logits.narrow(1, 0, 5), &l2.narrow(1, 0, 5)) < 1e-6);
    assert!(max_abs_diff(&out.logits.narrow(1, 5, 1), &l2.narrow(1, 5, 1)) > 0.0);
}

struct Doubler;
impl AttnOutputMixer for Doubler {
    fn mix(&self, attn_out: &Tensor) -> Result<Tensor> {
        Ok(attn_out.f_mul_scalar(2.0)?)
    }
}

#[test]
fn attention_mixer_hook_changes_output() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = fp_model(&vs);
    let base = m.forward(&tokens()).unwrap();
    m.layers[0].self_attn.mixer = Some(Box::new(Doubler));
    let mixed = m.forward(&tokens()).unwrap();
    assert!(max_abs_diff(&base, &mixed) > 1e-6);
}

/// Manual reference: a full-precision model whose linear weights are the
/// dequantized ternary weights (`W_q * w_scale`); activation quantization off.
#[test]
fn converted_forward_equals_manual_dequantized_forward() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fp = fp_model(&vs);
    for mode in [WeightQuant::Ternary, WeightQuant::Binary] {
        let spec = ConvertSpec {
            quant: QuantConfig {
                weight: mode,
                act: ActQuant::Off,
            },
            ..ConvertSpec::default()
        };
        let bvs = nn::VarStore::new(Device::Cpu);
        let (bit, report) = convert_to_bitnet(&fp, &bvs.root(), &spec).unwrap();
        assert_eq!(report.converted.len(), 14); // 7 linears x 2 layers; lm_head kept
        assert!(report.kept.iter().any(|e| e.name == "lm_head.weight"));
        assert!(report.kept.iter().any(|e| e.name == "model.norm.weight"));
        assert_eq!(
            report.converted_parameters + report.kept_parameters,
            fp.config.num_parameters()
        );
        // manual: dequantize every converted weight into a plain fp model
        let dvs = nn::VarStore::new(Device::Cpu);
        let mut manual = LlamaModel::new(&dvs.root(), &fp.config).unwrap();
        let mut sd: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, t) in fp.named_tensors() {
            let conv = report.converted.iter().any(|e| e.name == name);
            let t = if conv {
                let q = quant::quantize_weight(&t, mode).unwrap();
                q.codes.to_kind(Kind::Float) * f64::from(q.w_scale)
            } else {
                t.detach()
            };
            sd.insert(name, t);
        }
        manual.load_state_dict(&sd).unwrap();
        let d = max_abs_diff(
            &bit.forward(&tokens()).unwrap(),
            &manual.forward(&tokens()).unwrap(),
        );
        // Same weights and ops; the STE adds w + (q - w) which rounds to q in f32
        // up to one ulp of |w|, hence a tolerance far below any quantization step.
        assert!(d <= 1e-5, "{mode:?}: {d}");
    }
}

/// Packed inference (unpack backend) vs fake-quant training graph, int8 activations.
#[test]
fn packed_model_matches_fake_quant_graph() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fp = fp_model(&vs);
    let bvs = nn::VarStore::new(Device::Cpu);
    let (bit, _) = convert_to_bitnet(&fp, &bvs.root(), &ConvertSpec::default()).unwrap();
    let packed = bit.to_packed(&UnpackBackend).unwrap();
    assert!(
        packed
            .linears()
            .iter()
            .filter(|(_, l)| l.form() == "packed:unpack-f32")
            .count()
            == 14
    );
    let a = bit.forward(&tokens()).unwrap();
    let b = packed.forward(&tokens()).unwrap();
    let d = max_abs_diff(&a, &b);
    let scale = f64::try_from(a.abs().max()).unwrap();
    eprintln!("packed vs fake-quant: max abs diff {d:e} (max |logit| {scale:.3})");
    // The two graphs differ only in where the scales multiply (f32 rounding,
    // ~1e-7 relative); an activation that lands within that of a rounding tie
    // could flip one int8 code, so the bound is a fraction of one logit step.
    assert!(d <= 1e-4, "{d}");
    // 14 packed linears: 2 bits per weight + 4 bytes of scale each, instead of 32 bits
    let linear_params: i64 = packed
        .linears()
        .iter()
        .filter(|(n, _)| n != "lm_head")
        .map(|(_, l)| l.num_parameters())
        .sum();
    let saved = bit.weight_bytes().unwrap() - packed.weight_bytes().unwrap();
    assert_eq!(saved, linear_params * 4 - (linear_params / 4 + 14 * 4));
    // packed state dict round trip (HF layout, weight_scale = 1 / w_scale)
    let sd: BTreeMap<String, Tensor> = packed.named_tensors().into_iter().collect();
    assert_eq!(sd["model.layers.0.mlp.up_proj.weight"].kind(), Kind::Uint8);
    let again =
        LlamaModel::from_state_dict(&fp.config, &sd, ActQuant::INT8, &UnpackBackend, Device::Cpu)
            .unwrap();
    assert!(max_abs_diff(&again.forward(&tokens()).unwrap(), &b) <= 1e-6);
}

#[test]
fn failed_load_leaves_model_unchanged() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = fp_model(&vs);
    let before = m.forward(&tokens()).unwrap();
    let mut sd: BTreeMap<String, Tensor> = m
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach().zeros_like()))
        .collect();
    sd.insert(
        "model.norm.weight".into(),
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    );
    let e = m.load_state_dict(&sd).unwrap_err();
    assert!(
        matches!(e, BitnetError::ShapeMismatch { ref name, .. } if name == "model.norm.weight"),
        "{e}"
    );
    sd.remove("model.norm.weight");
    let e = m.load_state_dict(&sd).unwrap_err();
    assert!(e.to_string().contains("model.norm.weight"), "{e}");
    assert!(max_abs_diff(&before, &m.forward(&tokens()).unwrap()) == 0.0);
}

#[test]
fn gradients_reach_latent_weights_through_the_model() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fp = fp_model(&vs);
    let bvs = nn::VarStore::new(Device::Cpu);
    let (bit, _) = convert_to_bitnet(&fp, &bvs.root(), &ConvertSpec::default()).unwrap();
    let loss = bit
        .forward(&tokens())
        .unwrap()
        .pow_tensor_scalar(2)
        .mean(Kind::Float);
    loss.backward();
    let vars = bvs.variables();
    let g = vars["model.layers.0.mlp.up_proj.weight"].grad();
    assert!(g.defined() && f64::try_from(g.abs().sum(Kind::Float)).unwrap() > 0.0);
}

/// Issue #7: the model running on the packed CPU kernels gives the fake-quant
/// training graph's logits. Same int8 codes and exact i32 accumulations; the
/// scales are applied in a different order (f32 rounding ~1e-7 relative), so
/// the bound is the same as for the unpack backend above.
#[test]
fn packed_kernel_model_matches_fake_quant_graph() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fp = fp_model(&vs);
    let bvs = nn::VarStore::new(Device::Cpu);
    let (bit, _) = convert_to_bitnet(&fp, &bvs.root(), &ConvertSpec::default()).unwrap();
    let packed = bit.to_packed(&crate::kernels::KernelBackend).unwrap();
    let on_kernel = packed
        .linears()
        .iter()
        .filter(|(_, l)| l.form().starts_with("packed:kernel-"))
        .count();
    assert_eq!(on_kernel, 14, "every converted linear runs on the kernel");
    let a = bit.forward(&tokens()).unwrap();
    let b = packed.forward(&tokens()).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d <= 1e-4, "packed kernel vs fake-quant: {d}");
}

/// Issue #11: prefill of `prompt` tokens then one cached decode step per
/// remaining token gives, position by position, the logits of one full
/// forward over the whole sequence. Also a second chunk of several tokens
/// over a history (the explicit causal mask) and a refused overflow.
fn assert_cached_equals_full(model: &LlamaModel, seq: &Tensor, prompt: i64, what: &str, tol: f64) {
    let (b, total) = (seq.size()[0], seq.size()[1]);
    let full = model.forward(seq).unwrap(); // (B, T, V)
    let mut cache = KvCache::new(model, b, total, Kind::Float).unwrap();
    let mut pieces = vec![model
        .forward_cached(&seq.narrow(1, 0, prompt), &mut cache)
        .unwrap()];
    for p in prompt..total {
        pieces.push(
            model
                .forward_cached(&seq.narrow(1, p, 1), &mut cache)
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), total);
    let cached = Tensor::cat(&pieces, 1);
    let d = max_abs_diff(&full, &cached);
    assert!(
        d <= tol,
        "{what}, prompt {prompt}: max |full - cached| = {d:e}"
    );
    // The last-position head equals the full head's last row.
    cache.clear();
    let last = model.forward_cached_last(seq, &mut cache).unwrap();
    assert_eq!(last.size(), vec![b, 1, full.size()[2]]);
    assert!(max_abs_diff(&last, &full.narrow(1, total - 1, 1)) <= tol);
    // Two chunks: prompt, then the rest at once (T > 1 over a history).
    cache.clear();
    let first = model
        .forward_cached(&seq.narrow(1, 0, prompt), &mut cache)
        .unwrap();
    let rest = model
        .forward_cached(&seq.narrow(1, prompt, total - prompt), &mut cache)
        .unwrap();
    let d = max_abs_diff(&full, &Tensor::cat(&[first, rest], 1));
    assert!(d <= tol, "{what}, chunked at {prompt}: {d:e}");
    // A full cache refuses one more position and is left as it was.
    let e = model
        .forward_cached(&seq.narrow(1, 0, 1), &mut cache)
        .unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
    assert_eq!(cache.len(), total);
}

fn odd_sequence(batch: i64, len: i64) -> Tensor {
    tch::manual_seed(len);
    Tensor::randint(256, [batch, len], (Kind::Int64, Device::Cpu))
}

/// Tolerance 1e-5: the cached and full forwards do the same f32 arithmetic
/// except the attention's reductions, whose order differs with the shapes
/// (a few ulps of values of order 1).
#[test]
fn kv_cache_decode_equals_full_forward_fp() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = fp_model(&vs);
    assert!(m.config.num_kv_heads() < m.config.num_attention_heads); // GQA
    for (batch, prompt, total) in [(1, 1, 9), (1, 7, 13), (2, 5, 12), (1, 13, 14)] {
        assert_cached_equals_full(&m, &odd_sequence(batch, total), prompt, "fp", 1e-5);
    }
}

/// The packed model on the kernels: per-token int8 activations and exact
/// integer accumulations, so decode rows equal prefill rows up to the same
/// float noise as the fp model (an activation within ~1e-7 of an int8
/// rounding tie could still flip; none does for these seeds).
#[test]
fn kv_cache_decode_equals_full_forward_bitnet_packed() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fp = fp_model(&vs);
    let bvs = nn::VarStore::new(Device::Cpu);
    let (bit, _) = convert_to_bitnet(&fp, &bvs.root(), &ConvertSpec::default()).unwrap();
    for backend in [
        &crate::kernels::KernelBackend as &dyn TernaryBackend,
        &UnpackBackend,
    ] {
        let packed = bit.to_packed(backend).unwrap();
        for (batch, prompt, total) in [(1, 1, 9), (1, 7, 13), (2, 3, 11)] {
            assert_cached_equals_full(
                &packed,
                &odd_sequence(batch, total),
                prompt,
                backend.name(),
                1e-5,
            );
        }
    }
    // The latent (fake-quant) BitLinear model goes through the same path.
    assert_cached_equals_full(&bit, &odd_sequence(1, 11), 5, "bitlinear", 1e-5);
}

#[test]
fn kv_cache_rejects_a_batch_it_was_not_made_for() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = fp_model(&vs);
    let mut cache = KvCache::new(&m, 1, 8, Kind::Float).unwrap();
    let e = m.forward_cached(&tokens(), &mut cache).unwrap_err();
    assert!(e.to_string().contains("batch 1"), "{e}");
    assert!(cache.is_empty());
    // 2 layers x K and V x (1, 2 kv heads, 8, 16) f32
    assert_eq!(cache.bytes(), 2 * 2 * 2 * 8 * 16 * 4);
    assert!(KvCache::new(&m, 0, 8, Kind::Float).is_err());
}
