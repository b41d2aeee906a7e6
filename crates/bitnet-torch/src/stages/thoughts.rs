//! Quiet-STaR thought mixers: the full-precision module `attach_thoughts`
//! hangs on attention outputs, and its file form.
//!
//! Each mixed layer reads the thought vectors with attention from its own
//! output, projects the read-out and blends it in:
//! `out = (1 - g) * a + g * proj(softmax(a K^T / sqrt(C)) K)`, with `a` the
//! `o_proj` output `(B, T, C)` and `K` the thoughts `(num_thoughts, C)`.
//! `g` is fixed, a learned scalar per layer (`sigmoid(gate_logit)`), or
//! gated per position by a mixing head on `a` (Quiet-STaR). `proj` starts as
//! the identity. Mixers are never ternarized: they sit outside the linears
//! a `ConvertSpec` selects, and train in the full-precision parameter group.
//!
//! File form (`thoughts.safetensors`): `thought_vectors` `[K, C]`,
//! `layers.{i}.proj.weight` `[C, C]`, `layers.{i}.gate_logit` `[1]` (learned),
//! `layers.{i}.mixing_head.weight` `[1, C]` and `.bias` `[1]` (gated), and
//! `__metadata__` with `strategy`, `gate`, `layers`, `num_thoughts`,
//! `thought_length`, `hidden_size`, `source`. A Phase 3 artifact is the same
//! minus the per-layer entries (its `mixing_head.*`, if any, is shared by
//! all layers as the starting point).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::stages::attach_thoughts::MixStrategy;
use tch::{nn, Device, Kind, Tensor};

use crate::bitnet::{AttnOutputMixer, LlamaModel};
use crate::checkpoint::safetensors_io::read_safetensors;
use crate::checkpoint::save_safetensors;

/// A Phase 3 artifact: thought vectors, optional shared mixing head
/// `(weight [1, C], bias [1])`, and its `__metadata__`.
pub type Artifact = (Tensor, Option<(Tensor, Tensor)>, BTreeMap<String, String>);

/// Per-layer trainable pieces.
#[derive(Debug)]
pub struct LayerMix {
    pub proj: Tensor,
    pub gate_logit: Option<Tensor>,
    pub head_weight: Option<Tensor>,
    pub head_bias: Option<Tensor>,
}

/// Thought vectors and the mixers of every mixed layer.
#[derive(Debug)]
pub struct ThoughtSet {
    pub strategy: MixStrategy,
    pub gate: f64,
    pub thoughts: Tensor,
    pub layers: BTreeMap<i64, LayerMix>,
    pub metadata: BTreeMap<String, String>,
}

fn strategy_name(s: MixStrategy) -> &'static str {
    match s {
        MixStrategy::Fixed => "fixed",
        MixStrategy::Learned => "learned",
        MixStrategy::Gated => "gated",
    }
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// Reads a safetensors thought file, mapping every failure to a message naming it.
fn read_file(path: &Path) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    if !path.is_file() {
        bail!("{}: thought artifact not found", path.display());
    }
    let (tensors, meta) = read_safetensors(path)?;
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_to_kind(Kind::Float)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok((tensors, meta))
}

fn thought_vectors(path: &Path, tensors: &BTreeMap<String, Tensor>, hidden: i64) -> Result<Tensor> {
    let t = tensors.get("thought_vectors").ok_or_else(|| {
        anyhow!(
            "{}: no `thought_vectors` tensor; a thought artifact needs thought_vectors [num_thoughts, hidden]",
            path.display()
        )
    })?;
    match t.size().as_slice() {
        [k, c] if *k >= 1 && *c == hidden => Ok(t.shallow_clone()),
        [_, c] => bail!(
            "{}: thought_vectors have hidden size {c} but the model's hidden_size is {hidden}; the artifact belongs to another model (produce it from this checkpoint or use `derive_thoughts`)",
            path.display()
        ),
        other => bail!(
            "{}: thought_vectors must be [num_thoughts, {hidden}], found {other:?}",
            path.display()
        ),
    }
}

fn check_shape(path: &Path, name: &str, t: &Tensor, want: &[i64]) -> Result<()> {
    if t.size() != want {
        bail!(
            "{}: `{name}` has shape {:?}, expected {want:?} for this model",
            path.display(),
            t.size()
        );
    }
    Ok(())
}

impl ThoughtSet {
    /// Fresh mixers for `layers` around given thought vectors `(K, C)`;
    /// `head` is a shared starting mixing head (`gated`).
    pub fn new(
        strategy: MixStrategy,
        gate: f64,
        thoughts: Tensor,
        layers: &[i64],
        head: Option<(Tensor, Tensor)>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Self> {
        let c = thoughts.size()[1];
        let device = thoughts.device();
        let mut out = BTreeMap::new();
        for &i in layers {
            let (head_weight, head_bias) = match (strategy, &head) {
                (MixStrategy::Gated, Some((w, b))) => (Some(w.copy()), Some(b.copy())),
                (MixStrategy::Gated, None) => (
                    Some(Tensor::f_zeros([1, c], (Kind::Float, device))?),
                    Some(Tensor::f_full([1], logit(gate), (Kind::Float, device))?),
                ),
                _ => (None, None),
            };
            out.insert(
                i,
                LayerMix {
                    proj: Tensor::f_eye(c, (Kind::Float, device))?,
                    gate_logit: match strategy {
                        MixStrategy::Learned => {
                            Some(Tensor::f_full([1], logit(gate), (Kind::Float, device))?)
                        }
                        _ => None,
                    },
                    head_weight,
                    head_bias,
                },
            );
        }
        Ok(ThoughtSet {
            strategy,
            gate,
            thoughts,
            layers: out,
            metadata,
        })
    }

    /// Reads a Phase 3 artifact: thought vectors (checked against `hidden`),
    /// optional shared `mixing_head.*`, and its metadata.
    pub fn read_artifact(path: &Path, hidden: i64, device: Device) -> Result<Artifact> {
        let (tensors, meta) = read_file(path)?;
        let thoughts = thought_vectors(path, &tensors, hidden)?.f_to_device(device)?;
        let head = match (
            tensors.get("mixing_head.weight"),
            tensors.get("mixing_head.bias"),
        ) {
            (Some(w), Some(b)) => {
                check_shape(path, "mixing_head.weight", w, &[1, hidden])?;
                check_shape(path, "mixing_head.bias", b, &[1])?;
                Some((w.f_to_device(device)?, b.f_to_device(device)?))
            }
            (None, None) => None,
            _ => bail!(
                "{}: has only one of mixing_head.weight / mixing_head.bias",
                path.display()
            ),
        };
        Ok((thoughts, head, meta))
    }

    /// Reads `thoughts.safetensors` written by [`ThoughtSet::save`], checked
    /// against a model of `hidden` size and `num_layers` layers.
    pub fn load(path: &Path, hidden: i64, num_layers: i64, device: Device) -> Result<Self> {
        let (tensors, meta) = read_file(path)?;
        let thoughts = thought_vectors(path, &tensors, hidden)?.f_to_device(device)?;
        let strategy = match meta.get("strategy").map(String::as_str) {
            Some("fixed") => MixStrategy::Fixed,
            Some("learned") => MixStrategy::Learned,
            Some("gated") => MixStrategy::Gated,
            other => bail!(
                "{}: __metadata__ strategy is {other:?}; expected fixed, learned or gated",
                path.display()
            ),
        };
        let gate: f64 = meta
            .get("gate")
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| anyhow!("{}: __metadata__ has no numeric `gate`", path.display()))?;
        let layers: Vec<i64> = meta
            .get("layers")
            .and_then(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| anyhow!("{}: __metadata__ has no `layers` list", path.display()))?;
        let mut out = BTreeMap::new();
        for i in layers {
            if !(0..num_layers).contains(&i) {
                bail!(
                    "{}: mixes layer {i} but the model has {num_layers} layers",
                    path.display()
                );
            }
            let get = |name: String, shape: &[i64]| -> Result<Tensor> {
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| anyhow!("{}: missing tensor `{name}`", path.display()))?;
                check_shape(path, &name, t, shape)?;
                Ok(t.f_to_device(device)?)
            };
            let proj = get(format!("layers.{i}.proj.weight"), &[hidden, hidden])?;
            let gate_logit = match strategy {
                MixStrategy::Learned => Some(get(format!("layers.{i}.gate_logit"), &[1])?),
                _ => None,
            };
            let (head_weight, head_bias) = match strategy {
                MixStrategy::Gated => (
                    Some(get(format!("layers.{i}.mixing_head.weight"), &[1, hidden])?),
                    Some(get(format!("layers.{i}.mixing_head.bias"), &[1])?),
                ),
                _ => (None, None),
            };
            out.insert(
                i,
                LayerMix {
                    proj,
                    gate_logit,
                    head_weight,
                    head_bias,
                },
            );
        }
        Ok(ThoughtSet {
            strategy,
            gate,
            thoughts,
            layers: out,
            metadata: meta,
        })
    }

    /// Named tensors in the file form.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("thought_vectors".to_string(), self.thoughts.detach())];
        for (i, l) in &self.layers {
            out.push((format!("layers.{i}.proj.weight"), l.proj.detach()));
            if let Some(g) = &l.gate_logit {
                out.push((format!("layers.{i}.gate_logit"), g.detach()));
            }
            if let (Some(w), Some(b)) = (&l.head_weight, &l.head_bias) {
                out.push((format!("layers.{i}.mixing_head.weight"), w.detach()));
                out.push((format!("layers.{i}.mixing_head.bias"), b.detach()));
            }
        }
        out
    }

    /// Parameters of the mixers (thought vectors included).
    pub fn num_parameters(&self) -> i64 {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = self.metadata.clone();
        let size = self.thoughts.size();
        meta.insert("strategy".into(), strategy_name(self.strategy).into());
        meta.insert("gate".into(), self.gate.to_string());
        meta.insert(
            "layers".into(),
            serde_json::to_string(&self.layers.keys().collect::<Vec<_>>())?,
        );
        meta.insert("num_thoughts".into(), size[0].to_string());
        meta.insert("hidden_size".into(), size[1].to_string());
        meta.insert("producer".into(), "bitnet-pipeline attach_thoughts".into());
        save_safetensors(path, &self.named_tensors(), &meta)
            .with_context(|| format!("{}: cannot write thoughts", path.display()))?;
        Ok(())
    }

    /// Makes every tensor a trainable variable under `p` (so training updates
    /// them and [`ThoughtSet::save`] writes the trained values).
    pub fn make_trainable(&mut self, p: &nn::Path) -> Result<()> {
        let p = p / "thoughts";
        self.thoughts = p.f_var_copy("thought_vectors", &self.thoughts)?;
        for (i, l) in self.layers.iter_mut() {
            let lp = &p / "layers" / *i;
            l.proj = (&lp / "proj").f_var_copy("weight", &l.proj)?;
            if let Some(g) = &l.gate_logit {
                l.gate_logit = Some(lp.f_var_copy("gate_logit", g)?);
            }
            if let (Some(w), Some(b)) = (&l.head_weight, &l.head_bias) {
                let hp = &lp / "mixing_head";
                l.head_weight = Some(hp.f_var_copy("weight", w)?);
                l.head_bias = Some(hp.f_var_copy("bias", b)?);
            }
        }
        Ok(())
    }

    /// Hangs a mixer on every selected layer of `model` (sharing tensors with self).
    pub fn attach(&self, model: &mut LlamaModel) -> Result<()> {
        let n = model.layers.len() as i64;
        for (&i, l) in &self.layers {
            if !(0..n).contains(&i) {
                bail!("thought mixer for layer {i}, but the model has {n} layers");
            }
            let gate = match self.strategy {
                MixStrategy::Fixed => Gate::Fixed(self.gate),
                MixStrategy::Learned => Gate::Learned(
                    l.gate_logit
                        .as_ref()
                        .ok_or_else(|| anyhow!("learned mixer of layer {i} has no gate_logit"))?
                        .shallow_clone(),
                ),
                MixStrategy::Gated => match (&l.head_weight, &l.head_bias) {
                    (Some(w), Some(b)) => Gate::Head(w.shallow_clone(), b.shallow_clone()),
                    _ => bail!("gated mixer of layer {i} has no mixing head"),
                },
            };
            model.layers[i as usize].self_attn.mixer = Some(Box::new(ThoughtMixer {
                thoughts: self.thoughts.shallow_clone(),
                proj: l.proj.shallow_clone(),
                gate,
            }));
        }
        Ok(())
    }
}

enum Gate {
    Fixed(f64),
    Learned(Tensor),
    Head(Tensor, Tensor),
}

/// The module on one layer's attention output.
pub struct ThoughtMixer {
    thoughts: Tensor, // (K, C)
    proj: Tensor,     // (C, C)
    gate: Gate,
}

impl AttnOutputMixer for ThoughtMixer {
    fn mix(&self, a: &Tensor) -> crate::bitnet::Result<Tensor> {
        let kind = a.f_kind()?;
        let k = self.thoughts.f_to_kind(kind)?; // (K, C)
        let c = k.size()[1] as f64;
        let scores = a.f_matmul(&k.f_tr()?)?.f_div_scalar(c.sqrt())?; // (B, T, K)
        let read = scores.f_softmax(-1, kind)?.f_matmul(&k)?; // (B, T, C)
        let inj = read.f_matmul(&self.proj.f_to_kind(kind)?.f_tr()?)?; // (B, T, C)
        let delta = inj.f_sub(a)?;
        let mixed = match &self.gate {
            Gate::Fixed(g) => a.f_add(&delta.f_mul_scalar(*g)?)?,
            Gate::Learned(l) => a.f_add(&delta.f_mul(&l.f_sigmoid()?.f_to_kind(kind)?)?)?,
            Gate::Head(w, b) => {
                let g = a
                    .f_matmul(&w.f_to_kind(kind)?.f_tr()?)?
                    .f_add(&b.f_to_kind(kind)?)?
                    .f_sigmoid()?; // (B, T, 1)
                a.f_add(&delta.f_mul(&g)?)?
            }
        };
        Ok(mixed)
    }

    fn tensors(&self) -> Vec<Tensor> {
        let mut out = vec![self.thoughts.shallow_clone(), self.proj.shallow_clone()];
        match &self.gate {
            Gate::Fixed(_) => {}
            Gate::Learned(l) => out.push(l.shallow_clone()),
            Gate::Head(w, b) => {
                out.push(w.shallow_clone());
                out.push(b.shallow_clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitnet::Config;

    fn model(vs: &nn::VarStore) -> LlamaModel {
        let cfg = Config::from_json_str(
            r#"{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 2, "num_attention_heads": 2}"#,
        )
        .unwrap();
        LlamaModel::new(&vs.root(), &cfg).unwrap()
    }

    #[test]
    fn gate_zero_leaves_the_model_unchanged_and_save_load_round_trips() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = model(&vs);
        let x = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
        let before = m.forward(&x).unwrap();
        let thoughts = Tensor::randn([3, 16], (Kind::Float, Device::Cpu));
        let off = ThoughtSet::new(
            MixStrategy::Fixed,
            0.0,
            thoughts.copy(),
            &[0, 1],
            None,
            BTreeMap::new(),
        )
        .unwrap();
        off.attach(&mut m).unwrap();
        assert!(m.forward(&x).unwrap().allclose(&before, 1e-6, 1e-6, false));
        let on = ThoughtSet::new(
            MixStrategy::Gated,
            0.3,
            thoughts,
            &[1],
            None,
            BTreeMap::new(),
        )
        .unwrap();
        on.attach(&mut m).unwrap();
        let mixed = m.forward(&x).unwrap();
        assert!(!mixed.allclose(&before, 1e-4, 1e-4, false));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        on.save(&path).unwrap();
        let back = ThoughtSet::load(&path, 16, 2, Device::Cpu).unwrap();
        assert_eq!(back.strategy, MixStrategy::Gated);
        assert_eq!(back.layers.keys().copied().collect::<Vec<_>>(), vec![1]);
        // Replaces the mixer of layer 1 with the reloaded one: same output.
        back.attach(&mut m).unwrap();
        assert!(m.forward(&x).unwrap().allclose(&mixed, 1e-6, 1e-6, false));
    }

    #[test]
    fn a_wrong_hidden_size_or_layer_is_rejected_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let t = ThoughtSet::new(
            MixStrategy::Learned,
            0.1,
            Tensor::zeros([2, 8], (Kind::Float, Device::Cpu)),
            &[0, 3],
            None,
            BTreeMap::new(),
        )
        .unwrap();
        t.save(&path).unwrap();
        let e = ThoughtSet::load(&path, 16, 4, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("hidden size 8"),
            "{e}"
        );
        let e = ThoughtSet::load(&path, 8, 2, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 3"), "{e}");
        let e = ThoughtSet::read_artifact(&dir.path().join("none.safetensors"), 8, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.safetensors"), "{e}");
    }
}
