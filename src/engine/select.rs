//! Partial runs (issue #17): `--until`, `--only` and `--from` turn into a
//! subset of the pipeline's stages plus two lists the scheduler and `plan`
//! both honour, so what `plan` reports is what `run` does:
//!
//! - `--until S`: S and everything upstream of it; nothing downstream.
//! - `--only S`: S alone; its upstream stages must be reused from the
//!   cache (`cache_only`), never run, so the command checks before it starts.
//! - `--from S`: S and everything downstream re-run (`force`); upstream
//!   stages behave as usual (reused when cached).
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::pipeline::{did_you_mean, Pipeline};

/// The stages a run is limited to, as the user wrote them; recorded with
/// the run so `resume` continues the same part of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub until: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// What a selection means for one pipeline.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The pipeline with only the stages this run covers (topological order kept).
    pub pipeline: Pipeline,
    /// Stages to re-run even when cached (`--from` and downstream).
    pub force: Vec<String>,
    /// Stages that must be reused and may not run (upstream of `--only`).
    pub cache_only: Vec<String>,
}

/// A selection that does not fit the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("{flag} `{stage}`: no such stage in `{pipeline}`{hint}")]
    UnknownStage {
        flag: &'static str,
        stage: String,
        pipeline: String,
        hint: String,
    },
    #[error("`--only` cannot be combined with `--until` or `--from`; `--only` already names every stage that runs")]
    OnlyWithOthers,
    #[error("`--from {from}` is not upstream of any `--until` stage, so nothing would re-run; drop one of them")]
    FromOutsideUntil { from: String },
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.until.is_empty() && self.only.is_empty() && self.from.is_empty()
    }

    /// `--until a --from b` style text for messages and `runs show`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (flag, names) in [
            ("--until", &self.until),
            ("--only", &self.only),
            ("--from", &self.from),
        ] {
            for n in names {
                parts.push(format!("{flag} {n}"));
            }
        }
        parts.join(" ")
    }

    /// Applies the selection to `pipeline`.
    pub fn apply(&self, pipeline: &Pipeline) -> Result<Selected, SelectError> {
        for (flag, names) in [
            ("--until", &self.until),
            ("--only", &self.only),
            ("--from", &self.from),
        ] {
            for n in names {
                if pipeline.stage(n).is_none() {
                    let hint = did_you_mean(n, pipeline.stages.iter().map(|s| s.name.as_str()))
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    return Err(SelectError::UnknownStage {
                        flag,
                        stage: n.clone(),
                        pipeline: pipeline.name.clone(),
                        hint,
                    });
                }
            }
        }
        let others = !self.until.is_empty() || !self.from.is_empty();
        if !self.only.is_empty() && others {
            return Err(SelectError::OnlyWithOthers);
        }
        let all: BTreeSet<String> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
        let (keep, cache_only) = if !self.only.is_empty() {
            let only: BTreeSet<String> = self.only.iter().cloned().collect();
            let up = ancestors(pipeline, &self.only);
            let cache_only: BTreeSet<String> = up.difference(&only).cloned().collect();
            (up, cache_only)
        } else if !self.until.is_empty() {
            (ancestors(pipeline, &self.until), BTreeSet::new())
        } else {
            (all, BTreeSet::new())
        };
        let mut force = BTreeSet::new();
        for f in &self.from {
            let down: BTreeSet<String> = descendants(pipeline, f)
                .into_iter()
                .filter(|s| keep.contains(s))
                .collect();
            if !keep.contains(f) {
                return Err(SelectError::FromOutsideUntil { from: f.clone() });
            }
            force.extend(down);
        }
        let mut sub = pipeline.clone();
        sub.stages.retain(|s| keep.contains(&s.name));
        let order = |set: &BTreeSet<String>| -> Vec<String> {
            pipeline
                .stages
                .iter()
                .filter(|s| set.contains(&s.name))
                .map(|s| s.name.clone())
                .collect()
        };
        Ok(Selected {
            force: order(&force),
            cache_only: order(&cache_only),
            pipeline: sub,
        })
    }
}

/// `targets` and every stage they (transitively) need.
pub fn ancestors(pipeline: &Pipeline, targets: &[String]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = targets.to_vec();
    while let Some(n) = todo.pop() {
        if out.insert(n.clone()) {
            if let Some(s) = pipeline.stage(&n) {
                todo.extend(s.needs.iter().cloned());
            }
        }
    }
    out
}

/// `start` and every stage that (transitively) needs it.
pub fn descendants(pipeline: &Pipeline, start: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = BTreeSet::from([start.to_string()]);
    // Topological order: one pass sees every upstream before its users.
    for s in &pipeline.stages {
        if s.needs.iter().any(|n| out.contains(n)) {
            out.insert(s.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> Pipeline {
        struct Any;
        impl crate::pipeline::KindCatalog for Any {
            fn kind_names(&self) -> Vec<&'static str> {
                vec!["command"]
            }
            fn check_config(
                &self,
                _: &str,
                _: &serde_json::Value,
            ) -> Option<Result<(), crate::pipeline::ConfigIssue>> {
                Some(Ok(()))
            }
        }
        let text = "version: 1\nname: d\nstages:\n  top: {uses: command}\n  left: {uses: command, needs: [top]}\n  right: {uses: command, needs: [top]}\n  bottom: {uses: command, needs: [left, right]}\n";
        let p = std::path::Path::new("/tmp/d.yaml");
        crate::pipeline::parse(text, p, p, &[], &Any).expect("valid")
    }

    fn names(p: &Pipeline) -> Vec<String> {
        p.order()
    }

    #[test]
    fn until_keeps_upstream_only() {
        let sel = Selection {
            until: vec!["left".into()],
            ..Default::default()
        };
        let s = sel.apply(&diamond()).unwrap();
        assert_eq!(names(&s.pipeline), ["top", "left"]);
        assert!(s.force.is_empty() && s.cache_only.is_empty());
    }

    #[test]
    fn only_needs_its_upstream_from_the_cache() {
        let sel = Selection {
            only: vec!["bottom".into()],
            ..Default::default()
        };
        let s = sel.apply(&diamond()).unwrap();
        assert_eq!(names(&s.pipeline), ["top", "left", "right", "bottom"]);
        assert_eq!(s.cache_only, ["top", "left", "right"]);
    }

    #[test]
    fn from_forces_downstream_within_until() {
        let sel = Selection {
            from: vec!["left".into()],
            ..Default::default()
        };
        assert_eq!(sel.apply(&diamond()).unwrap().force, ["left", "bottom"]);
        let sel = Selection {
            from: vec!["top".into()],
            until: vec!["right".into()],
            ..Default::default()
        };
        assert_eq!(sel.apply(&diamond()).unwrap().force, ["top", "right"]);
        let sel = Selection {
            from: vec!["left".into()],
            until: vec!["right".into()],
            ..Default::default()
        };
        assert!(matches!(
            sel.apply(&diamond()),
            Err(SelectError::FromOutsideUntil { .. })
        ));
    }

    #[test]
    fn unknown_stage_names_the_flag_and_a_fix() {
        let sel = Selection {
            until: vec!["lefft".into()],
            ..Default::default()
        };
        let e = sel.apply(&diamond()).unwrap_err().to_string();
        assert!(
            e.starts_with("--until `lefft`: no such stage in `d`"),
            "{e}"
        );
        assert!(e.contains("left"), "{e}");
    }
}
