//! A model's self-test: reference inputs with the outputs the model must give,
//! within a tolerance. It travels in the manifest (`[self_test]`), so the
//! controller checks its form when a version is pushed and the node runs it
//! after activating the version (docs/rollouts.md).
//!
//! ```toml
//! [self_test]
//! tolerance = 0.01
//! [[self_test.cases]]
//! text = "disk full"
//! label = "critical"
//! [[self_test.cases]]
//! text = "a cat sat"
//! embedding = [0.01, -0.2, ...]
//! ```

use serde::Deserialize;

/// Most cases a self-test may hold (it runs on a Pi after each update).
pub const MAX_CASES: usize = 32;

/// One reference input and what the model must answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub text: String,
    /// For an embedding model: the expected vector, compared component by component.
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
    /// For a classifier: the expected label.
    #[serde(default)]
    pub label: Option<String>,
}

/// What a model answered a case, as the self-test compares it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Embedding(Vec<f32>),
    Label(String),
}

/// The `[self_test]` of a manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// Largest difference allowed between an expected and an actual embedding
    /// component (ignored for labels, which must match exactly).
    pub tolerance: f32,
    pub cases: Vec<Case>,
}

impl SelfTest {
    /// Checks the self-test's own form.
    ///
    /// # Errors
    /// What is wrong, to be fixed in the manifest.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(format!("self_test.tolerance {}: a number >= 0", self.tolerance));
        }
        if self.cases.is_empty() || self.cases.len() > MAX_CASES {
            return Err(format!("self_test: give 1 to {MAX_CASES} [[self_test.cases]]"));
        }
        for (i, c) in self.cases.iter().enumerate() {
            match (&c.embedding, &c.label) {
                (Some(v), None) if !v.is_empty() && v.iter().all(|x| x.is_finite()) => {}
                (None, Some(l)) if !l.is_empty() => {}
                _ => return Err(format!("self_test.cases[{i}]: give either a non-empty `embedding` or a `label`")),
            }
        }
        Ok(())
    }

    /// Runs every case through `run` and compares; the first mismatch is the error.
    ///
    /// # Errors
    /// The case that failed and how, or the model's own error.
    pub fn check(&self, mut run: impl FnMut(&str) -> Result<Observed, String>) -> Result<(), String> {
        for (i, case) in self.cases.iter().enumerate() {
            let answer = run(&case.text).map_err(|e| format!("self-test case {i}: {e}"))?;
            match (&answer, &case.embedding, &case.label) {
                (Observed::Embedding(got), Some(want), _) => {
                    if got.len() != want.len() {
                        return Err(format!(
                            "self-test case {i}: embedding of {} dimensions, expected {}",
                            got.len(),
                            want.len()
                        ));
                    }
                    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                    if worst > self.tolerance {
                        return Err(format!(
                            "self-test case {i}: embedding differs by {worst:.4} (tolerance {})",
                            self.tolerance
                        ));
                    }
                }
                (Observed::Label(got), _, Some(want)) => {
                    if got != want {
                        return Err(format!("self-test case {i}: label {got:?}, expected {want:?}"));
                    }
                }
                _ => return Err(format!("self-test case {i}: the model's kind of output does not match the case")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps)] // the shape `check` takes
    fn embedding(v: &[f32]) -> Result<Observed, String> {
        Ok(Observed::Embedding(v.to_vec()))
    }

    #[test]
    fn form_is_checked() {
        let ok = SelfTest {
            tolerance: 0.1,
            cases: vec![Case { text: "a".into(), embedding: Some(vec![1.0]), label: None }],
        };
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.tolerance = -1.0;
        assert!(bad.validate().unwrap_err().contains("tolerance"));
        let mut bad = ok.clone();
        bad.cases[0].label = Some("x".into());
        assert!(bad.validate().unwrap_err().contains("either"));
        bad.cases.clear();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn outputs_are_compared_within_the_tolerance() {
        let t = SelfTest {
            tolerance: 0.1,
            cases: vec![Case { text: "a".into(), embedding: Some(vec![1.0, 0.0]), label: None }],
        };
        assert!(t.check(|_| embedding(&[0.95, 0.05])).is_ok());
        assert!(t.check(|_| embedding(&[0.5, 0.5])).unwrap_err().contains("differs by 0.5"));
        assert!(t.check(|_| embedding(&[1.0])).unwrap_err().contains("dimensions"));
        assert!(t.check(|_| Err("boom".into())).unwrap_err().contains("boom"));
        let l = SelfTest {
            tolerance: 0.0,
            cases: vec![Case { text: "a".into(), embedding: None, label: Some("critical".into()) }],
        };
        let class = |label: &str| Ok(Observed::Label(label.into()));
        assert!(l.check(|_| class("critical")).is_ok());
        assert!(l.check(|_| class("info")).unwrap_err().contains("expected \"critical\""));
    }
}
