//! `train`: quantization-aware training of a converted BitNet model, with
//! distillation from the full-precision teacher (KL on logits at a
//! temperature, mixed with the LM loss by `distill_weight`), AdamW with two
//! parameter groups (latent quantized weights at `quantized_lr_scale` x lr,
//! full-precision parameters at lr), warmup + cosine schedule, gradient
//! clipping, early stopping on held-out loss (writing the best held-out weights, not
//! the last, unless `restore_best: false`), and resumable checkpoints in
//! `.resume/`. Writes the trained model in the same files as its input
//! (`model.safetensors`, `packed.safetensors`, `thoughts.safetensors`,
//! `config.json`) plus `train_log.json`.
use serde::Deserialize;
use serde_json::Value;

use super::data_config::{DataConfig, DATA_OPTION};
use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

macro_rules! defaults {
    ($($name:ident: $t:ty = $v:expr;)*) => { $(fn $name() -> $t { $v })* };
}

defaults! {
    d_steps: u64 = 200;
    d_batch: i64 = 8;
    d_seq: i64 = 128;
    d_lr: f64 = 1e-3;
    d_qscale: f64 = 0.1;
    d_wd: f64 = 0.01;
    d_warmup: u64 = 20;
    d_min_lr: f64 = 0.1;
    d_clip: f64 = 1.0;
    d_distill: f64 = 0.5;
    d_temp: f64 = 2.0;
    d_eval_every: u64 = 50;
    d_eval_batches: i64 = 4;
    d_patience: u64 = 3;
    d_ckpt: u64 = 50;
    d_true: bool = true;
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Upstream stage with the model to train (default: the only upstream
    /// that is not the teacher).
    #[serde(default)]
    pub model: Option<String>,
    /// Upstream stage with the full-precision teacher; `null` = plain QAT.
    #[serde(default)]
    pub teacher: Option<String>,
    pub data: DataConfig,
    #[serde(default = "d_steps")]
    pub steps: u64,
    #[serde(default = "d_batch")]
    pub batch_size: i64,
    #[serde(default = "d_seq")]
    pub seq_len: i64,
    /// Peak learning rate of the full-precision group.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Learning rate of the quantized latent weights relative to `lr`.
    #[serde(default = "d_qscale")]
    pub quantized_lr_scale: f64,
    /// AdamW decoupled weight decay (matrices only; norms and gates are not decayed).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: u64,
    /// Cosine floor as a fraction of the peak lr.
    #[serde(default = "d_min_lr")]
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip; 0 disables.
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    /// Weight of the KL term: loss = (1 - w) * lm + w * T^2 * KL.
    #[serde(default = "d_distill")]
    pub distill_weight: f64,
    #[serde(default = "d_temp")]
    pub temperature: f64,
    /// Held-out loss every this many steps (0 = never: no early stopping).
    #[serde(default = "d_eval_every")]
    pub eval_every: u64,
    #[serde(default = "d_eval_batches")]
    pub eval_batches: i64,
    /// Stop after this many held-out evaluations without improvement (0 = never).
    #[serde(default = "d_patience")]
    pub patience: u64,
    /// Write the weights of the best held-out evaluation instead of the last
    /// step's when a later evaluation was worse. Unset = on exactly when
    /// held-out evaluation runs (`eval_every > 0`); see [`TrainConfig::restores_best`].
    #[serde(default)]
    pub restore_best: Option<bool>,
    /// Write a resume checkpoint to `.resume/` every this many steps (0 = never).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    /// bf16 mixed precision (libtorch autocast, dtype set to bf16) on CUDA;
    /// ignored on CPU.
    #[serde(default = "d_true")]
    pub autocast: bool,
    /// Gradual quantization: ramp the quantization strength lambda linearly from 0
    /// (full precision) to 1 (BitNet) over this many steps; 0 = BitNet from step 0.
    #[serde(default)]
    pub quant_warmup_steps: u64,
    /// Weight of hidden-state distillation: the student's residual stream
    /// after each block against the teacher's, as relative MSE
    /// `|s - t|^2 / |t|^2` averaged over blocks, added to the loss. 0 = off.
    #[serde(default)]
    pub hidden_distill_weight: f64,
    /// What the hidden-state loss normalizes by: each block's whole batch
    /// (`block`, the default) or each token's own residual stream (`token`).
    #[serde(default)]
    pub hidden_distill_norm: HiddenNorm,
    /// Dtype of the frozen teacher's linear weights and matmuls.
    #[serde(default)]
    pub teacher_dtype: ComputeDtype,
    /// Dtype of the student's matmuls (latent weights stay fp32).
    #[serde(default)]
    pub matmul_dtype: ComputeDtype,
    /// Train the kept full-precision embeddings and LM head (false freezes them:
    /// no gradient for the 49152-row head weight, no AdamW state for it).
    #[serde(default = "d_true")]
    pub train_embeddings: bool,
    /// Gradient checkpointing per decoder block: the student's forward keeps
    /// only each block's input and the backward recomputes the blocks one at
    /// a time (less activation memory, one more block forward per step).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// With gradient checkpointing: compute the head and the vocabulary-wide
    /// losses over chunks of this many positions, each backpropagated before
    /// the next (0 = the whole batch at once).
    #[serde(default)]
    pub loss_chunk_rows: i64,
}

/// How the hidden-state distillation loss is normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HiddenNorm {
    /// `|s - t|^2 / |t|^2` over a block's whole batch: tokens with massive
    /// activations (SmolLM2's first positions) dominate it.
    #[default]
    Block,
    /// `|s_i - t_i|^2 / |t_i|^2` per token position, averaged: every token
    /// counts the same.
    Token,
}

/// A compute dtype of `train`'s matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// fp32 (the default).
    #[default]
    #[serde(alias = "f32", alias = "fp32")]
    Float32,
    /// bf16 inputs, fp32 accumulation (oneDNN/AVX512-BF16 on CPU).
    #[serde(alias = "bf16")]
    Bfloat16,
}

impl TrainConfig {
    /// Whether the stage keeps the best held-out weights and writes them at
    /// the end: the explicit `restore_best`, else true iff evaluation runs.
    pub fn restores_best(&self) -> bool {
        self.restore_best.unwrap_or(self.eval_every > 0)
    }
}

pub struct Train;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "model",
        type_name: "stage name",
        default: "the only non-teacher upstream",
        help: "upstream stage with the converted model (and thoughts)",
    },
    OptionDoc {
        name: "teacher",
        type_name: "stage name|null",
        default: "null",
        help: "upstream full-precision model to distill from; null = QAT without distillation",
    },
    DATA_OPTION,
    OptionDoc {
        name: "steps",
        type_name: "int",
        default: "200",
        help: "optimizer steps",
    },
    OptionDoc {
        name: "batch_size",
        type_name: "int",
        default: "8",
        help: "sequences per step",
    },
    OptionDoc {
        name: "seq_len",
        type_name: "int",
        default: "128",
        help: "tokens per sequence",
    },
    OptionDoc {
        name: "lr",
        type_name: "float",
        default: "1e-3",
        help: "peak lr of full-precision parameters (norms, embeddings, head, thoughts)",
    },
    OptionDoc {
        name: "quantized_lr_scale",
        type_name: "float",
        default: "0.1",
        help: "lr of quantized latent weights = lr x this (Phase 4 guide: 0.1)",
    },
    OptionDoc {
        name: "weight_decay",
        type_name: "float",
        default: "0.01",
        help: "AdamW decoupled weight decay on matrices",
    },
    OptionDoc {
        name: "warmup_steps",
        type_name: "int",
        default: "20",
        help: "linear warmup, then cosine decay",
    },
    OptionDoc {
        name: "min_lr_ratio",
        type_name: "float",
        default: "0.1",
        help: "cosine floor relative to the peak lr",
    },
    OptionDoc {
        name: "grad_clip",
        type_name: "float",
        default: "1.0",
        help: "global grad-norm clip (0 = off)",
    },
    OptionDoc {
        name: "distill_weight",
        type_name: "float in [0,1]",
        default: "0.5",
        help: "mix of KL(teacher || student) vs LM loss",
    },
    OptionDoc {
        name: "temperature",
        type_name: "float",
        default: "2.0",
        help: "distillation temperature",
    },
    OptionDoc {
        name: "eval_every",
        type_name: "int",
        default: "50",
        help: "held-out loss interval in steps (0 = off)",
    },
    OptionDoc {
        name: "eval_batches",
        type_name: "int",
        default: "4",
        help: "held-out batches per evaluation",
    },
    OptionDoc {
        name: "patience",
        type_name: "int",
        default: "3",
        help: "early stop after this many evaluations without improvement (0 = off)",
    },
    OptionDoc {
        name: "restore_best",
        type_name: "bool",
        default: "true if eval_every > 0, else false",
        help: "write the weights of the best held-out evaluation (kept in memory) instead of the last step's when a later evaluation was worse, with or without early stopping; needs eval_every > 0",
    },
    OptionDoc {
        name: "checkpoint_every",
        type_name: "int",
        default: "50",
        help: "resume checkpoint interval in steps (0 = off)",
    },
    OptionDoc {
        name: "autocast",
        type_name: "bool",
        default: "true",
        help: "bf16 mixed precision (libtorch autocast) on CUDA; no effect on CPU",
    },
    OptionDoc {
        name: "quant_warmup_steps",
        type_name: "int",
        default: "0",
        help: "gradual quantization: lambda in x + lambda*(q(x)-x) ramps 0 -> 1 over these steps (held-out evaluation always uses lambda = 1)",
    },
    OptionDoc {
        name: "hidden_distill_weight",
        type_name: "float >= 0",
        default: "0",
        help: "hidden-state distillation: adds this x the relative MSE |s-t|^2/|t|^2 between student and teacher residual streams after each block, averaged over blocks (needs `teacher`)",
    },
    OptionDoc {
        name: "hidden_distill_norm",
        type_name: "block|token",
        default: "block",
        help: "what the hidden-state loss divides by: the block's whole residual stream (`block`), or each token's own (`token`: relative MSE per position, averaged, so tokens with massive activations do not dominate)",
    },
    OptionDoc {
        name: "teacher_dtype",
        type_name: "float32|bfloat16",
        default: "float32",
        help: "dtype of the frozen teacher's linear weights and matmuls (bf16 halves its weight memory; faster on CPUs with AVX512-BF16)",
    },
    OptionDoc {
        name: "matmul_dtype",
        type_name: "float32|bfloat16",
        default: "float32",
        help: "dtype of the student's matmuls; latent weights, residual stream, norms and losses stay fp32",
    },
    OptionDoc {
        name: "train_embeddings",
        type_name: "bool",
        default: "true",
        help: "train the kept full-precision embeddings / LM head; false freezes them (less time and optimizer memory)",
    },
    OptionDoc {
        name: "gradient_checkpointing",
        type_name: "bool",
        default: "false",
        help: "keep only each block's input during the forward and recompute the blocks one at a time in the backward: less activation memory for one more block forward per step; same gradients",
    },
    OptionDoc {
        name: "loss_chunk_rows",
        type_name: "int >= 0",
        default: "0",
        help: "with gradient_checkpointing: head, logits and losses over chunks of this many positions (student and teacher), each backpropagated before the next; 0 = whole batch",
    },
];

impl StageKind for Train {
    fn name(&self) -> &'static str {
        "train"
    }

    fn summary(&self) -> &'static str {
        "quantization-aware training with distillation, two-group AdamW, warmup+cosine, early stopping, resume"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        let c = parse_config::<TrainConfig>(config)?;
        c.data.check("data")?;
        let issue = |path: &str, message: String| ConfigIssue {
            path: vec![path.into()],
            message,
        };
        if c.steps == 0 || c.batch_size < 1 || c.seq_len < 2 {
            return Err(issue(
                "steps",
                "steps >= 1, batch_size >= 1 and seq_len >= 2 are required".into(),
            ));
        }
        if !(0.0..=1.0).contains(&c.distill_weight) {
            return Err(issue(
                "distill_weight",
                format!("must be in [0, 1], got {}", c.distill_weight),
            ));
        }
        if c.temperature <= 0.0 || c.lr <= 0.0 || c.quantized_lr_scale < 0.0 {
            return Err(issue(
                "lr",
                "lr and temperature must be > 0, quantized_lr_scale >= 0".into(),
            ));
        }
        if !(c.hidden_distill_weight >= 0.0 && c.hidden_distill_weight.is_finite()) {
            return Err(issue(
                "hidden_distill_weight",
                format!("must be a number >= 0, got {}", c.hidden_distill_weight),
            ));
        }
        if c.hidden_distill_weight > 0.0 && c.teacher.is_none() {
            return Err(issue(
                "hidden_distill_weight",
                "needs a `teacher` to distill the hidden states from; set `teacher:` or drop `hidden_distill_weight`".into(),
            ));
        }
        if c.loss_chunk_rows < 0 {
            return Err(issue(
                "loss_chunk_rows",
                format!("must be >= 0 (0 = no chunks), got {}", c.loss_chunk_rows),
            ));
        }
        if c.loss_chunk_rows > 0 && !c.gradient_checkpointing {
            return Err(issue(
                "loss_chunk_rows",
                "chunks the head's losses of the checkpointed backward; set `gradient_checkpointing: true` or drop `loss_chunk_rows`".into(),
            ));
        }
        if c.restore_best == Some(true) && c.eval_every == 0 {
            return Err(issue(
                "restore_best",
                "needs held-out evaluation to know the best weights; set `eval_every` > 0 or drop `restore_best`".into(),
            ));
        }
        Ok(())
    }

    fn key_metrics(&self) -> &'static [&'static str] {
        &[
            "final_loss",
            "best_heldout_loss",
            "steps_completed",
            "tokens_per_s",
        ]
    }

    fn backend(&self) -> Backend {
        Backend::Torch
    }

    fn uses_device(&self) -> bool {
        true
    }

    fn deps(&self, config: &Value) -> Vec<String> {
        parse_config::<TrainConfig>(config)
            .map(|c| c.data.files())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> Value {
        let mut c = serde_json::json!({"data": {"corpus": "c.txt"}});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn restore_best_defaults_to_whether_heldout_evaluation_runs() {
        let c: TrainConfig = parse_config(&config(serde_json::json!({}))).unwrap();
        assert!(c.restores_best());
        let c: TrainConfig = parse_config(&config(serde_json::json!({"eval_every": 0}))).unwrap();
        assert!(!c.restores_best());
        let c: TrainConfig =
            parse_config(&config(serde_json::json!({"restore_best": false}))).unwrap();
        assert!(!c.restores_best());
    }

    #[test]
    fn restore_best_without_heldout_evaluation_is_a_config_error() {
        let cfg = config(serde_json::json!({"restore_best": true, "eval_every": 0}));
        let e = Train.check_config(&cfg).unwrap_err();
        assert_eq!(e.path, vec!["restore_best".to_string()]);
        assert!(e.message.contains("eval_every"), "{}", e.message);
        let ok = config(serde_json::json!({"restore_best": true, "eval_every": 5}));
        assert!(Train.check_config(&ok).is_ok());
    }

    #[test]
    fn loss_chunks_need_gradient_checkpointing() {
        let cfg = config(serde_json::json!({"loss_chunk_rows": 64}));
        let e = Train.check_config(&cfg).unwrap_err();
        assert_eq!(e.path, vec!["loss_chunk_rows".to_string()]);
        assert!(
            e.message.contains("gradient_checkpointing"),
            "{}",
            e.message
        );
        let neg =
            config(serde_json::json!({"loss_chunk_rows": -1, "gradient_checkpointing": true}));
        assert!(Train.check_config(&neg).is_err());
        let ok = config(serde_json::json!({"loss_chunk_rows": 64, "gradient_checkpointing": true}));
        assert!(Train.check_config(&ok).is_ok());
    }

    #[test]
    fn hidden_distillation_needs_a_teacher_and_a_non_negative_weight() {
        let cfg = config(serde_json::json!({"hidden_distill_weight": 1.0}));
        let e = Train.check_config(&cfg).unwrap_err();
        assert_eq!(e.path, vec!["hidden_distill_weight".to_string()]);
        assert!(e.message.contains("teacher"), "{}", e.message);
        let neg = config(serde_json::json!({"hidden_distill_weight": -1.0, "teacher": "load"}));
        assert!(Train.check_config(&neg).is_err());
        let ok = config(serde_json::json!({"hidden_distill_weight": 1.0, "teacher": "load"}));
        assert!(Train.check_config(&ok).is_ok());
    }
}
