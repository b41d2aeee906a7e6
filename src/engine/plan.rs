//! `plan`: what a run would do, without running anything. For each stage:
//! reuse (and from which run) or run, and why it must run - naming the
//! input that changed since the last execution of the same stage.
use std::collections::{BTreeMap, HashMap};

use anyhow::Result;

use super::fingerprint::FingerprintInputs;
use super::hashing;
use super::scheduler::{cacheable, fingerprint_inputs};
use super::{KindInfo, RunOptions};
use crate::pipeline::Pipeline;
use crate::store::Store;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanEntry {
    pub stage: String,
    pub kind: String,
    /// `run` or `reuse`.
    pub action: String,
    pub reused_from: Option<i64>,
    pub reasons: Vec<String>,
}

pub fn plan(
    store: &Store,
    pipeline: &Pipeline,
    kinds: &dyn KindInfo,
    opts: &RunOptions,
) -> Result<Vec<PlanEntry>> {
    // Stage -> content hash of the outputs it would reuse; absent = runs.
    let mut reused: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for stage in &pipeline.stages {
        let mut entry = PlanEntry {
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            action: "run".into(),
            reused_from: None,
            reasons: Vec::new(),
        };
        let rerun_upstream: Vec<&String> = stage
            .needs
            .iter()
            .filter(|n| !reused.contains_key(*n))
            .collect();
        if opts.force_all || opts.force.contains(&stage.name) {
            entry.reasons.push("forced (--force)".into());
        } else if !cacheable(stage, kinds, opts) {
            entry
                .reasons
                .push("caching is off for this stage (measurements are per run)".into());
        } else if !rerun_upstream.is_empty() {
            for n in rerun_upstream {
                entry.reasons.push(format!(
                    "upstream `{n}` runs first (its outputs may change)"
                ));
            }
        } else {
            let hashes: BTreeMap<String, String> = stage
                .needs
                .iter()
                .map(|n| (n.clone(), reused[n].clone()))
                .collect();
            match fingerprint_inputs(pipeline, stage, kinds, hashes) {
                Err(e) => entry.reasons.push(format!("{e:#}")),
                Ok(inputs) => match store.find_reusable(&inputs.fingerprint())? {
                    Some(src) => {
                        let arts: Vec<_> = store
                            .artifacts(src.run_id)?
                            .into_iter()
                            .filter(|(s, _)| s == &src.stage)
                            .map(|(_, a)| a)
                            .collect();
                        reused.insert(stage.name.clone(), hashing::combined_hash(&arts));
                        entry.action = "reuse".into();
                        entry.reused_from = Some(src.run_id);
                    }
                    None => entry.reasons = why_changed(store, pipeline, &stage.name, &inputs)?,
                },
            }
        }
        out.push(entry);
    }
    Ok(out)
}

fn why_changed(
    store: &Store,
    pipeline: &Pipeline,
    stage: &str,
    inputs: &FingerprintInputs,
) -> Result<Vec<String>> {
    let last = store.last_execution(&pipeline.name, stage)?;
    let Some(last) = last else {
        return Ok(vec!["never run before".into()]);
    };
    let old: Option<FingerprintInputs> = last
        .fingerprint_inputs
        .and_then(|v| serde_json::from_value(v).ok());
    let reasons = match old {
        Some(old) => inputs.changes_since(&old),
        None => Vec::new(),
    };
    if reasons.is_empty() {
        Ok(vec![format!(
            "outputs of run {} are gone from disk",
            last.run_id
        )])
    } else {
        Ok(reasons)
    }
}
