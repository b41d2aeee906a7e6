//! Live progress: one line per running stage with its elapsed time and the
//! stage's own progress (indicatif), and one plain line per state change.
//! Bars only draw on a terminal; in CI logs only the plain lines appear.
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    tty: bool,
    quiet: bool,
    /// Prefix of every line (`[run 3] ` when sweep points share a terminal).
    label: String,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal() && !quiet;
        let target = if tty {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
            tty,
            quiet,
            label: String::new(),
        }
    }

    /// Prefixes every line with `label`.
    pub fn with_label(mut self, label: &str) -> Progress {
        self.label = label.to_string();
        self
    }

    /// A line that stays (above the bars on a terminal).
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let _ = self.multi.println(format!("{}{text}", self.label));
        } else {
            eprintln!("{}{text}", self.label);
        }
    }

    pub fn started(&mut self, stage: &str, kind: &str) {
        self.line(&format!("  started   {stage} ({kind})"));
        if !self.tty {
            return;
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<18} {elapsed:>4} {wide_msg}")
                .expect("valid template"),
        );
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bars.insert(stage.to_string(), bar);
    }

    pub fn update(&mut self, stage: &str, pos: u64, len: Option<u64>, message: &str) {
        let Some(bar) = self.bars.get(stage) else {
            return;
        };
        if let Some(len) = len {
            if bar.length() != Some(len) {
                bar.set_length(len);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:<18} {elapsed:>4} [{bar:24}] {pos}/{len} {wide_msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
            }
        }
        bar.set_position(pos);
        bar.set_message(message.to_string());
    }

    pub fn finished(&mut self, stage: &str, status: &str, detail: &str) {
        if let Some(bar) = self.bars.remove(stage) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let mark = match status {
            "completed" => "ok",
            "cached" => "cached",
            "skipped" => "skipped",
            "interrupted" => "stopped",
            _ => "FAILED",
        };
        if detail.is_empty() {
            self.line(&format!("  {mark:<9} {stage}"));
        } else {
            self.line(&format!("  {mark:<9} {stage} {detail}"));
        }
    }
}
