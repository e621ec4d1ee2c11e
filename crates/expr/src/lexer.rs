//! Tokenizer for the expression languages.
//!
//! The lexer works on the trimmed attribute text and reports byte offsets into it, so that
//! syntax errors can point at the offending spot of the whole text.

use crate::Dialect;
use crate::error::ExprError;

/// The kinds of token both dialects share. Keywords (`and`, `eq`, `true`, ...) are produced
/// as [`Tok::Ident`]; the parser decides per dialect what they mean.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Int(i64),
    Float(f64),
    Str(String),
    Ident(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Dot,
    Question,
    Colon,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    EqEq,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Bang,
    AndAnd,
    OrOr,
    Eof,
}

/// A token with its byte range in the source text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

pub(crate) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    dialect: Dialect,
}

impl<'s> Lexer<'s> {
    pub fn new(src: &'s str, start: usize, dialect: Dialect) -> Self {
        Lexer {
            src,
            pos: start,
            dialect,
        }
    }

    /// Tokenizes the rest of the text (FEEL). The result ends with an [`Tok::Eof`] token.
    pub fn lex_to_end(mut self) -> Result<Vec<Token>, ExprError> {
        let mut out = Vec::new();
        loop {
            let token = self.next_token()?;
            let done = token.tok == Tok::Eof;
            out.push(token);
            if done {
                return Ok(out);
            }
        }
    }

    /// Tokenizes up to the `}` closing a `${`/`#{` (JUEL). Returns the tokens, terminated by
    /// an [`Tok::Eof`] token positioned at the closing brace, and the byte offset just after
    /// the closing brace. `open` is the offset of the `$`/`#` for error reporting.
    pub fn lex_to_close(mut self, open: usize) -> Result<(Vec<Token>, usize), ExprError> {
        let mut out = Vec::new();
        let mut depth = 0usize;
        loop {
            let token = self.next_token()?;
            match token.tok {
                Tok::Eof => {
                    return Err(ExprError::syntax(
                        self.src,
                        open,
                        format!("`{}` is never closed by `}}`", &self.src[open..open + 2]),
                    ));
                }
                Tok::LBrace => depth += 1,
                Tok::RBrace if depth == 0 => {
                    let end = token.end;
                    out.push(Token {
                        tok: Tok::Eof,
                        start: token.start,
                        end: token.start,
                    });
                    return Ok((out, end));
                }
                Tok::RBrace => depth -= 1,
                _ => {}
            }
            out.push(token);
        }
    }

    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek_char_at(&self, offset: usize) -> Option<char> {
        self.src.get(self.pos + offset..)?.chars().next()
    }

    fn next_token(&mut self) -> Result<Token, ExprError> {
        while let Some(c) = self.peek_char() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        let start = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok(Token {
                tok: Tok::Eof,
                start,
                end: start,
            });
        };
        let tok = if c.is_ascii_digit() {
            self.number()?
        } else if c == '_' || c.is_alphabetic() {
            self.ident()
        } else if c == '"' || c == '\'' {
            self.string(c)?
        } else {
            self.punct(c)?
        };
        Ok(Token {
            tok,
            start,
            end: self.pos,
        })
    }

    fn ident(&mut self) -> Tok {
        let start = self.pos;
        while let Some(c) = self.peek_char() {
            if c == '_' || c.is_alphanumeric() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        Tok::Ident(self.src[start..self.pos].to_string())
    }

    fn eat_digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek_char().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Tok, ExprError> {
        let start = self.pos;
        self.eat_digits();
        let mut is_float = false;
        if self.peek_char() == Some('.') && self.peek_char_at(1).is_some_and(|c| c.is_ascii_digit())
        {
            self.pos += 1;
            self.eat_digits();
            is_float = true;
        }
        if matches!(self.peek_char(), Some('e' | 'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek_char(), Some('+' | '-')) {
                self.pos += 1;
            }
            if self.eat_digits() == 0 {
                self.pos = save;
            } else {
                is_float = true;
            }
        }
        if self
            .peek_char()
            .is_some_and(|c| c == '_' || c.is_alphabetic())
        {
            return Err(ExprError::syntax(
                self.src,
                start,
                format!(
                    "invalid number `{}{}`",
                    &self.src[start..self.pos],
                    self.peek_char().unwrap_or_default()
                ),
            ));
        }
        let text = &self.src[start..self.pos];
        if !is_float && let Ok(i) = text.parse::<i64>() {
            return Ok(Tok::Int(i));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
            _ => Err(ExprError::syntax(
                self.src,
                start,
                format!("number `{text}` is out of range"),
            )),
        }
    }

    fn string(&mut self, quote: char) -> Result<Tok, ExprError> {
        let start = self.pos;
        if quote == '\'' && self.dialect == Dialect::Feel {
            return Err(ExprError::syntax(
                self.src,
                start,
                "FEEL strings use double quotes, found `'`",
            ));
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(ExprError::syntax(
                    self.src,
                    start,
                    "unterminated string literal",
                ));
            };
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(Tok::Str(out));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let esc_start = self.pos - 1;
            let Some(e) = self.peek_char() else { continue };
            self.pos += e.len_utf8();
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '"' | '\'' | '\\' => out.push(e),
                'u' => out.push(self.unicode_escape(esc_start)?),
                // Unknown escapes are kept verbatim (handy for regular expressions).
                _ => {
                    out.push('\\');
                    out.push(e);
                }
            }
        }
    }

    fn unicode_escape(&mut self, esc_start: usize) -> Result<char, ExprError> {
        let hex = self.src.get(self.pos..self.pos + 4);
        let code = hex
            .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32);
        match code {
            Some(c) => {
                self.pos += 4;
                Ok(c)
            }
            None => Err(ExprError::syntax(
                self.src,
                esc_start,
                "invalid unicode escape, expected `\\u` and 4 hex digits",
            )),
        }
    }

    fn punct(&mut self, c: char) -> Result<Tok, ExprError> {
        let next = self.peek_char_at(1);
        let (tok, len) = match (c, next) {
            ('=', Some('=')) => (Tok::EqEq, 2),
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('<', Some('=')) => (Tok::Le, 2),
            ('>', Some('=')) => (Tok::Ge, 2),
            ('&', Some('&')) => (Tok::AndAnd, 2),
            ('|', Some('|')) => (Tok::OrOr, 2),
            ('=', _) => (Tok::Eq, 1),
            ('!', _) => (Tok::Bang, 1),
            ('<', _) => (Tok::Lt, 1),
            ('>', _) => (Tok::Gt, 1),
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('[', _) => (Tok::LBracket, 1),
            (']', _) => (Tok::RBracket, 1),
            ('{', _) => (Tok::LBrace, 1),
            ('}', _) => (Tok::RBrace, 1),
            (',', _) => (Tok::Comma, 1),
            ('.', _) => (Tok::Dot, 1),
            ('?', _) => (Tok::Question, 1),
            (':', _) => (Tok::Colon, 1),
            ('+', _) => (Tok::Plus, 1),
            ('-', _) => (Tok::Minus, 1),
            ('*', _) => (Tok::Star, 1),
            ('/', _) => (Tok::Slash, 1),
            ('%', _) => (Tok::Percent, 1),
            _ => {
                return Err(ExprError::syntax(
                    self.src,
                    self.pos,
                    format!("unexpected character `{c}`"),
                ));
            }
        };
        self.pos += len;
        Ok(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str, dialect: Dialect) -> Vec<Tok> {
        Lexer::new(src, 0, dialect)
            .lex_to_end()
            .unwrap()
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    #[test]
    fn numbers_and_operators() {
        assert_eq!(
            toks("1 + 2.5*x>=3e2", Dialect::Juel),
            vec![
                Tok::Int(1),
                Tok::Plus,
                Tok::Float(2.5),
                Tok::Star,
                Tok::Ident("x".into()),
                Tok::Ge,
                Tok::Float(300.0),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn huge_integer_becomes_float() {
        assert_eq!(
            toks("99999999999999999999", Dialect::Juel),
            vec![Tok::Float(1e20), Tok::Eof]
        );
    }

    #[test]
    fn strings_with_escapes() {
        assert_eq!(
            toks(r#"'it\'s' "a\"b\\c\n" "\u00e9""#, Dialect::Juel),
            vec![
                Tok::Str("it's".into()),
                Tok::Str("a\"b\\c\n".into()),
                Tok::Str("é".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn feel_rejects_single_quotes() {
        let err = Lexer::new("'a'", 0, Dialect::Feel)
            .lex_to_end()
            .unwrap_err();
        assert!(matches!(err, ExprError::Syntax { pos: 0, .. }), "{err}");
    }

    #[test]
    fn unterminated_string() {
        let err = Lexer::new("x == 'abc", 0, Dialect::Juel)
            .lex_to_end()
            .unwrap_err();
        assert!(matches!(err, ExprError::Syntax { pos: 5, .. }), "{err}");
    }

    #[test]
    fn close_brace_inside_string_does_not_end_expression() {
        let src = "${a == '}'} tail";
        let (tokens, end) = Lexer::new(src, 2, Dialect::Juel).lex_to_close(0).unwrap();
        assert_eq!(&src[end..], " tail");
        assert_eq!(tokens.len(), 4);
    }

    #[test]
    fn unclosed_expression() {
        let err = Lexer::new("${a", 2, Dialect::Juel)
            .lex_to_close(0)
            .unwrap_err();
        assert!(matches!(err, ExprError::Syntax { pos: 0, .. }), "{err}");
    }

    #[test]
    fn invalid_characters() {
        assert!(Lexer::new("a & b", 0, Dialect::Juel).lex_to_end().is_err());
        assert!(Lexer::new("12abc", 0, Dialect::Juel).lex_to_end().is_err());
    }
}
