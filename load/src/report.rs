//! The benchmark report: every measure with its value, unit and goal, written twice from the same
//! figures, as a Markdown table for people (docs/benchmarks.md) and as JSON for tools
//! (docs/benchmarks.json, next to it).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// Which side of the goal a value must fall on.
#[derive(Clone, Copy)]
pub enum Comparison {
    AtLeast,
    AtMost,
}

/// A target a measure is held to.
#[derive(Clone, Copy)]
pub struct Goal {
    pub comparison: Comparison,
    pub value: f64,
}

impl Goal {
    /// A goal met by values at least `value`.
    pub fn at_least(value: f64) -> Option<Goal> {
        Some(Goal {
            comparison: Comparison::AtLeast,
            value,
        })
    }

    /// A goal met by values at most `value`.
    pub fn at_most(value: f64) -> Option<Goal> {
        Some(Goal {
            comparison: Comparison::AtMost,
            value,
        })
    }

    fn is_met_by(self, value: f64) -> bool {
        match self.comparison {
            Comparison::AtLeast => value >= self.value,
            Comparison::AtMost => value <= self.value,
        }
    }
}

/// One row of the report.
pub struct Measure {
    /// Stable key for tools, e.g. `score_10000_per_second`.
    pub key: String,
    /// What was measured, in words.
    pub name: String,
    /// The figure the goal applies to.
    pub value: f64,
    pub unit: &'static str,
    /// The result as people read it, with the context that explains the value.
    pub result: String,
    pub goal: Option<Goal>,
    /// The goal in words ("none" when there is none).
    pub goal_text: String,
    /// Further figures of the same run, for tools.
    pub details: Value,
}

impl Measure {
    /// Whether the goal is met; `None` for a measure without a goal.
    pub fn met(&self) -> Option<bool> {
        self.goal.map(|goal| goal.is_met_by(self.value))
    }
}

/// Everything a bench run reports.
pub struct Report {
    pub command: String,
    pub measured_at: String,
    pub measures: Vec<Measure>,
    /// Markdown paragraphs after the table.
    pub notes: Vec<String>,
}

impl Report {
    /// The path of the JSON report beside the Markdown one.
    pub fn json_path(markdown: &Path) -> PathBuf {
        markdown.with_extension("json")
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut text = String::from("# Benchmarks\n\n");
        text.push_str(&format!(
            "Measured by `{}` on {} ({} cores), {}.\n\
             Load generator and service share the machine: every number includes that contention.\n\
             The same figures, machine-readable: [benchmarks.json](benchmarks.json).\n\n",
            self.command,
            std::env::consts::ARCH,
            cores(),
            self.measured_at
        ));
        text.push_str("| measure | result | goal | met? |\n|---|---|---|---|\n");
        for measure in &self.measures {
            let met = match measure.met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            text.push_str(&format!(
                "| {} | {} | {} | {met} |\n",
                measure.name, measure.result, measure.goal_text
            ));
        }
        for note in &self.notes {
            text.push('\n');
            text.push_str(note);
            text.push('\n');
        }
        text
    }

    /// The JSON report.
    pub fn json(&self) -> Value {
        let measures: Vec<Value> = self
            .measures
            .iter()
            .map(|measure| {
                json!({
                    "key": measure.key,
                    "name": measure.name,
                    "value": measure.value,
                    "unit": measure.unit,
                    "goal": measure.goal.map(|goal| json!({
                        "comparison": match goal.comparison {
                            Comparison::AtLeast => ">=",
                            Comparison::AtMost => "<=",
                        },
                        "value": goal.value,
                        "unit": measure.unit,
                        "text": measure.goal_text,
                    })),
                    "met": measure.met(),
                    "details": measure.details,
                })
            })
            .collect();
        json!({
            "command": self.command,
            "measured_at": self.measured_at,
            "arch": std::env::consts::ARCH,
            "cores": cores(),
            "measures": measures,
        })
    }

    /// Writes the Markdown report to `markdown` and the JSON one beside it.
    pub fn write(&self, markdown: &Path) -> Result<()> {
        if let Some(parent) = markdown.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        // The micro-benchmarks' section is written by hand from `cargo bench`: keep it.
        let kept = std::fs::read_to_string(markdown)
            .ok()
            .and_then(|old| kept_section(&old).map(str::to_owned));
        let mut text = self.markdown();
        if let Some(kept) = kept {
            text.push('\n');
            text.push_str(&kept);
        }
        std::fs::write(markdown, text)
            .with_context(|| format!("failed to write {}", markdown.display()))?;
        let json_path = Self::json_path(markdown);
        let json = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(&json_path, json + "\n")
            .with_context(|| format!("failed to write {}", json_path.display()))?;
        Ok(())
    }
}

/// The heading of the section a new report keeps from the old one.
pub const KEPT_HEADING: &str = "## Micro-benchmarks";

/// The kept section of an old report, from its heading to the end.
fn kept_section(old: &str) -> Option<&str> {
    old.find(&format!("\n{KEPT_HEADING}"))
        .map(|start| &old[start + 1..])
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(value: f64, goal: Option<Goal>) -> Measure {
        Measure {
            key: "throughput".into(),
            name: "throughput".into(),
            value,
            unit: "events/s",
            result: format!("{value} events/s"),
            goal,
            goal_text: "≥ 10 events/s".into(),
            details: json!({}),
        }
    }

    #[test]
    fn goals_are_judged_on_the_right_side() {
        assert_eq!(measure(10.0, Goal::at_least(10.0)).met(), Some(true));
        assert_eq!(measure(9.9, Goal::at_least(10.0)).met(), Some(false));
        assert_eq!(measure(10.0, Goal::at_most(10.0)).met(), Some(true));
        assert_eq!(measure(10.1, Goal::at_most(10.0)).met(), Some(false));
        assert_eq!(measure(10.1, None).met(), None);
    }

    #[test]
    fn the_micro_benchmarks_section_survives_a_new_report() {
        let directory = std::env::temp_dir().join(format!("report-{}", std::process::id()));
        let path = directory.join("benchmarks.md");
        let report = |value| Report {
            command: "bench".into(),
            measured_at: "now".into(),
            measures: vec![measure(value, None)],
            notes: Vec::new(),
        };
        report(1.0).write(&path).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n## Micro-benchmarks\n\nparse: 1 µs\n");
        std::fs::write(&path, text).unwrap();
        report(2.0).write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("| 2 events/s |"));
        assert!(!text.contains("| 1 events/s |"));
        assert!(text.ends_with("\n\n## Micro-benchmarks\n\nparse: 1 µs\n"));
        assert_eq!(text.matches(KEPT_HEADING).count(), 1);
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn markdown_and_json_carry_the_same_figures() {
        let report = Report {
            command: "bench".into(),
            measured_at: "now".into(),
            measures: vec![
                measure(12.0, Goal::at_least(10.0)),
                measure(8.0, Goal::at_least(10.0)),
            ],
            notes: vec!["a note".into()],
        };
        let markdown = report.markdown();
        assert!(markdown.contains("| throughput | 12 events/s | ≥ 10 events/s | yes |"));
        assert!(markdown.contains("| throughput | 8 events/s | ≥ 10 events/s | **no** |"));
        assert!(markdown.ends_with("\na note\n"));
        let json = report.json();
        assert_eq!(json["measures"][0]["value"], 12.0);
        assert_eq!(json["measures"][0]["met"], true);
        assert_eq!(json["measures"][1]["met"], false);
        assert_eq!(json["measures"][1]["goal"]["comparison"], ">=");
        assert_eq!(json["measures"][1]["goal"]["value"], 10.0);
        assert_eq!(
            Report::json_path(Path::new("docs/benchmarks.md")),
            Path::new("docs/benchmarks.json")
        );
    }
}
