//! One module per Power-of-Ten rule. Each `check` reads the parsed files
//! and returns an [`Outcome`]: how many units it examined and the raw
//! findings, each tied to the unit it fails. Suppression, test-code
//! filtering and scoring happen once, in `pot10::analyze`, so rules stay
//! about the rule.

use tree_sitter::Node;

use super::config::{Config, RuleId};
use super::lang;
use super::report::{Severity, ToolRun};
use super::source::SourceFile;

pub mod callgraph;
pub mod r10_warnings;
pub mod r1_control_flow;
pub mod r2_loop_bounds;
pub mod r3_dynamic_allocation;
pub mod r4_function_length;
pub mod r5_assertion_density;
pub mod r6_data_scope;
pub mod r7_return_values;
pub mod r8_preprocessor;
pub mod r9_pointers;

pub struct Ctx<'a> {
    pub files: &'a [SourceFile],
    pub config: &'a Config,
}

/// What a finding counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// Index into `SourceFile::functions`.
    Function(usize),
    /// Top-level code of a file (outside any function).
    FileScope,
    /// A loop, by start byte.
    Loop(usize),
    /// The file as a whole.
    File,
}

#[derive(Debug, Clone)]
pub struct RawFinding {
    pub file: usize,
    pub row: usize,
    pub col: usize,
    pub byte: usize,
    pub severity: Severity,
    pub message: String,
    pub unit: Unit,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub unit: &'static str,
    pub units: usize,
    pub findings: Vec<RawFinding>,
    pub notes: Vec<String>,
    pub tools: Vec<ToolRun>,
    /// True when the rule applies to none of the analyzed files' languages.
    pub not_applicable: bool,
    /// True when units could not be checked for lack of a tool (R10).
    pub tool_unavailable: bool,
}

impl<'a> Ctx<'a> {
    /// All files, with their index. Every file is analyzed as far as it
    /// parsed; `walk_file` keeps rules out of the regions that did not.
    pub fn parsed(&self) -> impl Iterator<Item = (usize, &'a SourceFile)> {
        self.files.iter().enumerate()
    }

    /// Number of functions that parsed.
    pub fn function_units(&self) -> usize {
        self.parsed().map(|(_, f)| f.functions.len()).sum()
    }

    /// Functions plus one top-level scope per parsed file.
    pub fn scope_units(&self) -> usize {
        self.parsed().map(|(_, f)| f.functions.len() + 1).sum()
    }
}

/// Pre-order walk of a file that never enters skipped test code or
/// regions that did not parse.
pub fn walk_file<'t>(file: &'t SourceFile, mut visit: impl FnMut(Node<'t>) -> bool) {
    lang::walk(file.tree.root_node(), |n| {
        if n.is_error() || (!file.skip_ranges.is_empty() && file.in_skipped(n.start_byte())) {
            return false;
        }
        visit(n)
    });
}

/// The function containing `byte`, or the file's top level.
pub fn scope_unit(file: &SourceFile, byte: usize) -> Unit {
    file.function_at(byte)
        .map_or(Unit::FileScope, Unit::Function)
}

pub fn finding(
    file: usize,
    node: Node<'_>,
    severity: Severity,
    message: String,
    unit: Unit,
) -> RawFinding {
    let p = node.start_position();
    RawFinding {
        file,
        row: p.row,
        col: p.column,
        byte: node.start_byte(),
        severity,
        message,
        unit,
    }
}

pub fn check(rule: RuleId, ctx: &Ctx<'_>) -> Outcome {
    match rule {
        RuleId::R1 => r1_control_flow::check(ctx),
        RuleId::R2 => r2_loop_bounds::check(ctx),
        RuleId::R3 => r3_dynamic_allocation::check(ctx),
        RuleId::R4 => r4_function_length::check(ctx),
        RuleId::R5 => r5_assertion_density::check(ctx),
        RuleId::R6 => r6_data_scope::check(ctx),
        RuleId::R7 => r7_return_values::check(ctx),
        RuleId::R8 => r8_preprocessor::check(ctx),
        RuleId::R9 => r9_pointers::check(ctx),
        RuleId::R10 => r10_warnings::check(ctx),
    }
}
