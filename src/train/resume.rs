//! `--resume` continues a run only as it was started: every run-defining flag given on the
//! command line must equal the run's setting. [`ResumeCheck`] compares them by field name, so a
//! new setting is checked as soon as its flag and its field share a name.

use anyhow::{ensure, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// The flags given on the command line against a resumed run's settings.
///
/// `given` holds the ids of the flags given (clap ids: `--weight-decay` → `weight_decay`).
/// [`ResumeCheck::fields`] compares each given id that names a field of the settings; the other
/// checks cover what is not a field.
#[derive(Debug)]
pub struct ResumeCheck<'a> {
    given: &'a [String],
    differ: Vec<String>,
}

/// The leaves of a JSON value by field name (the last key of their path); a name met twice
/// keeps its first leaf.
fn leaves(v: &Value, out: &mut Vec<(String, Value)>) {
    if let Value::Object(map) = v {
        for (k, v) in map {
            match v {
                Value::Object(_) => leaves(v, out),
                _ if out.iter().any(|(n, _)| n == k) => {}
                _ => out.push((k.clone(), v.clone())),
            }
        }
    }
}

/// A setting as the user wrote it: strings without quotes, `null` as `none`.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        v => v.to_string(),
    }
}

/// `--weight_decay`-style id → `--weight-decay`.
fn flag_name(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

impl<'a> ResumeCheck<'a> {
    pub fn new(given: &'a [String]) -> Self {
        Self {
            given,
            differ: Vec::new(),
        }
    }

    /// Whether the flag with clap id `id` was given.
    pub fn was_given(&self, id: &str) -> bool {
        self.given.iter().any(|g| g == id)
    }

    /// Every given flag that names a field of `wanted` (the settings the flags would start a run
    /// with) must equal that field of `run`. `aliases` maps a flag id to its field's name where
    /// they differ (`("optimizer", "kind")`).
    pub fn fields<T: Serialize>(mut self, wanted: &T, run: &T, aliases: &[(&str, &str)]) -> Self {
        let json = |t: &T| serde_json::to_value(t).unwrap_or(Value::Null);
        let (mut w, mut r) = (Vec::new(), Vec::new());
        leaves(&json(wanted), &mut w);
        leaves(&json(run), &mut r);
        for id in self.given {
            let field = aliases
                .iter()
                .find(|(flag, _)| flag == id)
                .map_or(id.as_str(), |(_, f)| f);
            let find = |l: &[(String, Value)]| l.iter().find(|(n, _)| n == field).cloned();
            if let (Some((_, wv)), Some((_, rv))) = (find(&w), find(&r)) {
                if wv != rv {
                    self.differ.push(format!(
                        "{} {} (the run has {})",
                        flag_name(id),
                        show(&wv),
                        show(&rv)
                    ));
                }
            }
        }
        self
    }

    /// `--config`, when given, must describe the run's model (`same`: whether it does).
    pub fn model(mut self, spec: &str, same: impl FnOnce() -> bool) -> Self {
        if self.was_given("config") && !same() {
            self.differ.push(format!(
                "--config {spec} (the run has another model: its checkpoint/config.json)"
            ));
        }
        self
    }

    /// A flag that a resumed run takes with no value at all (`--init-from`).
    pub fn refuse(mut self, id: &str, why: &str) -> Self {
        if self.was_given(id) {
            self.differ
                .push(format!("{} (the run has {why})", flag_name(id)));
        }
        self
    }

    /// An error naming every differing flag, or `Ok` when the flags fit the run in `run_dir`.
    pub fn check(self, run_dir: &Path) -> Result<()> {
        ensure!(
            self.differ.is_empty(),
            "--resume: the run in {} was started with other settings: {}; drop these flags \
             to continue it, or start a new run in another --run-dir",
            run_dir.display(),
            self.differ.join(", ")
        );
        Ok(())
    }
}

/// Whether two settings serialise to the same JSON (models compared field by field).
pub fn same_json<T: Serialize, U: Serialize>(a: &T, b: &U) -> bool {
    matches!(
        (serde_json::to_value(a), serde_json::to_value(b)),
        (Ok(x), Ok(y)) if x == y
    )
}
