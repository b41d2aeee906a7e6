//! `train`: quantization-aware training with distillation.
//!
//! The optimizer is AdamW written here over tensors under `no_grad`, not
//! `tch::nn::Optimizer`: we need two parameter groups with their own
//! learning rates (latent quantized weights at `quantized_lr_scale` x lr,
//! full-precision parameters at lr), decay on matrices only, one global
//! gradient-norm clip, and optimizer state we can write to and read back
//! from a resume checkpoint; tch's optimizer exposes none of its state.
//!
//! With held-out evaluation on (and `restore_best` not false) the stage keeps
//! a copy of the trainable tensors at the best evaluation and writes those,
//! not the last step's, when a later evaluation was worse: early stopping
//! exists because the last weights are not the best, and `patience: 0` runs
//! can overshoot too. The copy lives in memory on the training device: one
//! more copy of the trainable parameters next to the optimizer's three
//! (weights and two moments), taken only when an evaluation improves, so it
//! costs no disk I/O per evaluation; it also goes into the resume checkpoint
//! so a resumed run still restores weights from before the interruption.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::stages::train::{ComputeDtype, HiddenNorm, TrainConfig};
use bitnet_pipeline::stages::{parse_config, StageContext};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

use super::common::{
    carry_tokenizer, load_tokens, pick_upstream, read_model_dir, write_model_dir, THOUGHTS_FILE,
};
use super::thoughts::ThoughtSet;
use super::train_step::Step;
use crate::bitnet::bitlinear::set_bf16_matmul;
use crate::bitnet::quant::set_quantization_strength;
use crate::bitnet::{Linear, LlamaModel};
use crate::checkpoint::safetensors_io::read_safetensors;
use crate::checkpoint::save_safetensors;
use crate::data::{batches, heldout_windows};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.95;
const EPS: f64 = 1e-8;

/// Which learning rate a parameter gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Latent weights of BitLinear layers.
    Quantized,
    /// Everything else: embeddings, head, norms, thought mixers.
    Full,
}

struct Param {
    name: String,
    var: Tensor,
    group: Group,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// AdamW with two parameter groups and a global gradient clip.
pub struct AdamW {
    params: Vec<Param>,
    /// Optimizer steps taken.
    pub t: u64,
}

/// Seconds between progress lines in the stage log.
const LOG_EVERY_S: f64 = 5.0;

/// Gradual-quantization strength at `step`: `step / warmup`, capped at 1
/// (step 0 trains the full-precision network; 0 warm-up steps = BitNet throughout).
pub fn quant_strength_at(warmup: u64, step: u64) -> f64 {
    if warmup == 0 {
        1.0
    } else {
        (step as f64 / warmup as f64).min(1.0)
    }
}

/// The learning-rate schedule: linear warmup, cosine decay to a floor.
pub fn lr_at(c: &TrainConfig, step: u64) -> f64 {
    let s = step as f64;
    if step < c.warmup_steps {
        return c.lr * (s + 1.0) / c.warmup_steps as f64;
    }
    let rest = (c.steps.saturating_sub(c.warmup_steps)).max(1) as f64;
    let progress = ((s - c.warmup_steps as f64) / rest).clamp(0.0, 1.0);
    let floor = c.lr * c.min_lr_ratio;
    floor + (c.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

impl AdamW {
    /// Every trainable variable of `vs`; BitLinear latent weights of `model`
    /// form the quantized group.
    pub fn new(vs: &nn::VarStore, model: &LlamaModel) -> Result<Self> {
        let quantized: std::collections::BTreeSet<String> = model
            .linears()
            .into_iter()
            .filter(|(_, l)| matches!(l, Linear::Bit(_)))
            .map(|(n, _)| format!("{n}.weight"))
            .collect();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut params = Vec::new();
        for (name, var) in vars {
            if !var.requires_grad() {
                continue;
            }
            let group = if quantized.contains(&name) {
                Group::Quantized
            } else {
                Group::Full
            };
            let decay = var.dim() >= 2 && !name.starts_with("thoughts.thought_vectors");
            let m = var.f_zeros_like()?;
            let v = var.f_zeros_like()?;
            params.push(Param {
                name,
                var,
                group,
                decay,
                m,
                v,
            });
        }
        Ok(AdamW { params, t: 0 })
    }

    /// Number of parameters in a group.
    pub fn group_size(&self, g: Group) -> i64 {
        self.params
            .iter()
            .filter(|p| p.group == g)
            .map(|p| p.var.numel() as i64)
            .sum()
    }

    /// One update from the current gradients; returns the gradient norm before clipping.
    ///
    /// In-place ops with two temporaries per tensor (the step is memory-bound:
    /// SmolLM2's 134M parameters make every full pass 540 MB): the clip factor
    /// scales the gradient in place, `m` moves by `lerp`, `v` by `addcmul` of
    /// the gradient pre-scaled by `sqrt(1 - beta2)`, and the update is one
    /// `addcdiv` into the weight with the step size folded into the denominator.
    pub fn step(&mut self, lr: f64, q_scale: f64, weight_decay: f64, clip: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        if !norm.is_finite() {
            bail!(
                "gradient norm is {norm} at step {}; lower `lr` or check the data",
                self.t + 1
            );
        }
        let coef = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - BETA1.powi(t);
        let bc2 = 1.0 - BETA2.powi(t);
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let mut g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                if coef != 1.0 {
                    let _ = g.f_mul_scalar_(coef)?;
                }
                let lr = match p.group {
                    Group::Quantized => lr * q_scale,
                    Group::Full => lr,
                };
                let _ = p.m.f_lerp_(&g, 1.0 - BETA1)?;
                let gs = g.f_mul_scalar((1.0 - BETA2).sqrt())?;
                let _ = p.v.f_mul_scalar_(BETA2)?.f_addcmul_(&gs, &gs)?;
                if lr == 0.0 {
                    continue; // moments still move, as with the unfused form
                }
                if p.decay && weight_decay > 0.0 {
                    let _ = p.var.f_mul_scalar_(1.0 - lr * weight_decay)?;
                }
                // var -= lr/bc1 * m / (sqrt(v/bc2) + eps)
                let mut denom = p.v.f_sqrt()?;
                let _ = denom
                    .f_mul_scalar_(1.0 / bc2.sqrt())?
                    .f_add_scalar_(EPS)?
                    .f_mul_scalar_(-bc1 / lr)?;
                let _ = p.var.f_addcdiv_(&p.m, &denom)?;
            }
            Ok(())
        })?;
        for p in &mut self.params {
            p.var.zero_grad();
        }
        Ok(norm)
    }

    /// Global L2 norm of the gradients (one pass per tensor, one sync).
    fn grad_norm(&self) -> Result<f64> {
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(|g| g.defined())
            .map(|g| g.f_to_kind(Kind::Float)?.f_norm())
            .collect::<std::result::Result<_, _>>()?;
        if norms.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::f_stack(&norms, 0)?
            .f_to_kind(Kind::Double)?
            .f_norm()?
            .f_double_value(&[])?)
    }

    /// Parameters and moments as named tensors (`p.`, `m.`, `v.` prefixes),
    /// plus the best weights (`best.` prefix) when there are any.
    fn state(&self, best: Option<&BestWeights>) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            out.push((format!("p.{}", p.name), p.var.detach()));
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        if let Some(b) = best {
            for (p, t) in self.params.iter().zip(&b.tensors) {
                out.push((format!("best.{}", p.name), t.shallow_clone()));
            }
        }
        out
    }

    /// Deep copies of the trainable tensors (the optimizer updates them in place).
    fn snapshot(&self) -> Result<Vec<Tensor>> {
        tch::no_grad(|| {
            self.params
                .iter()
                .map(|p| Ok(p.var.f_detach_copy()?))
                .collect()
        })
    }

    /// Overwrites the trainable tensors with `weights` (in `snapshot` order).
    fn load_weights(&mut self, weights: &[Tensor]) -> Result<()> {
        if weights.len() != self.params.len() {
            bail!(
                "best-weights copy has {} tensors, the model {}; this is a bug, please report it",
                weights.len(),
                self.params.len()
            );
        }
        tch::no_grad(|| -> Result<()> {
            for (p, w) in self.params.iter_mut().zip(weights) {
                p.var.f_copy_(w)?;
            }
            Ok(())
        })
    }

    /// The `best.` tensors of a resume checkpoint, if it has all of them.
    fn best_from(&self, tensors: &BTreeMap<String, Tensor>) -> Option<Vec<Tensor>> {
        self.params
            .iter()
            .map(|p| {
                let t = tensors.get(&format!("best.{}", p.name))?;
                (t.size() == p.var.size()).then(|| t.shallow_clone())
            })
            .collect()
    }

    fn restore(&mut self, path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (prefix, dst) in [("p", &mut p.var), ("m", &mut p.m), ("v", &mut p.v)] {
                    let key = format!("{prefix}.{}", p.name);
                    let src = tensors.get(&key).ok_or_else(|| {
                        anyhow!(
                            "{}: resume checkpoint lacks `{key}`; delete it to start over",
                            path.display()
                        )
                    })?;
                    if src.size() != dst.size() {
                        bail!("{}: `{key}` has shape {:?}, the model needs {:?}; delete the checkpoint to start over", path.display(), src.size(), dst.size());
                    }
                    dst.f_copy_(src)?;
                }
            }
            Ok(())
        })
    }
}

/// `(total, lm, kl)` losses of the student on a batch; `teacher_logits`
/// enables distillation.
pub fn losses(
    logits: &Tensor,
    targets: &Tensor,
    teacher_logits: Option<&Tensor>,
    distill_weight: f64,
    temperature: f64,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let v = logits.size()[2];
    let logits = logits.f_to_kind(Kind::Float)?;
    let lm = logits.f_reshape([-1, v])?.f_cross_entropy_loss::<Tensor>(
        &targets.f_reshape([-1])?,
        None,
        tch::Reduction::Mean,
        -100,
        0.0,
    )?;
    match teacher_logits {
        Some(tl) if distill_weight > 0.0 => {
            let t = temperature;
            let tlog = tl
                .f_to_kind(Kind::Float)?
                .f_div_scalar(t)?
                .f_log_softmax(-1, Kind::Float)?;
            let slog = logits.f_div_scalar(t)?.f_log_softmax(-1, Kind::Float)?;
            let kl = tlog
                .f_exp()?
                .f_mul(&tlog.f_sub(&slog)?)?
                .f_sum_dim_intlist(-1, false, Kind::Float)?
                .f_mean(Kind::Float)?
                .f_mul_scalar(t * t)?;
            let total = lm
                .f_mul_scalar(1.0 - distill_weight)?
                .f_add(&kl.f_mul_scalar(distill_weight)?)?;
            Ok((total, lm, Some(kl)))
        }
        _ => Ok((lm.shallow_clone(), lm, None)),
    }
}

/// Hidden-state distillation loss: relative MSE `|s - t|^2 / |t|^2` of the
/// residual stream after each block (`hidden_states[1..]` of a forward with
/// hidden states; the embeddings, index 0, are not a block's output),
/// averaged over blocks. Normalizing by the teacher's energy per block keeps
/// deep blocks, whose residual stream is larger, from drowning the shallow
/// ones; `norm` says whether per block or per token (see [`HiddenNorm`]);
/// the teacher side carries no gradient.
pub fn hidden_distill_loss(
    student: &[Tensor],
    teacher: &[Tensor],
    norm: HiddenNorm,
) -> Result<Tensor> {
    if student.len() != teacher.len() || student.len() < 2 {
        bail!(
            "hidden-state distillation needs the same number of hidden states from student ({}) and teacher ({}), at least 2",
            student.len(),
            teacher.len()
        );
    }
    let blocks = (student.len() - 1) as f64;
    let mut total = Tensor::f_zeros([], (Kind::Float, student[0].device()))?;
    for (s, t) in student.iter().zip(teacher).skip(1) {
        total = total.f_add(&block_hidden_term(s, t, norm)?)?;
    }
    Ok(total.f_div_scalar(blocks)?)
}

/// One block's term of [`hidden_distill_loss`]: the relative squared error
/// of the student's residual stream `s` (`[batch, seq, hidden]`) against
/// the teacher's `t` (no gradient), over the whole block or per token.
/// A libtorch error type, so the checkpointed backward's per-block callback
/// (a model-library closure) can call it too.
pub fn block_hidden_term(
    s: &Tensor,
    t: &Tensor,
    norm: HiddenNorm,
) -> std::result::Result<Tensor, tch::TchError> {
    let t = t.f_detach()?.f_to_kind(Kind::Float)?;
    let err = s.f_to_kind(Kind::Float)?.f_sub(&t)?.f_square()?;
    match norm {
        HiddenNorm::Block => {
            let den = t.f_square()?.f_sum(Kind::Float)?.f_clamp_min(1e-12)?;
            err.f_sum(Kind::Float)?.f_div(&den)
        }
        HiddenNorm::Token => {
            let dims: &[i64] = &[-1];
            let num = err.f_sum_dim_intlist(dims, false, Kind::Float)?;
            let den = t
                .f_square()?
                .f_sum_dim_intlist(dims, false, Kind::Float)?
                .f_clamp_min(1e-12)?;
            num.f_div(&den)?.f_mean(Kind::Float)
        }
    }
}

/// Mean LM loss of `model` over held-out batches.
fn heldout_loss(model: &LlamaModel, heldout: &[(Tensor, Tensor)], device: Device) -> Result<f64> {
    tch::no_grad(|| -> Result<f64> {
        let (mut sum, mut count) = (0.0, 0i64);
        for (x, y) in heldout {
            let b = x.size()[0];
            let logits = model
                .forward(&x.f_to_device(device)?)?
                .f_to_kind(Kind::Float)?;
            let v = logits.size()[2];
            let l = logits
                .f_reshape([-1, v])?
                .f_cross_entropy_loss::<Tensor>(
                    &y.f_to_device(device)?.f_reshape([-1])?,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    0.0,
                )?
                .f_double_value(&[])?;
            sum += l * b as f64;
            count += b;
        }
        Ok(sum / count.max(1) as f64)
    })
}

/// Resume bookkeeping stored in the checkpoint's metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Progress {
    step: u64,
    best: f64,
    bad_evals: u64,
}

/// The trainable tensors at the best held-out evaluation so far.
struct BestWeights {
    step: u64,
    /// In the optimizer's parameter order.
    tensors: Vec<Tensor>,
}

fn save_resume(dir: &Path, opt: &AdamW, p: Progress, best: Option<&BestWeights>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut meta = BTreeMap::from([
        ("step".to_string(), p.step.to_string()),
        ("best".to_string(), p.best.to_string()),
        ("bad_evals".to_string(), p.bad_evals.to_string()),
    ]);
    if let Some(b) = best {
        meta.insert("best_step".to_string(), b.step.to_string());
    }
    let tmp = dir.join("state.safetensors.tmp");
    save_safetensors(&tmp, &opt.state(best), &meta)?;
    std::fs::rename(&tmp, dir.join("state.safetensors"))?;
    Ok(())
}

/// Restores `opt` from a resume checkpoint; returns the progress and the best
/// weights it holds (none in checkpoints written without `restore_best`).
fn load_resume(
    path: &Path,
    opt: &mut AdamW,
    device: Device,
) -> Result<(Progress, Option<BestWeights>)> {
    let (tensors, meta) = read_safetensors(path)?;
    let tensors: BTreeMap<String, Tensor> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_to_device(device)?)))
        .collect::<Result<_>>()?;
    opt.restore(path, &tensors)?;
    let num = |k: &str| -> Result<f64> {
        meta.get(k)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("{}: resume checkpoint has no `{k}`", path.display()))
    };
    let p = Progress {
        step: num("step")? as u64,
        best: num("best")?,
        bad_evals: num("bad_evals")? as u64,
    };
    opt.t = p.step;
    let best = meta
        .get("best_step")
        .and_then(|s| s.parse::<u64>().ok())
        .and_then(|step| {
            opt.best_from(&tensors)
                .map(|tensors| BestWeights { step, tensors })
        });
    Ok((p, best))
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c: TrainConfig = parse_config(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    let seed = ctx.invocation.seed.unwrap_or(0) as u64;
    tch::manual_seed(seed as i64);
    let exclude: Vec<&str> = c.teacher.as_deref().into_iter().collect();
    let model_dir = pick_upstream(ctx, c.model.as_deref(), "model", &exclude)?;
    let files = read_model_dir(&model_dir, device)?;
    if files.spec.is_none() {
        bail!(
            "{}: is a full-precision model; `train` does quantization-aware training of a convert_bitnet output (set `model:` to it)",
            files.path.display()
        );
    }
    // Thoughts are validated against the model before any step runs.
    let thoughts_path = model_dir.join(THOUGHTS_FILE);
    let mut thoughts = if thoughts_path.is_file() {
        Some(ThoughtSet::load(
            &thoughts_path,
            files.config.hidden_size,
            files.config.num_hidden_layers,
            device,
        )?)
    } else {
        None
    };
    let teacher = match &c.teacher {
        // With no weight on either distillation term the teacher would only cost time.
        Some(_) if c.distill_weight == 0.0 && c.hidden_distill_weight == 0.0 => None,
        Some(name) => {
            let dir = ctx.upstream_dir(name)?.to_path_buf();
            let tf = read_model_dir(&dir, device)?;
            if tf.config.vocab_size != files.config.vocab_size {
                bail!(
                    "{}: teacher vocab_size {} differs from the student's {}",
                    tf.path.display(),
                    tf.config.vocab_size,
                    files.config.vocab_size
                );
            }
            let mut t = tf.build_frozen(device)?;
            if c.teacher_dtype == ComputeDtype::Bfloat16 {
                t.full_linears_to_kind(Kind::BFloat16)?;
            }
            Some(t)
        }
        None => None,
    };
    let (train_tokens, heldout_tokens) = load_tokens(ctx, &c.data, files.config.vocab_size)?;
    let train_batches = batches(
        &train_tokens,
        c.seq_len as usize,
        c.batch_size as usize,
        seed,
    )?;
    let heldout = heldout_windows(
        &heldout_tokens,
        c.seq_len as usize,
        c.batch_size as usize,
        Some((c.eval_batches.max(1) * c.batch_size) as usize),
    )?;

    let vs = nn::VarStore::new(device);
    let mut model = files.build_trainable(&vs.root())?;
    if !c.train_embeddings {
        freeze_embeddings(&mut model);
    }
    if let Some(t) = thoughts.as_mut() {
        t.make_trainable(&vs.root())?;
        t.attach(&mut model)?;
    }
    let mut opt = AdamW::new(&vs, &model)?;
    ctx.metric(
        "quantized_parameters",
        opt.group_size(Group::Quantized) as f64,
        Some("params"),
    );
    ctx.metric(
        "full_precision_parameters",
        opt.group_size(Group::Full) as f64,
        Some("params"),
    );
    ctx.param("train.device", json!(super::device::name(device)));
    ctx.param(
        "train.distillation",
        json!(teacher.is_some() && c.distill_weight > 0.0),
    );
    ctx.param(
        "train.hidden_distillation",
        json!(teacher.is_some() && c.hidden_distill_weight > 0.0),
    );
    ctx.param(
        "train.optimizer",
        json!("AdamW (own, two groups), betas (0.9, 0.95)"),
    );

    let resume_dir = ctx.output_dir().join(".resume");
    let resume_file = resume_dir.join("state.safetensors");
    let mut prog = Progress {
        step: 0,
        best: f64::INFINITY,
        bad_evals: 0,
    };
    let restore_best = c.restores_best();
    let mut best_weights: Option<BestWeights> = None;
    if resume_file.is_file() {
        (prog, best_weights) = load_resume(&resume_file, &mut opt, device)?;
        ctx.metric("resumed_from_step", prog.step as f64, None);
    }
    if !restore_best {
        best_weights = None;
    }
    let use_autocast = c.autocast && device.is_cuda();
    if use_autocast {
        // bf16, as the b1.58 recipe trains: no loss scaling needed.
        crate::autocast::use_bf16_on_cuda()?;
    }
    set_bf16_matmul(c.matmul_dtype == ComputeDtype::Bfloat16);
    let mut phases = PhaseTimes::default();
    let started = Instant::now();
    let mut last_log_line = started;
    let mut tokens_seen = 0i64;
    let mut last_loss = f64::NAN;
    let mut stopped_early = false;
    let mut log = Vec::new();
    while prog.step < c.steps {
        let step = prog.step;
        let lambda = quant_strength_at(c.quant_warmup_steps, step);
        set_quantization_strength(lambda);
        let (x, y) = train_batches.batch(step)?;
        let (x, y) = (x.f_to_device(device)?, y.f_to_device(device)?);
        let step_losses = Step {
            model: &model,
            teacher: teacher.as_ref(),
            config: &c,
            autocast: use_autocast,
        }
        .forward_backward(&x, &y, &mut phases)?;
        let mut clock = Instant::now();
        let lr = lr_at(&c, step);
        let grad_norm = opt.step(lr, c.quantized_lr_scale, c.weight_decay, c.grad_clip)?;
        phases.optimizer += lap(&mut clock);
        prog.step += 1;
        let s = prog.step as i64;
        last_loss = step_losses.total.f_double_value(&[])?;
        if !last_loss.is_finite() {
            bail!("loss is {last_loss} at step {s}; lower `lr`");
        }
        tokens_seen += c.batch_size * c.seq_len;
        ctx.metric_full("loss", Some(s), last_loss, None, None);
        let lm = step_losses.lm.f_double_value(&[])?;
        ctx.metric_full("lm_loss", Some(s), lm, None, None);
        if let Some(kl) = &step_losses.kl {
            ctx.metric_full("kl_loss", Some(s), kl.f_double_value(&[])?, None, None);
        }
        if let Some(h) = &step_losses.hidden {
            ctx.metric_full("hidden_loss", Some(s), h.f_double_value(&[])?, None, None);
        }
        ctx.metric_full("lr", Some(s), lr, None, None);
        if c.quant_warmup_steps > 0 {
            ctx.metric_full("quant_strength", Some(s), lambda, None, None);
        }
        ctx.metric_full("grad_norm", Some(s), grad_norm, None, None);
        let tps = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
        // The stage log gets a line every few seconds too: progress events only
        // reach a terminal, and a 10-minute run that prints nothing looks hung.
        if last_log_line.elapsed().as_secs_f64() >= LOG_EVERY_S || prog.step == c.steps {
            last_log_line = Instant::now();
            let left = (c.steps - prog.step) as f64 * (c.batch_size * c.seq_len) as f64;
            eprintln!(
                "train: step {}/{} loss {last_loss:.4} lr {lr:.2e} {tps:.0} tokens/s ETA {:.0} s",
                prog.step,
                c.steps,
                left / tps.max(1e-9)
            );
        }
        ctx.progress(
            prog.step,
            Some(c.steps),
            format!("loss {last_loss:.3} lr {lr:.2e} {tps:.0} tok/s"),
        );
        log.push(json!({"step": s, "loss": last_loss, "lr": lr, "grad_norm": grad_norm}));
        if c.eval_every > 0 && (prog.step.is_multiple_of(c.eval_every) || prog.step == c.steps) {
            // Always the real BitNet (lambda = 1), whatever the warm-up is at.
            set_quantization_strength(1.0);
            let hl = heldout_loss(&model, &heldout, device)?;
            ctx.metric_full("heldout_loss", Some(s), hl, None, None);
            if hl < prog.best {
                prog.best = hl;
                prog.bad_evals = 0;
                if restore_best {
                    best_weights = Some(BestWeights {
                        step: prog.step,
                        tensors: opt.snapshot()?,
                    });
                }
            } else {
                prog.bad_evals += 1;
            }
            if c.patience > 0 && prog.bad_evals >= c.patience {
                stopped_early = true;
            }
        }
        if c.checkpoint_every > 0 && prog.step.is_multiple_of(c.checkpoint_every) {
            save_resume(&resume_dir, &opt, prog, best_weights.as_ref())?;
        }
        if stopped_early {
            break;
        }
    }
    set_quantization_strength(1.0);
    set_bf16_matmul(false);
    let elapsed = started.elapsed().as_secs_f64();
    phases.report(ctx);
    if let Some(hwm) = peak_rss_bytes() {
        ctx.metric("peak_rss_bytes", hwm as f64, Some("bytes"));
    }
    let restored = restore_best_weights(&mut opt, best_weights.as_ref(), &prog)?;
    if let Some(b) = &best_weights {
        ctx.metric("best_step", b.step as f64, None);
    }
    ctx.metric(
        "restored_best_weights",
        if restored { 1.0 } else { 0.0 },
        None,
    );
    if last_loss.is_finite() {
        ctx.metric("final_loss", last_loss, None);
    }
    if prog.best.is_finite() {
        ctx.metric("best_heldout_loss", prog.best, None);
    }
    ctx.metric("steps_completed", prog.step as f64, None);
    ctx.metric("early_stopped", if stopped_early { 1.0 } else { 0.0 }, None);
    ctx.metric(
        "tokens_per_s",
        tokens_seen as f64 / elapsed.max(1e-9),
        Some("tokens/s"),
    );
    ctx.metric("train_seconds", elapsed, Some("s"));

    let out = ctx.output_dir().to_path_buf();
    let mut meta = BTreeMap::new();
    for (k, v) in &files.metadata {
        if k.starts_with("source.") {
            meta.insert(k.clone(), json!(v));
        }
    }
    meta.insert("trained_steps".into(), json!(prog.step));
    if restored {
        if let Some(b) = &best_weights {
            meta.insert("restored_best_step".into(), json!(b.step));
        }
    }
    write_model_dir(&out, &model, files.spec.as_ref(), &meta)?;
    carry_tokenizer(&model_dir, &out)?;
    if let Some(t) = &thoughts {
        t.save(&out.join(THOUGHTS_FILE))?;
    }
    std::fs::write(out.join("train_log.json"), serde_json::to_vec(&log)?)
        .with_context(|| format!("{}: cannot write", out.join("train_log.json").display()))?;
    Ok(())
}

/// Peak resident memory of this stage's process so far (`VmHWM`: loading,
/// teacher, student, optimizer state and the largest step), None off Linux.
fn peak_rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Seconds since `clock`, which moves to now.
pub(super) fn lap(clock: &mut Instant) -> f64 {
    let now = Instant::now();
    let s = now.duration_since(*clock).as_secs_f64();
    *clock = now;
    s
}

/// Where the training steps' time went (seconds summed over steps; held-out
/// evaluation and logging excluded). On CPU libtorch runs each op to
/// completion before returning, so the split is exact there; on CUDA kernels
/// are asynchronous and the time lands on whichever phase waits first.
#[derive(Debug, Default)]
pub(super) struct PhaseTimes {
    pub(super) teacher: f64,
    pub(super) student_forward: f64,
    pub(super) losses: f64,
    pub(super) backward: f64,
    pub(super) optimizer: f64,
}

impl PhaseTimes {
    fn report(&self, ctx: &mut StageContext) {
        for (name, v) in [
            ("time_teacher_forward_s", self.teacher),
            ("time_student_forward_s", self.student_forward),
            ("time_losses_s", self.losses),
            ("time_backward_s", self.backward),
            ("time_optimizer_s", self.optimizer),
        ] {
            ctx.metric(name, v, Some("s"));
        }
    }
}

/// Stops gradients to the embeddings and a full-precision LM head (the same
/// tensor when tied), so AdamW skips them (it takes only variables that
/// require a gradient).
pub(super) fn freeze_embeddings(model: &mut LlamaModel) {
    let _ = model.embed_tokens.set_requires_grad(false);
    if let Linear::Full { weight } = &model.lm_head {
        let _ = weight.set_requires_grad(false);
    }
}

/// Writes the best held-out weights back into the model when a later
/// evaluation was worse and says so in the stage log. Returns whether it
/// restored.
fn restore_best_weights(
    opt: &mut AdamW,
    best: Option<&BestWeights>,
    prog: &Progress,
) -> Result<bool> {
    let Some(b) = best else {
        return Ok(false);
    };
    if b.step >= prog.step {
        eprintln!(
            "train: the last step ({}) had the best held-out loss ({:.4}); writing its weights",
            prog.step, prog.best
        );
        return Ok(false);
    }
    opt.load_weights(&b.tensors)?;
    eprintln!(
        "train: restored the weights of step {} (best held-out loss {:.4}) over those of the last step {}",
        b.step, prog.best, prog.step
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use bitnet_pipeline::engine::protocol::{Event, Invocation, Upstream, EVENT_PREFIX};

    use super::*;
    use crate::bitnet::{convert_to_bitnet, Config, ConvertSpec};

    fn tiny_config() -> Config {
        Config::from_json_str(
            r#"{"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 64}"#,
        )
        .unwrap()
    }

    /// A converted tiny model in `dir/conv` and a corpus in `dir/corpus.txt`.
    fn fixture(dir: &Path) {
        tch::manual_seed(3);
        let fp_vs = nn::VarStore::new(Device::Cpu);
        let fp = LlamaModel::new(&fp_vs.root(), &tiny_config()).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ConvertSpec::default();
        let (bit, _) = convert_to_bitnet(&fp, &vs.root(), &spec).unwrap();
        let conv = dir.join("conv");
        std::fs::create_dir_all(&conv).unwrap();
        write_model_dir(&conv, &bit, Some(&spec), &BTreeMap::new()).unwrap();
        // The full-precision model the student was converted from: a teacher.
        let fp_dir = dir.join("fp");
        std::fs::create_dir_all(&fp_dir).unwrap();
        write_model_dir(&fp_dir, &fp, None, &BTreeMap::new()).unwrap();
        let text = "It was the best of times, it was the worst of times.\n\n".repeat(30);
        std::fs::write(dir.join("corpus.txt"), text).unwrap();
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs the stage with `steps`, returning its metric events `(key, step, value)`.
    fn run_stage(dir: &Path, out: &Path, steps: u64) -> Vec<(String, Option<i64>, f64)> {
        run_stage_with(dir, out, steps, json!({}))
    }

    /// `run_stage` with `extra` options over the defaults.
    fn run_stage_with(
        dir: &Path,
        out: &Path,
        steps: u64,
        extra: serde_json::Value,
    ) -> Vec<(String, Option<i64>, f64)> {
        std::fs::create_dir_all(out).unwrap();
        let mut config = json!({
            "model": "conv", "data": {"corpus": "corpus.txt", "heldout_fraction": 0.2},
            "steps": steps, "batch_size": 2, "seq_len": 16, "lr": 0.01,
            "warmup_steps": 0, "min_lr_ratio": 1.0, "eval_every": 0, "checkpoint_every": 2,
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let inv = Invocation {
            run_id: 1,
            stage: "train".into(),
            kind: "train".into(),
            config,
            output_dir: out.to_path_buf(),
            pipeline_dir: dir.to_path_buf(),
            upstream: BTreeMap::from([
                (
                    "conv".to_string(),
                    Upstream {
                        kind: "convert_bitnet".into(),
                        output_dir: dir.join("conv"),
                        metrics: BTreeMap::new(),
                    },
                ),
                (
                    "fp".to_string(),
                    Upstream {
                        kind: "load_checkpoint".into(),
                        output_dir: dir.join("fp"),
                        metrics: BTreeMap::new(),
                    },
                ),
            ]),
            device: Some("cpu".into()),
            seed: Some(7),
            params: json!({}),
            attempt: 1,
        };
        let buf = Buf::default();
        let mut ctx = StageContext::with_writer(inv, Box::new(buf.clone()));
        run(&mut ctx).unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix(EVENT_PREFIX))
            .filter_map(|l| match serde_json::from_str::<Event>(l).unwrap() {
                Event::Metric(m) => Some((m.key, m.step, m.value)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn hidden_distillation_bf16_and_frozen_embeddings_train_and_report() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let out = dir.path().join("out");
        let ms = run_stage_with(
            dir.path(),
            &out,
            4,
            json!({"teacher": "fp", "hidden_distill_weight": 1.0, "teacher_dtype": "bf16",
                   "matmul_dtype": "bf16", "train_embeddings": false}),
        );
        let hidden: Vec<f64> = ms
            .iter()
            .filter(|m| m.0 == "hidden_loss")
            .map(|m| m.2)
            .collect();
        assert_eq!(hidden.len(), 4, "one hidden_loss per step: {hidden:?}");
        assert!(
            hidden.iter().all(|h| h.is_finite() && *h > 0.0),
            "{hidden:?}"
        );
        for key in [
            "time_teacher_forward_s",
            "time_backward_s",
            "peak_rss_bytes",
        ] {
            assert!(metric(&ms, key).is_some_and(|v| v > 0.0), "{key}");
        }
        // The frozen embeddings are written unchanged, the BitLinear weights are not.
        let before = read_model_dir(&dir.path().join("conv"), Device::Cpu).unwrap();
        let after = read_model_dir(&out, Device::Cpu).unwrap();
        let diff = |name: &str| {
            let t = &before.tensors[name];
            t.f_sub(&after.tensors[name])
                .unwrap()
                .abs()
                .max()
                .double_value(&[])
        };
        assert_eq!(diff("model.embed_tokens.weight"), 0.0);
        assert!(diff("model.layers.0.mlp.up_proj.weight") > 0.0);
        assert!(
            !crate::bitnet::bitlinear::bf16_matmul(),
            "reset after the stage"
        );
    }

    /// Issue #15 item 5: the stage with `gradient_checkpointing` (and loss
    /// chunks) logs the same losses and writes the same weights as without.
    #[test]
    fn gradient_checkpointing_trains_the_same_model() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let base = json!({"teacher": "fp", "hidden_distill_weight": 1.0, "checkpoint_every": 0});
        let plain = dir.path().join("plain");
        let ms_plain = run_stage_with(dir.path(), &plain, 2, base.clone());
        let losses = |ms: &[(String, Option<i64>, f64)]| -> Vec<f64> {
            ms.iter()
                .filter(|m| m.0 == "loss" || m.0 == "hidden_loss")
                .map(|m| m.2)
                .collect()
        };
        for (name, more) in [
            ("ckpt", json!({"gradient_checkpointing": true})),
            (
                "chunks",
                json!({"gradient_checkpointing": true, "loss_chunk_rows": 7}),
            ),
        ] {
            let mut cfg = base.clone();
            cfg.as_object_mut()
                .unwrap()
                .extend(more.as_object().unwrap().clone());
            let out = dir.path().join(name);
            let ms = run_stage_with(dir.path(), &out, 2, cfg);
            let (a, b) = (losses(&ms_plain), losses(&ms));
            assert_eq!(a.len(), 4, "{a:?}");
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-5 * x.abs(), "{name}: {a:?} vs {b:?}");
            }
            // 1e-5: the resume test's bound for the same trajectory.
            let diff = max_weight_diff(&plain, &out);
            assert!(diff < 1e-5, "{name}: weights differ by {diff}");
        }
    }

    #[test]
    fn bf16_matmul_and_a_bf16_frozen_weight_stay_close_to_fp32() {
        tch::manual_seed(5);
        let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([8, 64], (Kind::Float, Device::Cpu));
        let full = Linear::Full { weight: w.copy() };
        let exact = full.forward(&x).unwrap();
        crate::bitnet::bitlinear::set_bf16_matmul(true);
        let bf = full.forward(&x).unwrap();
        crate::bitnet::bitlinear::set_bf16_matmul(false);
        let half = Linear::Full {
            weight: w.to_kind(Kind::BFloat16),
        };
        let frozen = half.forward(&x).unwrap();
        for y in [&bf, &frozen] {
            assert_eq!(y.kind(), Kind::Float);
            let err = (y - &exact).abs().max().double_value(&[]);
            let scale = exact.abs().max().double_value(&[]);
            // bf16 keeps 8 mantissa bits: about 2^-8 relative per product.
            assert!(err > 0.0 && err < 0.05 * scale, "{err} vs {scale}");
        }
    }

    #[test]
    fn adamw_step_matches_the_textbook_update_with_clipping_and_decay() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().f_var("w", &[4, 3], nn::Init::Const(0.5)).unwrap();
        let fp_vs = nn::VarStore::new(Device::Cpu);
        let model = LlamaModel::new(&fp_vs.root(), &tiny_config()).unwrap();
        let mut opt = AdamW::new(&vs, &model).unwrap();
        let (lr, wd, clip) = (0.01, 0.1, 0.5);
        let (mut m, mut v) = (Tensor::zeros([4, 3], FLOAT), Tensor::zeros([4, 3], FLOAT));
        let mut expect = w.detach().copy();
        for t in 1..=3 {
            let x = Tensor::randn([4, 3], FLOAT);
            (&w * &x).sum(Kind::Float).backward();
            let g = w.grad().copy();
            let norm = opt.step(lr, 1.0, wd, clip).unwrap();
            let n = g.norm().double_value(&[]);
            assert!((norm - n).abs() < 1e-5 * n.max(1.0), "{norm} vs {n}");
            let g = if n > clip { g * (clip / (n + 1e-6)) } else { g };
            m = &m * BETA1 + &g * (1.0 - BETA1);
            v = &v * BETA2 + (&g * &g) * (1.0 - BETA2);
            let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
            expect = &expect * (1.0 - lr * wd);
            expect = &expect - (&m / bc1) / ((&v / bc2).sqrt() + EPS) * lr;
            let err = (&w.detach() - &expect).abs().max().double_value(&[]);
            assert!(err < 1e-6, "step {t}: {err}");
        }
    }

    const FLOAT: (Kind, Device) = (Kind::Float, Device::Cpu);

    #[test]
    fn quant_strength_ramps_linearly_then_stays_at_one() {
        assert_eq!(quant_strength_at(0, 0), 1.0);
        assert_eq!(quant_strength_at(4, 0), 0.0);
        assert_eq!(quant_strength_at(4, 1), 0.25);
        assert_eq!(quant_strength_at(4, 4), 1.0);
        assert_eq!(quant_strength_at(4, 100), 1.0);
    }

    #[test]
    fn training_lowers_the_loss_on_a_fixed_batch() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let fp_vs = nn::VarStore::new(Device::Cpu);
        let fp = LlamaModel::new(&fp_vs.root(), &tiny_config()).unwrap();
        let (model, _) = convert_to_bitnet(&fp, &vs.root(), &ConvertSpec::default()).unwrap();
        let mut opt = AdamW::new(&vs, &model).unwrap();
        assert!(opt.group_size(Group::Quantized) > 0 && opt.group_size(Group::Full) > 0);
        let ids: Vec<i64> = (0..40).map(|i| i % 7).collect();
        let (x, y) = batches(&ids, 16, 2, 1).unwrap().batch(0).unwrap();
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..15 {
            let (loss, _, _) = losses(&model.forward(&x).unwrap(), &y, None, 0.0, 1.0).unwrap();
            loss.backward();
            last = loss.double_value(&[]);
            first.get_or_insert(last);
            opt.step(0.01, 0.1, 0.01, 1.0).unwrap();
        }
        let first = first.unwrap();
        assert!(last < 0.7 * first, "loss {first} -> {last}");
    }

    #[test]
    fn hidden_distill_loss_is_relative_mse_over_blocks_without_the_embeddings() {
        let t = vec![
            Tensor::from_slice(&[9.0f32, 9.0]), // embeddings: ignored
            Tensor::from_slice(&[1.0f32, 1.0]),
            Tensor::from_slice(&[2.0f32, 0.0]),
        ];
        let same: Vec<Tensor> = t.iter().map(|x| x.copy()).collect();
        let zero = hidden_distill_loss(&same, &t, HiddenNorm::Block)
            .unwrap()
            .double_value(&[]);
        assert!(zero.abs() < 1e-12, "{zero}");
        let s = vec![
            Tensor::from_slice(&[0.0f32, 0.0]),
            Tensor::from_slice(&[1.0f32, 3.0]), // |(0,2)|^2 / |(1,1)|^2 = 2
            Tensor::from_slice(&[1.0f32, 0.0]), // |(1,0)|^2 / |(2,0)|^2 = 0.25
        ];
        let l = hidden_distill_loss(&s, &t, HiddenNorm::Block)
            .unwrap()
            .double_value(&[]);
        assert!((l - 1.125).abs() < 1e-6, "{l}");
        assert!(hidden_distill_loss(&s[..2], &t, HiddenNorm::Block).is_err());
    }

    /// Per-token normalization: each position's relative error counts the
    /// same, however large its residual stream (the whole-block form is
    /// dominated by the large one).
    #[test]
    fn token_normalized_hidden_loss_weighs_every_position_alike() {
        // One block, 2 positions of width 2: the first is 100x larger.
        let t = [
            Tensor::zeros([1, 2, 2], (Kind::Float, Device::Cpu)),
            Tensor::from_slice(&[100.0f32, 0.0, 0.0, 1.0]).view([1, 2, 2]),
        ];
        // Position 0 off by 1 % of its size, position 1 by 100 %.
        let s = [
            t[0].copy(),
            Tensor::from_slice(&[101.0f32, 0.0, 0.0, 0.0]).view([1, 2, 2]),
        ];
        let token = hidden_distill_loss(&s, &t, HiddenNorm::Token)
            .unwrap()
            .double_value(&[]);
        // (1e-4 + 1) / 2
        assert!((token - 0.500_05).abs() < 1e-6, "{token}");
        let block = hidden_distill_loss(&s, &t, HiddenNorm::Block)
            .unwrap()
            .double_value(&[]);
        // (1 + 1) / (10000 + 1)
        assert!((block - 2.0 / 10_001.0).abs() < 1e-9, "{block}");
    }

    #[test]
    fn distillation_loss_is_zero_against_itself_and_mixes_by_weight() {
        let logits = Tensor::randn([1, 3, 5], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
        let (total, lm, kl) = losses(&logits, &y, Some(&logits), 0.5, 2.0).unwrap();
        assert!(kl.unwrap().double_value(&[]).abs() < 1e-6);
        let half = lm.double_value(&[]) * 0.5;
        assert!((total.double_value(&[]) - half).abs() < 1e-6);
    }

    #[test]
    fn resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let resumed = dir.path().join("resumed");
        run_stage(dir.path(), &resumed, 2);
        assert!(resumed.join(".resume/state.safetensors").is_file());
        let second = run_stage(dir.path(), &resumed, 4);
        let from = second
            .iter()
            .find(|m| m.0 == "resumed_from_step")
            .map(|m| m.2);
        assert_eq!(from, Some(2.0));
        let loss_steps: Vec<i64> = second
            .iter()
            .filter(|m| m.0 == "loss")
            .filter_map(|m| m.1)
            .collect();
        assert_eq!(loss_steps, vec![3, 4]);

        let straight = dir.path().join("straight");
        let full = run_stage(dir.path(), &straight, 4);
        let loss4 = |ms: &[(String, Option<i64>, f64)]| {
            ms.iter()
                .find(|m| m.0 == "loss" && m.1 == Some(4))
                .map(|m| m.2)
                .unwrap()
        };
        assert!((loss4(&second) - loss4(&full)).abs() < 1e-5);
        let a = read_model_dir(&resumed, Device::Cpu).unwrap();
        let b = read_model_dir(&straight, Device::Cpu).unwrap();
        for (name, t) in &a.tensors {
            let diff = t
                .f_sub(&b.tensors[name])
                .unwrap()
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "{name} differs by {diff}");
        }
    }

    fn metric(ms: &[(String, Option<i64>, f64)], key: &str) -> Option<f64> {
        ms.iter().find(|m| m.0 == key && m.1.is_none()).map(|m| m.2)
    }

    /// Largest absolute difference over all tensors of two model folders.
    fn max_weight_diff(a: &Path, b: &Path) -> f64 {
        let a = read_model_dir(a, Device::Cpu).unwrap();
        let b = read_model_dir(b, Device::Cpu).unwrap();
        assert_eq!(a.tensors.len(), b.tensors.len());
        a.tensors
            .iter()
            .map(|(name, t)| {
                t.f_sub(&b.tensors[name])
                    .unwrap()
                    .abs()
                    .max()
                    .double_value(&[])
            })
            .fold(0.0, f64::max)
    }

    /// Issue #15 item 5: early stopping (and any run whose held-out loss gets
    /// worse after its best evaluation) wrote the last weights, not the best.
    #[test]
    fn a_run_that_overshoots_writes_the_best_heldout_weights() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        // A huge lr on every parameter makes the held-out loss climb after the
        // first steps; patience 0 keeps training to the end.
        let wild = json!({"lr": 0.5, "quantized_lr_scale": 1.0, "eval_every": 1,
                          "patience": 0, "checkpoint_every": 0});
        let out = dir.path().join("wild");
        let ms = run_stage_with(dir.path(), &out, 5, wild.clone());
        let best_step = metric(&ms, "best_step").unwrap() as u64;
        assert!(
            best_step < 5,
            "the fixture must overshoot; best at {best_step}"
        );
        assert_eq!(metric(&ms, "restored_best_weights"), Some(1.0));
        // The same run stopped at the best step: same trajectory (constant lr,
        // same seed), so the written weights must equal these.
        let at_best = dir.path().join("at_best");
        let ms_best = run_stage_with(dir.path(), &at_best, best_step, wild.clone());
        assert_eq!(metric(&ms_best, "restored_best_weights"), Some(0.0));
        // 1e-6: the same float ops in the same order; only copies differ.
        let diff = max_weight_diff(&out, &at_best);
        assert!(
            diff < 1e-6,
            "written weights differ from step {best_step}'s by {diff}"
        );

        // `restore_best: false` keeps the last weights, which differ.
        let mut last_cfg = wild;
        last_cfg["restore_best"] = json!(false);
        let last = dir.path().join("last");
        let ms_last = run_stage_with(dir.path(), &last, 5, last_cfg);
        assert_eq!(metric(&ms_last, "restored_best_weights"), Some(0.0));
        assert!(max_weight_diff(&last, &at_best) > 1e-3);
    }

    #[test]
    fn a_run_that_keeps_improving_writes_the_last_weights() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let gentle = json!({"eval_every": 1, "checkpoint_every": 0});
        let out = dir.path().join("gentle");
        let ms = run_stage_with(dir.path(), &out, 3, gentle.clone());
        let heldout: Vec<f64> = ms
            .iter()
            .filter(|m| m.0 == "heldout_loss")
            .map(|m| m.2)
            .collect();
        assert!(
            heldout.windows(2).all(|w| w[1] < w[0]),
            "the fixture must keep improving: {heldout:?}"
        );
        assert_eq!(metric(&ms, "best_step"), Some(3.0));
        assert_eq!(metric(&ms, "restored_best_weights"), Some(0.0));
        let mut last_cfg = gentle;
        last_cfg["restore_best"] = json!(false);
        let last = dir.path().join("last");
        run_stage_with(dir.path(), &last, 3, last_cfg);
        assert!(max_weight_diff(&out, &last) < 1e-6);
    }

    #[test]
    fn a_resumed_run_still_restores_best_weights_from_before_the_interruption() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let wild = json!({"lr": 0.5, "quantized_lr_scale": 1.0, "eval_every": 1,
                          "patience": 0, "checkpoint_every": 1});
        let straight = dir.path().join("straight");
        let ms = run_stage_with(dir.path(), &straight, 5, wild.clone());
        let best_step = metric(&ms, "best_step").unwrap();
        assert!(
            best_step < 3.0,
            "best at {best_step}: the resume must come after it"
        );
        let resumed = dir.path().join("resumed");
        run_stage_with(dir.path(), &resumed, 3, wild.clone());
        let ms2 = run_stage_with(dir.path(), &resumed, 5, wild);
        assert_eq!(metric(&ms2, "resumed_from_step"), Some(3.0));
        assert_eq!(metric(&ms2, "best_step"), Some(best_step));
        assert_eq!(metric(&ms2, "restored_best_weights"), Some(1.0));
        let diff = max_weight_diff(&resumed, &straight);
        assert!(
            diff < 1e-5,
            "resumed run wrote weights {diff} away from the straight run's"
        );
    }
}
