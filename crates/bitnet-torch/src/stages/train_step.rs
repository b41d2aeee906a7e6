//! One `train` step's forward and backward, in the plain form (one autograd
//! graph through the whole student, every block's activations kept until the
//! backward) and the gradient-checkpointed form (`gradient_checkpointing:
//! true`: only the blocks' inputs are kept, the backward recomputes them one
//! block at a time, see `bitnet::recompute`), optionally with the head and
//! its vocabulary-wide losses computed over row chunks (`loss_chunk_rows`), so
//! that no `(B*T, V)` logit tensor of the whole batch (student or teacher)
//! and none of the softmax temporaries of the losses exists at once. All forms
//! compute the same losses and gradients; the unit tests here check that on
//! tiny models with and without hidden-state distillation and thought mixers.

use std::time::Instant;

use anyhow::{bail, Result};
use bitnet_pipeline::stages::train::TrainConfig;
use tch::{Kind, Tensor};

use super::train::{block_hidden_term, hidden_distill_loss, lap, losses, PhaseTimes};
use crate::bitnet::{ForwardOptions, LlamaModel};

/// Scalar losses of a step whose backward has run (no graphs attached).
#[derive(Debug)]
pub struct StepLosses {
    pub total: Tensor,
    pub lm: Tensor,
    pub kl: Option<Tensor>,
    pub hidden: Option<Tensor>,
}

/// What the frozen teacher computed for a batch.
struct TeacherOut {
    /// `(B, T, V)`; None when the losses are chunked (the head runs per chunk).
    logits: Option<Tensor>,
    /// The blocks' output before the final norm, `(B, T, C)`.
    last: Tensor,
    /// `[embeddings, after block 0, ...]` with hidden-state distillation, else empty.
    hidden: Vec<Tensor>,
}

/// The models and settings one step computes with.
pub struct Step<'a> {
    pub model: &'a LlamaModel,
    /// The frozen teacher, when distilling.
    pub teacher: Option<&'a LlamaModel>,
    pub config: &'a TrainConfig,
    /// libtorch autocast (CUDA bf16) around the forwards.
    pub autocast: bool,
}

impl Step<'_> {
    /// Whether hidden-state distillation is on.
    fn hidden(&self) -> bool {
        self.config.hidden_distill_weight > 0.0 && self.teacher.is_some()
    }

    fn chunked(&self) -> bool {
        self.config.gradient_checkpointing && self.config.loss_chunk_rows > 0
    }

    /// The teacher's forward without a graph; None without distillation.
    fn teacher_forward(&self, x: &Tensor) -> Result<Option<TeacherOut>> {
        let Some(t) = self.teacher else {
            return Ok(None);
        };
        if self.config.distill_weight == 0.0 && !self.hidden() {
            return Ok(None);
        }
        if self.chunked() {
            let states = t.block_states(x, self.autocast)?;
            let last = states[states.len() - 1].shallow_clone();
            let hidden = if self.hidden() { states } else { Vec::new() };
            return Ok(Some(TeacherOut {
                logits: None,
                last,
                hidden,
            }));
        }
        let opts = ForwardOptions {
            output_hidden_states: self.hidden(),
        };
        let o = tch::no_grad(|| tch::autocast(self.autocast, || t.forward_with(x, opts)))?;
        Ok(Some(TeacherOut {
            logits: Some(o.logits),
            last: o.last_hidden_pre_norm,
            hidden: o.hidden_states,
        }))
    }

    /// Forward and backward of `(B, T)` inputs `x` and targets `y`: the
    /// student's gradients accumulate into its variables; each phase's
    /// seconds are added to `phases`.
    pub fn forward_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        phases: &mut PhaseTimes,
    ) -> Result<StepLosses> {
        let mut clock = Instant::now();
        let teacher_out = self.teacher_forward(x)?;
        phases.teacher += lap(&mut clock);
        if self.config.gradient_checkpointing {
            self.checkpointed(x, y, teacher_out, phases, clock)
        } else {
            self.plain(x, y, teacher_out, phases, clock)
        }
    }

    /// One graph through the whole student.
    fn plain(
        &self,
        x: &Tensor,
        y: &Tensor,
        teacher_out: Option<TeacherOut>,
        phases: &mut PhaseTimes,
        mut clock: Instant,
    ) -> Result<StepLosses> {
        let c = self.config;
        let opts = ForwardOptions {
            output_hidden_states: self.hidden(),
        };
        let out = tch::autocast(self.autocast, || self.model.forward_with(x, opts))?;
        phases.student_forward += lap(&mut clock);
        let teacher_logits = teacher_out.as_ref().and_then(|o| o.logits.as_ref());
        let (mut total, lm, kl) = losses(
            &out.logits,
            y,
            teacher_logits,
            c.distill_weight,
            c.temperature,
        )?;
        let hidden = match &teacher_out {
            Some(t) if self.hidden() => {
                let h = hidden_distill_loss(&out.hidden_states, &t.hidden, c.hidden_distill_norm)?;
                total = total.f_add(&h.f_mul_scalar(c.hidden_distill_weight)?)?;
                Some(h)
            }
            _ => None,
        };
        drop(teacher_out);
        phases.losses += lap(&mut clock);
        total.f_backward()?;
        drop(out);
        phases.backward += lap(&mut clock);
        Ok(StepLosses {
            total: total.f_detach()?,
            lm,
            kl,
            hidden,
        })
    }

    /// Blocks without a graph; the head's loss backpropagated first (whole or
    /// in row chunks), then the blocks recomputed last to first, each with
    /// its own hidden-state term. The teacher's logits are freed before the
    /// blocks' backward.
    fn checkpointed(
        &self,
        x: &Tensor,
        y: &Tensor,
        teacher_out: Option<TeacherOut>,
        phases: &mut PhaseTimes,
        mut clock: Instant,
    ) -> Result<StepLosses> {
        let c = self.config;
        let ck = self.model.forward_checkpointed(x, self.autocast)?;
        phases.student_forward += lap(&mut clock);
        let (head_total, lm, kl) = if self.chunked() {
            let teacher_last = teacher_out.as_ref().map(|o| &o.last);
            self.chunked_head(ck.last(), y, teacher_last, phases, &mut clock)?
        } else {
            self.whole_head(ck.last(), y, teacher_out.as_ref(), phases, &mut clock)?
        };
        let teacher_hidden = match teacher_out {
            Some(t) if self.hidden() => t.hidden,
            _ => Vec::new(),
        };
        let blocks = self.model.layers.len();
        if self.hidden() && teacher_hidden.len() != blocks + 1 {
            bail!(
                "hidden-state distillation needs {} hidden states from the teacher, got {}",
                blocks + 1,
                teacher_hidden.len()
            );
        }
        let scale = c.hidden_distill_weight / blocks as f64;
        let mut terms: Vec<Option<Tensor>> = (0..blocks).map(|_| None).collect();
        self.model
            .backward_checkpointed(ck, self.autocast, |i, out| {
                let Some(t) = teacher_hidden.get(i + 1) else {
                    return Ok(None);
                };
                let term = block_hidden_term(out, t, c.hidden_distill_norm)?;
                terms[i] = Some(term.f_detach()?);
                Ok(Some(term.f_mul_scalar(scale)?))
            })?;
        phases.backward += lap(&mut clock);
        let hidden = self
            .hidden()
            .then(|| sum_terms(&terms, blocks))
            .transpose()?;
        let mut total = head_total;
        if let Some(h) = &hidden {
            total = total.f_add(&h.f_mul_scalar(c.hidden_distill_weight)?)?;
        }
        Ok(StepLosses {
            total,
            lm,
            kl,
            hidden,
        })
    }

    /// Final norm, head and losses of the whole batch on the blocks' output
    /// `last`, backpropagated; returns the (detached) losses.
    fn whole_head(
        &self,
        last: &Tensor,
        y: &Tensor,
        teacher_out: Option<&TeacherOut>,
        phases: &mut PhaseTimes,
        clock: &mut Instant,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let c = self.config;
        let t = last.size()[1];
        let logits = tch::autocast(self.autocast, || self.model.head(last, t, false))?; // (B, T, V)
        phases.student_forward += lap(clock);
        let teacher_logits = teacher_out.and_then(|o| o.logits.as_ref());
        let (total, lm, kl) = losses(&logits, y, teacher_logits, c.distill_weight, c.temperature)?;
        phases.losses += lap(clock);
        total.f_backward()?;
        phases.backward += lap(clock);
        Ok((total.f_detach()?, lm, kl))
    }

    /// [`Self::whole_head`] over chunks of `loss_chunk_rows` positions: each
    /// chunk's student logits, teacher logits (from the teacher's blocks'
    /// output `teacher_last`) and losses, weighted by its share of the
    /// positions and backpropagated before the next chunk, so only one
    /// chunk's vocabulary-wide tensors exist at a time. The losses are the
    /// whole batch's means (the chunks' means weighted by their sizes).
    fn chunked_head(
        &self,
        last: &Tensor,
        y: &Tensor,
        teacher_last: Option<&Tensor>,
        phases: &mut PhaseTimes,
        clock: &mut Instant,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let c = self.config;
        let (ch, n) = (last.size()[2], y.numel() as i64);
        let targets = y.f_reshape([n])?;
        let teacher_rows = match (self.teacher, teacher_last) {
            (Some(t), Some(tl)) if c.distill_weight > 0.0 => Some((t, tl.f_reshape([n, ch])?)),
            _ => None,
        };
        let mut sums = [0.0f64; 3]; // total, lm, kl
        let mut start = 0i64;
        while start < n {
            let len = c.loss_chunk_rows.min(n - start);
            let teacher_logits = self.teacher_chunk(teacher_rows.as_ref(), start, len)?;
            phases.teacher += lap(clock);
            // A fresh view of the leaf per chunk: each backward frees its own graph.
            let xs = last
                .f_reshape([n, ch])?
                .f_narrow(0, start, len)?
                .f_unsqueeze(0)?; // (1, len, C)
            let logits = tch::autocast(self.autocast, || self.model.head(&xs, len, false))?; // (1, len, V)
            phases.student_forward += lap(clock);
            let ys = targets.f_narrow(0, start, len)?.f_unsqueeze(0)?; // (1, len)
            let (total, lm, kl) = losses(
                &logits,
                &ys,
                teacher_logits.as_ref(),
                c.distill_weight,
                c.temperature,
            )?;
            let share = len as f64 / n as f64;
            let weighted = total.f_mul_scalar(share)?;
            phases.losses += lap(clock);
            weighted.f_backward()?;
            phases.backward += lap(clock);
            sums[0] += total.f_double_value(&[])? * share;
            sums[1] += lm.f_double_value(&[])? * share;
            if let Some(kl) = &kl {
                sums[2] += kl.f_double_value(&[])? * share;
            }
            start += len;
        }
        let device = last.device();
        let scalar = |v: f64| Tensor::f_scalar_tensor(v, (Kind::Float, device));
        let kl = match teacher_rows {
            Some(_) => Some(scalar(sums[2])?),
            None => None,
        };
        Ok((scalar(sums[0])?, scalar(sums[1])?, kl))
    }

    /// The teacher's logits `(1, len, V)` of positions `start..start+len`
    /// from its blocks' output `rows` `(B*T, C)`; None without logit distillation.
    fn teacher_chunk(
        &self,
        rows: Option<&(&LlamaModel, Tensor)>,
        start: i64,
        len: i64,
    ) -> Result<Option<Tensor>> {
        let Some((t, tr)) = rows else {
            return Ok(None);
        };
        let tx = tr.f_narrow(0, start, len)?.f_unsqueeze(0)?; // (1, len, C)
        let logits = tch::no_grad(|| tch::autocast(self.autocast, || t.head(&tx, len, false)))?;
        Ok(Some(logits))
    }
}

/// The hidden-state loss from per-block terms, summed in block order as
/// [`hidden_distill_loss`] sums them (the same value, not a reassociated one).
fn sum_terms(terms: &[Option<Tensor>], blocks: usize) -> Result<Tensor> {
    let device = match terms.first() {
        Some(Some(t)) => t.device(),
        _ => tch::Device::Cpu,
    };
    let mut total = Tensor::f_zeros([], (Kind::Float, device))?;
    for (i, t) in terms.iter().enumerate() {
        let Some(t) = t else {
            bail!("block {i} computed no hidden-state term; this is a bug, please report it");
        };
        total = total.f_add(t)?;
    }
    Ok(total.f_div_scalar(blocks as f64)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bitnet_pipeline::stages::attach_thoughts::MixStrategy;
    use bitnet_pipeline::stages::parse_config;
    use serde_json::json;
    use tch::{nn, Device};

    use super::*;
    use crate::bitnet::bitlinear::set_bf16_matmul;
    use crate::bitnet::{convert_to_bitnet, Config, ConvertSpec};
    use crate::stages::thoughts::ThoughtSet;
    use crate::stages::train::freeze_embeddings;

    /// Two blocks, so a block's input gradient feeds another block; tied
    /// embeddings, so the head's and the embedding's gradients meet in one weight.
    fn tiny_config() -> Config {
        Config::from_json_str(
            r#"{"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 64, "tie_word_embeddings": true}"#,
        )
        .unwrap()
    }

    /// A converted student (trainable, in `vs`) and its full-precision teacher.
    struct Models {
        vs: nn::VarStore,
        student: LlamaModel,
        teacher: LlamaModel,
        _teacher_vs: nn::VarStore,
    }

    /// `thoughts`: Quiet-STaR mixers (gated, as the demo model's) on both blocks.
    fn models(thoughts: bool) -> Models {
        tch::manual_seed(13);
        let teacher_vs = nn::VarStore::new(Device::Cpu);
        let teacher = LlamaModel::new(&teacher_vs.root(), &tiny_config()).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ConvertSpec::default();
        let (mut student, _) = convert_to_bitnet(&teacher, &vs.root(), &spec).unwrap();
        if thoughts {
            let k = Tensor::randn([3, 32], (Kind::Float, Device::Cpu));
            let mut t = ThoughtSet::new(MixStrategy::Gated, 0.3, k, &[0, 1], None, BTreeMap::new())
                .unwrap();
            t.make_trainable(&vs.root()).unwrap();
            t.attach(&mut student).unwrap();
        }
        Models {
            vs,
            student,
            teacher,
            _teacher_vs: teacher_vs,
        }
    }

    fn train_config(extra: serde_json::Value) -> TrainConfig {
        let mut c = json!({"data": {"corpus": "c.txt"}, "teacher": "fp"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse_config(&c).unwrap()
    }

    /// Runs one step's forward and backward; returns its losses and the
    /// gradients it left (copied, then zeroed for the next run).
    fn one_step(m: &Models, c: &TrainConfig) -> (Vec<f64>, BTreeMap<String, Tensor>) {
        let x = Tensor::from_slice(&[3i64, 7, 1, 9, 4, 4, 20, 61, 0, 5, 33, 2]).view([2, 6]);
        let y = x.roll([-1], [1]);
        let step = Step {
            model: &m.student,
            teacher: Some(&m.teacher),
            config: c,
            autocast: false,
        };
        let l = step
            .forward_backward(&x, &y, &mut PhaseTimes::default())
            .unwrap();
        let mut values = vec![l.total.double_value(&[]), l.lm.double_value(&[])];
        values.extend(l.kl.iter().chain(&l.hidden).map(|t| t.double_value(&[])));
        let mut grads = BTreeMap::new();
        for (name, mut v) in m.vs.variables() {
            if v.requires_grad() && v.grad().defined() {
                grads.insert(name, v.grad().copy());
                v.zero_grad();
            }
        }
        (values, grads)
    }

    /// Plain, checkpointed, and checkpointed with loss chunks (5, 5 and 2 of
    /// the 12 positions) steps on the same models and batch: the same losses
    /// (1e-6 relative, absolute below 1: the KL is a small sum of
    /// log-probability differences of size ~log(64), so f32 rounding of
    /// those terms, summed per chunk, moves it by ~1e-8 absolute, which is
    /// 1e-5 of a KL of 1e-3) and the
    /// same gradient for every trainable tensor (1e-5 relative to the tensor's
    /// largest gradient: the block and chunk gradients are sums taken in
    /// another order).
    fn assert_checkpointing_changes_nothing(m: &Models, extra: serde_json::Value) {
        assert_variants_agree(m, extra, true);
    }

    /// [`assert_checkpointing_changes_nothing`], the chunked variant only
    /// when `chunks` (a bf16 head matmul over fewer rows may block its sums
    /// differently, and its bf16 output would then round differently).
    fn assert_variants_agree(m: &Models, extra: serde_json::Value, chunks: bool) {
        let (loss_a, grads_a) = one_step(m, &train_config(extra.clone()));
        let mut variants = vec![json!({"gradient_checkpointing": true})];
        if chunks {
            variants.push(json!({"gradient_checkpointing": true, "loss_chunk_rows": 5}));
        }
        for more in variants {
            let mut on = extra.clone();
            on.as_object_mut()
                .unwrap()
                .extend(more.as_object().unwrap().clone());
            let (loss_b, grads_b) = one_step(m, &train_config(on));
            assert_eq!(loss_a.len(), loss_b.len(), "{more}");
            for (a, b) in loss_a.iter().zip(&loss_b) {
                assert!(
                    (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                    "{more}: loss {a} vs {b}"
                );
            }
            let names = |g: &BTreeMap<String, Tensor>| g.keys().cloned().collect::<Vec<_>>();
            assert_eq!(names(&grads_a), names(&grads_b), "{more}");
            for (name, a) in &grads_a {
                let scale = a.abs().max().double_value(&[]);
                assert!(scale > 0.0, "`{name}` got no gradient");
                let diff = (a - &grads_b[name]).abs().max().double_value(&[]);
                assert!(
                    diff <= 1e-5 * scale,
                    "{more}: `{name}`: {diff} vs scale {scale}"
                );
            }
        }
    }

    #[test]
    fn checkpointing_gives_the_same_losses_and_gradients_with_logit_distillation() {
        let m = models(false);
        assert_checkpointing_changes_nothing(&m, json!({}));
        assert_checkpointing_changes_nothing(&m, json!({"distill_weight": 0.0}));
    }

    #[test]
    fn checkpointing_gives_the_same_gradients_with_hidden_distillation_and_thought_mixers() {
        let m = models(true);
        assert!(m.vs.variables().keys().any(|n| n.starts_with("thoughts.")));
        assert_checkpointing_changes_nothing(&m, json!({"hidden_distill_weight": 1.0}));
        assert_checkpointing_changes_nothing(
            &m,
            json!({"hidden_distill_weight": 1.0, "hidden_distill_norm": "token"}),
        );
    }

    #[test]
    fn checkpointing_gives_the_same_gradients_with_frozen_embeddings_and_bf16_matmuls() {
        let mut m = models(false);
        freeze_embeddings(&mut m.student);
        set_bf16_matmul(true);
        let extra = json!({"hidden_distill_weight": 0.5, "train_embeddings": false});
        assert_variants_agree(&m, extra, false);
        set_bf16_matmul(false);
        let (_, grads) = one_step(&m, &train_config(json!({"gradient_checkpointing": true})));
        assert!(
            grads.keys().all(|k| !k.contains("embed_tokens")),
            "{grads:?}"
        );
        assert!(grads.keys().any(|k| k.contains("layers.0.")), "{grads:?}");
    }
}
