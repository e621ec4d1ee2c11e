//! Splits attribute text into literal text and `${...}` / `#{...}` expressions, and decides
//! which kind of [`Expression`](crate::Expression) it is.

use crate::Dialect;
use crate::ast::Ast;
use crate::error::ExprError;
use crate::lexer::Lexer;
use crate::parser;

/// One piece of a template.
#[derive(Debug, Clone)]
pub(crate) enum Part {
    Text(String),
    Expr(Ast),
}

/// What the attribute text turned out to be.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Literal(String),
    Juel(Ast),
    Feel(Ast),
    Template(Vec<Part>),
}

/// Classifies and parses already-trimmed text.
pub(crate) fn parse_text(text: &str) -> Result<Kind, ExprError> {
    if text.starts_with('=') {
        let tokens = Lexer::new(text, 1, Dialect::Feel).lex_to_end()?;
        return parser::parse(text, tokens, Dialect::Feel).map(Kind::Feel);
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with("\\${") || rest.starts_with("\\#{") {
            // `\${` is an escaped, literal `${`.
            literal.push_str(&rest[1..3]);
            i += 3;
        } else if rest.starts_with("${") || rest.starts_with("#{") {
            let (tokens, end) = Lexer::new(text, i + 2, Dialect::Juel).lex_to_close(i)?;
            let ast = parser::parse(text, tokens, Dialect::Juel)?;
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Expr(ast));
            i = end;
        } else {
            let c = rest.chars().next().unwrap_or_default();
            literal.push(c);
            i += c.len_utf8();
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(match parts.len() {
        0 => Kind::Literal(String::new()),
        1 => match parts.pop() {
            Some(Part::Expr(ast)) => Kind::Juel(ast),
            Some(Part::Text(t)) => Kind::Literal(t),
            None => unreachable!("one part"),
        },
        _ => Kind::Template(parts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(matches!(parse_text("").unwrap(), Kind::Literal(s) if s.is_empty()));
        assert!(matches!(parse_text("PT5M").unwrap(), Kind::Literal(s) if s == "PT5M"));
        assert!(matches!(parse_text("${a}").unwrap(), Kind::Juel(_)));
        assert!(matches!(parse_text("#{a}").unwrap(), Kind::Juel(_)));
        assert!(matches!(parse_text("=a").unwrap(), Kind::Feel(_)));
        assert!(matches!(parse_text("x_${a}").unwrap(), Kind::Template(p) if p.len() == 2));
        assert!(matches!(parse_text("${a}${b}").unwrap(), Kind::Template(p) if p.len() == 2));
    }

    #[test]
    fn dollar_and_hash_without_brace_are_text() {
        assert!(
            matches!(parse_text("costs $5 #1").unwrap(), Kind::Literal(s) if s == "costs $5 #1")
        );
    }

    #[test]
    fn escaped_expression_is_literal() {
        assert!(matches!(parse_text(r"a \${b}").unwrap(), Kind::Literal(s) if s == "a ${b}"));
    }

    #[test]
    fn error_position_points_into_whole_text() {
        let err = parse_text("abc ${x ==}").unwrap_err();
        assert_eq!(
            err,
            ExprError::Syntax {
                text: "abc ${x ==}".into(),
                pos: 10,
                message: "expected an operand, found end of expression".into()
            }
        );
    }
}
