//! The weighted compliance score.
//!
//! For every selected rule r the analyzer counts *units* (what the rule is
//! about: functions for R1/R3/R4/R5, loops for R2, scopes = functions plus
//! one top level per file for R6/R7/R9, files for R8/R10) and *failing
//! units* (units with at least one unsuppressed finding of severity
//! `error` or `warning`). Then
//!
//! ```text
//! pass_r = (units_r - failing_r) / units_r
//! score  = sum_r(w_r * pass_r) / sum_r(w_r)     over rules with units_r > 0
//! ```
//!
//! Rules with no units (nothing to check, not applicable to the analyzed
//! languages, or R10 with no tool available) are left out of both sums and
//! shown as `n/a`: an unavailable tool is never counted as a pass. With no
//! rule evaluated at all the score is 1.0 (vacuous) and the report says so.
//!
//! Default weights: 2 for R1 (control flow), R2 (loop bounds) and R9
//! (pointers), the rules whose violation defeats static verification of
//! termination and memory safety outright; 1 for the others. Holzmann gives
//! the rules no weights; these are our choice and can be overridden with
//! `Config::weights`.

use std::collections::BTreeMap;

use super::config::RuleId;

/// The formula as printed in reports.
pub const FORMULA: &str = "score = sum(w_r * pass_r) / sum(w_r) over rules with units > 0; pass_r = (units_r - failing_r) / units_r";

pub fn default_weight(rule: RuleId) -> f64 {
    match rule {
        RuleId::R1 | RuleId::R2 | RuleId::R9 => 2.0,
        _ => 1.0,
    }
}

pub fn weight(rule: RuleId, overrides: &BTreeMap<RuleId, f64>) -> f64 {
    overrides
        .get(&rule)
        .copied()
        .unwrap_or_else(|| default_weight(rule))
}

/// `(rule weight, pass rate)` pairs of evaluated rules -> score.
pub fn weighted_score(rates: &[(f64, f64)]) -> f64 {
    let total: f64 = rates.iter().map(|(w, _)| w).sum();
    if total <= 0.0 {
        return 1.0;
    }
    rates.iter().map(|(w, p)| w * p).sum::<f64>() / total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_weighted_mean_of_evaluated_rules() {
        // R1 (w=2) at 0.5 and R4 (w=1) at 1.0 -> (1.0 + 1.0) / 3.
        let s = weighted_score(&[(2.0, 0.5), (1.0, 1.0)]);
        assert!((s - 2.0 / 3.0).abs() < 1e-12, "{s}");
        assert_eq!(weighted_score(&[]), 1.0);
        let mut o = BTreeMap::new();
        o.insert(RuleId::R4, 5.0);
        assert_eq!(weight(RuleId::R4, &o), 5.0);
        assert_eq!(weight(RuleId::R9, &o), 2.0);
    }
}
