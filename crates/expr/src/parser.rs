//! Recursive-descent parser turning tokens into an [`Ast`].
//!
//! Precedence, lowest first: JUEL ternary `?:` · `||`/`or` · `&&`/`and` · equality ·
//! relational · `+ -` · `* / %` · unary (`-`, `!`, `not`, `empty`) · postfix (`.f`, `[i]`, calls).

use serde_json::{Number, Value};

use crate::Dialect;
use crate::ast::{Ast, BinOp, Func, UnOp};
use crate::error::ExprError;
use crate::lexer::{Tok, Token};

/// Maximum nesting of parentheses / unary operators / sub-expressions while parsing.
const MAX_NESTING: usize = 64;
/// Maximum depth of the resulting tree (bounds the evaluator's recursion).
const MAX_DEPTH: usize = 256;

const JUEL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "div",
    "mod",
    "empty",
    "true",
    "false",
    "null",
    "instanceof",
];
const FEEL_KEYWORDS: &[&str] = &[
    "and", "or", "not", "true", "false", "null", "if", "then", "else",
];

/// Parses a complete token stream (terminated by [`Tok::Eof`]) into a tree.
pub(crate) fn parse(src: &str, tokens: Vec<Token>, dialect: Dialect) -> Result<Ast, ExprError> {
    let mut parser = Parser {
        src,
        tokens,
        pos: 0,
        feel: dialect == Dialect::Feel,
        nesting: 0,
    };
    if parser.peek() == &Tok::Eof {
        return Err(parser.error_here("empty expression"));
    }
    let ast = parser.expr()?;
    if parser.peek() != &Tok::Eof {
        let msg = format!("unexpected {}", parser.describe_current());
        return Err(parser.error_here(msg));
    }
    if ast.depth() > MAX_DEPTH {
        return Err(ExprError::syntax(src, 0, "expression is too deeply nested"));
    }
    Ok(ast)
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    feel: bool,
    nesting: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        let idx = (self.pos + ahead).min(self.tokens.len() - 1);
        &self.tokens[idx].tok
    }

    fn advance(&mut self) -> Tok {
        let tok = self.tokens[self.pos].tok.clone();
        if tok != Tok::Eof {
            self.pos += 1;
        }
        tok
    }

    fn describe_current(&self) -> String {
        let t = &self.tokens[self.pos];
        match t.tok {
            Tok::Eof => "end of expression".to_string(),
            _ => format!("`{}`", &self.src[t.start..t.end]),
        }
    }

    fn error_here(&self, message: impl Into<String>) -> ExprError {
        ExprError::syntax(self.src, self.tokens[self.pos].start, message)
    }

    fn is_keyword(&self, name: &str) -> bool {
        let list = if self.feel {
            FEEL_KEYWORDS
        } else {
            JUEL_KEYWORDS
        };
        list.contains(&name)
    }

    /// True (and consumes it) when the current token is the identifier `word`.
    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Tok::Ident(w) if w == word) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ExprError> {
        if *self.peek() == tok {
            self.advance();
            Ok(())
        } else {
            let msg = format!("expected {what}, found {}", self.describe_current());
            Err(self.error_here(msg))
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self.error_here("expression is too deeply nested"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Ast, ExprError> {
        self.enter()?;
        let result = self.ternary();
        self.nesting -= 1;
        result
    }

    fn ternary(&mut self) -> Result<Ast, ExprError> {
        let cond = self.or()?;
        if self.feel || *self.peek() != Tok::Question {
            return Ok(cond);
        }
        self.advance();
        let then = self.expr()?;
        self.expect(Tok::Colon, "`:` of the `? :` operator")?;
        let otherwise = self.expr()?;
        Ok(Ast::Cond(
            Box::new(cond),
            Box::new(then),
            Box::new(otherwise),
        ))
    }

    fn or(&mut self) -> Result<Ast, ExprError> {
        let mut lhs = self.and()?;
        while *self.peek() == Tok::OrOr || matches!(self.peek(), Tok::Ident(w) if w == "or") {
            self.advance();
            let rhs = self.and()?;
            lhs = Ast::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn and(&mut self) -> Result<Ast, ExprError> {
        let mut lhs = self.equality()?;
        while *self.peek() == Tok::AndAnd || matches!(self.peek(), Tok::Ident(w) if w == "and") {
            self.advance();
            let rhs = self.equality()?;
            lhs = Ast::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn equality(&mut self) -> Result<Ast, ExprError> {
        let mut lhs = self.relational()?;
        loop {
            let op = match self.peek() {
                Tok::EqEq => BinOp::Eq,
                Tok::NotEq => BinOp::Ne,
                Tok::Eq if self.feel => BinOp::Eq,
                Tok::Eq => {
                    return Err(self.error_here("`=` is not an operator in JUEL, use `==`"));
                }
                Tok::Ident(w) if !self.feel && w == "eq" => BinOp::Eq,
                Tok::Ident(w) if !self.feel && w == "ne" => BinOp::Ne,
                _ => return Ok(lhs),
            };
            self.advance();
            let rhs = self.relational()?;
            lhs = Ast::Binary(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn relational(&mut self) -> Result<Ast, ExprError> {
        let mut lhs = self.additive()?;
        loop {
            let op = match self.peek() {
                Tok::Lt => BinOp::Lt,
                Tok::Le => BinOp::Le,
                Tok::Gt => BinOp::Gt,
                Tok::Ge => BinOp::Ge,
                Tok::Ident(w) if !self.feel => match w.as_str() {
                    "lt" => BinOp::Lt,
                    "le" => BinOp::Le,
                    "gt" => BinOp::Gt,
                    "ge" => BinOp::Ge,
                    _ => return Ok(lhs),
                },
                _ => return Ok(lhs),
            };
            self.advance();
            let rhs = self.additive()?;
            lhs = Ast::Binary(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn additive(&mut self) -> Result<Ast, ExprError> {
        let mut lhs = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(lhs),
            };
            self.advance();
            let rhs = self.multiplicative()?;
            lhs = Ast::Binary(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn multiplicative(&mut self) -> Result<Ast, ExprError> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Rem,
                Tok::Ident(w) if !self.feel && w == "div" => BinOp::Div,
                Tok::Ident(w) if !self.feel && w == "mod" => BinOp::Rem,
                _ => return Ok(lhs),
            };
            self.advance();
            let rhs = self.unary()?;
            lhs = Ast::Binary(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn unary(&mut self) -> Result<Ast, ExprError> {
        let op = match self.peek() {
            Tok::Minus => UnOp::Neg,
            Tok::Bang => UnOp::Not,
            Tok::Ident(w) if w == "not" => UnOp::Not,
            Tok::Ident(w) if !self.feel && w == "empty" => UnOp::Empty,
            _ => return self.postfix(),
        };
        self.advance();
        self.enter()?;
        let operand = self.unary();
        self.nesting -= 1;
        Ok(Ast::Unary(op, Box::new(operand?)))
    }

    fn postfix(&mut self) -> Result<Ast, ExprError> {
        let mut ast = self.primary()?;
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.advance();
                    let Tok::Ident(field) = self.peek().clone() else {
                        let msg = format!(
                            "expected a property name after `.`, found {}",
                            self.describe_current()
                        );
                        return Err(self.error_here(msg));
                    };
                    self.advance();
                    if *self.peek() == Tok::LParen {
                        let name = match path_name(&ast) {
                            Some(base) => format!("{base}.{field}"),
                            None => field,
                        };
                        let args = self.call_args()?;
                        ast = Ast::Call(Func::Unknown(name), args);
                    } else {
                        ast = Ast::Member(Box::new(ast), field);
                    }
                }
                Tok::LBracket => {
                    self.advance();
                    let index = self.expr()?;
                    self.expect(Tok::RBracket, "`]`")?;
                    ast = Ast::Index(Box::new(ast), Box::new(index));
                }
                _ => return Ok(ast),
            }
        }
    }

    fn call_args(&mut self) -> Result<Vec<Ast>, ExprError> {
        self.expect(Tok::LParen, "`(`")?;
        self.comma_list(Tok::RParen, "`,` or `)`")
    }

    /// Parses `expr, expr, ...` up to and including the `close` token.
    fn comma_list(&mut self, close: Tok, what: &str) -> Result<Vec<Ast>, ExprError> {
        let mut items = Vec::new();
        if *self.peek() == close {
            self.advance();
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if *self.peek() == Tok::Comma {
                self.advance();
            } else {
                self.expect(close, what)?;
                return Ok(items);
            }
        }
    }

    fn primary(&mut self) -> Result<Ast, ExprError> {
        let lit = match self.peek().clone() {
            Tok::Int(i) => Value::from(i),
            Tok::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Tok::Str(s) => Value::String(s),
            Tok::Ident(name) => return self.identifier(name),
            Tok::LParen => {
                self.advance();
                let inner = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                return Ok(inner);
            }
            Tok::LBracket => {
                self.advance();
                self.enter()?;
                let items = self.comma_list(Tok::RBracket, "`,` or `]`");
                self.nesting -= 1;
                return Ok(Ast::List(items?));
            }
            _ => {
                let msg = format!("expected an operand, found {}", self.describe_current());
                return Err(self.error_here(msg));
            }
        };
        self.advance();
        Ok(Ast::Lit(lit))
    }

    fn identifier(&mut self, name: String) -> Result<Ast, ExprError> {
        match name.as_str() {
            "true" => {
                self.advance();
                return Ok(Ast::Lit(Value::Bool(true)));
            }
            "false" => {
                self.advance();
                return Ok(Ast::Lit(Value::Bool(false)));
            }
            "null" => {
                self.advance();
                return Ok(Ast::Lit(Value::Null));
            }
            "if" if self.feel => return self.if_then_else(),
            _ => {}
        }
        if self.is_keyword(&name) {
            let msg = format!("expected an operand, found keyword `{name}`");
            return Err(self.error_here(msg));
        }
        if self.feel
            && let Tok::Ident(second) = self.peek_at(1)
            && *self.peek_at(2) == Tok::LParen
        {
            let full = format!("{name} {second}");
            if Func::is_two_word_name(&full) {
                self.advance();
                self.advance();
                let args = self.call_args()?;
                return Ok(Ast::Call(Func::resolve(&full, true), args));
            }
        }
        self.advance();
        if *self.peek() == Tok::LParen {
            let args = self.call_args()?;
            return Ok(Ast::Call(Func::resolve(&name, self.feel), args));
        }
        Ok(Ast::Var(name))
    }

    fn if_then_else(&mut self) -> Result<Ast, ExprError> {
        self.advance();
        let cond = self.expr()?;
        if !self.eat_word("then") {
            let msg = format!("expected `then`, found {}", self.describe_current());
            return Err(self.error_here(msg));
        }
        let then = self.expr()?;
        if !self.eat_word("else") {
            let msg = format!("expected `else`, found {}", self.describe_current());
            return Err(self.error_here(msg));
        }
        let otherwise = self.expr()?;
        Ok(Ast::Cond(
            Box::new(cond),
            Box::new(then),
            Box::new(otherwise),
        ))
    }
}

/// `a.b.c` for a chain of variable/property accesses, used to name unsupported method calls.
fn path_name(ast: &Ast) -> Option<String> {
    match ast {
        Ast::Var(name) => Some(name.clone()),
        Ast::Member(base, field) => Some(format!("{}.{field}", path_name(base)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::Lexer;

    fn p(src: &str, dialect: Dialect) -> Result<Ast, ExprError> {
        let tokens = Lexer::new(src, 0, dialect.clone()).lex_to_end()?;
        parse(src, tokens, dialect)
    }

    fn var(n: &str) -> Box<Ast> {
        Box::new(Ast::Var(n.into()))
    }

    fn int(i: i64) -> Box<Ast> {
        Box::new(Ast::Lit(Value::from(i)))
    }

    #[test]
    fn precedence_mul_over_add() {
        let ast = p("a + b * 2", Dialect::Juel).unwrap();
        let expected = Ast::Binary(
            BinOp::Add,
            var("a"),
            Box::new(Ast::Binary(BinOp::Mul, var("b"), int(2))),
        );
        assert_eq!(ast, expected);
    }

    #[test]
    fn left_associative_subtraction() {
        let ast = p("a - b - c", Dialect::Juel).unwrap();
        let expected = Ast::Binary(
            BinOp::Sub,
            Box::new(Ast::Binary(BinOp::Sub, var("a"), var("b"))),
            var("c"),
        );
        assert_eq!(ast, expected);
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let ast = p("a || b && c", Dialect::Juel).unwrap();
        let expected = Ast::Or(var("a"), Box::new(Ast::And(var("b"), var("c"))));
        assert_eq!(ast, expected);
    }

    #[test]
    fn juel_word_operators() {
        let ast = p("a eq 1 and b gt 2", Dialect::Juel).unwrap();
        let expected = Ast::And(
            Box::new(Ast::Binary(BinOp::Eq, var("a"), int(1))),
            Box::new(Ast::Binary(BinOp::Gt, var("b"), int(2))),
        );
        assert_eq!(ast, expected);
    }

    #[test]
    fn feel_words_are_plain_names() {
        assert_eq!(p("div", Dialect::Feel).unwrap(), *var("div"));
        assert!(p("div", Dialect::Juel).is_err());
    }

    #[test]
    fn feel_two_word_function() {
        let ast = p("string length(s)", Dialect::Feel).unwrap();
        assert_eq!(
            ast,
            Ast::Call(Func::StringLength, vec![Ast::Var("s".into())])
        );
    }

    #[test]
    fn method_call_is_named_unknown_function() {
        let ast = p("execution.getVariable('x')", Dialect::Juel).unwrap();
        assert!(matches!(ast, Ast::Call(Func::Unknown(n), _) if n == "execution.getVariable"));
    }

    #[test]
    fn single_equals_is_rejected_in_juel() {
        let err = p("a = 1", Dialect::Juel).unwrap_err();
        assert!(matches!(err, ExprError::Syntax { pos: 2, .. }), "{err}");
    }

    #[test]
    fn trailing_tokens_are_rejected() {
        let err = p("a b", Dialect::Juel).unwrap_err();
        assert!(err.to_string().contains("unexpected `b`"), "{err}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(p(&src, Dialect::Juel).is_err());
        let src = format!("{}1", "-".repeat(10_000));
        assert!(p(&src, Dialect::Juel).is_err());
        let src = vec!["1"; 10_000].join("+");
        assert!(p(&src, Dialect::Juel).is_err());
    }

    #[test]
    fn moderate_nesting_is_fine() {
        let src = format!("{}1{}", "(".repeat(30), ")".repeat(30));
        assert!(p(&src, Dialect::Juel).is_ok());
        let src = vec!["1"; 100].join("+");
        assert!(p(&src, Dialect::Juel).is_ok());
    }
}
