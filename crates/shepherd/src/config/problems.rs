//! A config problem: where (file, line, field) and what. `shepherd check` prints every one.

use std::fmt;

/// One problem found while loading a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File name as given by the user; filled in by the loader.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// Dotted path of the field, e.g. `models.gpt-4.1.deployments[0].provider`.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn at(line: usize, field: &str, message: impl Into<String>) -> Self {
        Problem {
            file: String::new(),
            line,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() {
            "(top level)"
        } else {
            &self.field
        };
        write!(
            f,
            "{}: line {}: {}: {}",
            self.file, self.line, field, self.message
        )
    }
}

/// All problems of one config file.
#[derive(Debug, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, problem) in self.0.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
