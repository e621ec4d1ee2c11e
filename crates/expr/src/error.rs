//! The error type shared by parsing and evaluation.

/// Everything that can go wrong while parsing or evaluating an expression.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ExprError {
    /// The text is not a valid expression. `pos` is the 0-based character offset into `text`
    /// (the trimmed attribute text).
    #[error("syntax error in expression `{text}` at {pos}: {message}")]
    Syntax {
        text: String,
        pos: usize,
        message: String,
    },
    /// A JUEL expression referenced a variable that is not set.
    #[error("unknown variable `{0}`")]
    UnknownVariable(String),
    /// An operand or result has the wrong type (e.g. `'a' && true`, a non-boolean condition).
    #[error("type error: {0}")]
    Type(String),
    /// Any other evaluation failure: division by zero, overflow, unknown function, ...
    #[error("{0}")]
    Eval(String),
}

impl ExprError {
    /// Builds a syntax error; `byte_pos` is a byte offset into `text` and is reported as a
    /// character offset.
    pub(crate) fn syntax(text: &str, byte_pos: usize, message: impl Into<String>) -> Self {
        let byte_pos = byte_pos.min(text.len());
        let pos = text
            .char_indices()
            .take_while(|(i, _)| *i < byte_pos)
            .count();
        ExprError::Syntax {
            text: text.to_string(),
            pos,
            message: message.into(),
        }
    }
}
