//! `convert_bitnet`: full-precision model -> latent BitNet weights + packed form.
use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use bitnet_pipeline::stages::convert_bitnet::{ConvertBitnetConfig, QuantMode};
use bitnet_pipeline::stages::profiling::KeptDtypeChoice;
use bitnet_pipeline::stages::{parse_config, StageContext};
use serde_json::json;
use tch::{nn, Device};

use super::common::{carry_tokenizer, pick_upstream, read_model_dir, write_model_dir, PACKED_FILE};
use crate::bitnet::{
    convert_to_bitnet, ActQuant, ConvertSpec, KeptStorage, QuantConfig, UnpackBackend, WeightQuant,
};

/// Bytes the kept layers' `dtype` saves against their float form in
/// `packed` (what `packed.safetensors` holds less), tied embeddings once.
fn kept_bytes_saved(packed: &crate::bitnet::LlamaModel, dtype: KeptStorage) -> Result<i64> {
    let mut saved = 0i64;
    for (name, t) in packed.named_tensors() {
        if !crate::bitnet::kept::is_kept_name(&name) || t.f_kind()? == tch::Kind::Uint8 {
            continue;
        }
        let (n, rows) = (t.numel() as i64, t.size()[0]);
        let float = n * t.f_kind()?.elt_size_in_bytes() as i64;
        saved += float
            - match dtype {
                KeptStorage::Fp32 => float,
                KeptStorage::Bf16 => n * 2,
                KeptStorage::Int8 => n + rows * 4,
            };
    }
    Ok(saved)
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c: ConvertBitnetConfig = parse_config(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let dir = pick_upstream(ctx, c.model.as_deref(), "model", &[])?;
    let files = read_model_dir(&dir, Device::Cpu)?;
    if files.spec.is_some() {
        anyhow::bail!(
            "{}: is already a BitNet model; convert_bitnet needs a full-precision model",
            files.path.display()
        );
    }
    let spec = ConvertSpec {
        quant: QuantConfig {
            weight: match c.mode {
                QuantMode::Ternary => WeightQuant::Ternary,
                QuantMode::Binary => WeightQuant::Binary,
            },
            act: match c.activation_bits {
                Some(bits) => ActQuant::PerTokenAbsmax { bits },
                None => ActQuant::Off,
            },
        },
        convert: c.convert.clone(),
        keep_full_precision: c.keep_full_precision.clone(),
        kept_dtype: match c.kept_dtype {
            KeptDtypeChoice::Fp32 => KeptStorage::Fp32,
            KeptDtypeChoice::Bf16 => KeptStorage::Bf16,
            KeptDtypeChoice::Int8 => KeptStorage::Int8,
        },
    };
    let fp = files.build_frozen(Device::Cpu)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let (model, report) = convert_to_bitnet(&fp, &vs.root(), &spec)?;
    if report.converted.is_empty() {
        anyhow::bail!(
            "`convert`/`keep_full_precision` select no linear layer of {}; nothing would be quantized",
            files.path.display()
        );
    }
    let mut meta = BTreeMap::new();
    for (k, v) in &files.metadata {
        if k.starts_with("source.") {
            meta.insert(k.clone(), json!(v));
        }
    }
    write_model_dir(ctx.output_dir(), &model, Some(&spec), &meta)?;
    carry_tokenizer(&dir, ctx.output_dir())?;
    let packed = model.to_packed(&UnpackBackend)?;
    let total = report.converted_parameters + report.kept_parameters;
    let packed_bytes = packed.weight_bytes()? - kept_bytes_saved(&packed, spec.kept_dtype)?;
    let fp32 = total * 4;
    let fp16 = total * 2;
    let packed_file = std::fs::metadata(ctx.output_dir().join(PACKED_FILE))?.len();
    ctx.metric(
        "converted_parameters",
        report.converted_parameters as f64,
        Some("params"),
    );
    ctx.metric(
        "kept_parameters",
        report.kept_parameters as f64,
        Some("params"),
    );
    ctx.metric("packed_weight_bytes", packed_bytes as f64, Some("bytes"));
    ctx.metric("fp32_weight_bytes", fp32 as f64, Some("bytes"));
    ctx.metric("fp16_weight_bytes", fp16 as f64, Some("bytes"));
    ctx.metric(
        "compression_vs_fp32",
        fp32 as f64 / packed_bytes as f64,
        Some("x"),
    );
    ctx.metric(
        "compression_vs_fp16",
        fp16 as f64 / packed_bytes as f64,
        Some("x"),
    );
    ctx.metric("packed_file_bytes", packed_file as f64, Some("bytes"));
    ctx.param("bitnet.spec", serde_json::to_value(&spec)?);
    let doc = json!({
        "report": report,
        "bytes": {"packed": packed_bytes, "fp32": fp32, "fp16": fp16, "packed_file": packed_file},
    });
    std::fs::write(
        ctx.output_dir().join("conversion.json"),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    Ok(())
}
