//! Expressions found in BPMN files, for the Steadyflow engine.
//!
//! [`Expression::parse`] takes the (trimmed) text of an attribute or element and decides
//! what it is:
//!
//! * `= ...` — a **FEEL** expression (Camunda 8);
//! * exactly one `${...}` or `#{...}` — a **JUEL** expression (Camunda 7), typed result;
//! * literal text mixed with `${...}`/`#{...}` — a **template**, evaluating to a string
//!   (`kermit_${loopCounter}`); `\${` writes a literal `${`;
//! * anything else — **literal** text (`invoice`, `PT5M`).
//!
//! Values are [`serde_json::Value`]s; a number is an integer when `as_i64()` is `Some`.
//!
//! ```
//! use serde_json::json;
//! use steadyflow_expr::{Expression, Value};
//!
//! let vars = json!({"amount": 1500, "loopCounter": 2});
//! let vars = vars.as_object().unwrap();
//! assert!(Expression::parse("${amount > 1000}")?.eval_bool(vars)?);
//! assert!(Expression::parse("= amount > 1000 and not(false)")?.eval_bool(vars)?);
//! assert_eq!(Expression::parse("kermit_${loopCounter}")?.eval(vars)?, json!("kermit_2"));
//! assert_eq!(Expression::parse("PT5M")?.eval(vars)?, Value::from("PT5M"));
//! # Ok::<(), steadyflow_expr::ExprError>(())
//! ```
//!
//! # Supported subset
//!
//! * Literals: integers, decimals (`0.6`, `1e3`), strings (JUEL `'..'`/`".."`, FEEL `".."`,
//!   escapes `\" \' \\ \n \t \r \uXXXX`), `true`, `false`, `null`, lists `[1, 2]`.
//! * Variables and paths: `x`, `order.total` (a missing field is null), indexing `xs[0]`
//!   (JUEL, 0-based), `xs[1]` / `xs[-1]` (FEEL, 1-based, negative from the end),
//!   `obj["key"]`. An unknown variable is [`ExprError::UnknownVariable`] in JUEL and null
//!   in FEEL.
//! * Operators, lowest precedence first: JUEL `c ? a : b` (FEEL `if c then a else b`) ·
//!   `||` `or` · `&&` `and` · `==` `!=` (JUEL `eq` `ne`, FEEL `=`) · `<` `<=` `>` `>=`
//!   (JUEL `lt` `le` `gt` `ge`) · `+` `-` · `*` `/` `%` (JUEL `div` `mod`) · unary `-`,
//!   `!`, `not` (FEEL `not(x)`), JUEL `empty x`.
//! * Integer `+ - * %` stays integer (overflow is an error); `/` always yields a float.
//!   Numbers compare by value across int/float; values of different types are never equal;
//!   strings concatenate with `+` and compare lexicographically.
//! * Null and type mismatches: JUEL follows EL (null is 0 in arithmetic, comparing with null
//!   is false, null is false in logic) and reports other mismatches as [`ExprError::Type`].
//!   FEEL gives null for mismatches, comparisons with null and division by zero, and uses
//!   three-valued logic for `and`/`or`; non-boolean, non-null logic operands are type
//!   errors in both dialects.
//! * FEEL functions: `not`, `count`, `contains`, `string length`, `is defined`, `upper case`,
//!   `lower case`, `starts with`, `ends with`, `list contains`, `sum`, `min`, `max`, `abs`,
//!   `string`. JUEL has no functions; method calls such as `${bean.method()}` parse but fail
//!   at evaluation as unknown functions.
//!
//! Not supported: FEEL contexts `{a: 1}`, ranges, `in`/`between`, filters `xs[x > 1]`,
//! `for`/`some`/`every`, dates and durations; JUEL beans, `instanceof`, lambdas and
//! assignment.

mod ast;
mod error;
mod eval;
mod functions;
mod lexer;
mod ops;
mod parser;
mod template;
mod text;

use std::collections::HashMap;
use std::sync::Arc;

pub use error::ExprError;
pub use serde_json::Value;

use eval::Evaluator;
use template::{Kind, Part};

/// Variable lookup for evaluation.
pub trait Context {
    fn get(&self, name: &str) -> Option<&Value>;
}

impl Context for serde_json::Map<String, Value> {
    fn get(&self, name: &str) -> Option<&Value> {
        serde_json::Map::get(self, name)
    }
}

impl Context for HashMap<String, Value> {
    fn get(&self, name: &str) -> Option<&Value> {
        HashMap::get(self, name)
    }
}

/// Two-level lookup: first `inner` then `outer` (e.g. local variables over instance variables).
pub struct Layered<'a> {
    pub inner: &'a dyn Context,
    pub outer: &'a dyn Context,
}

impl Context for Layered<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.inner.get(name).or_else(|| self.outer.get(name))
    }
}

/// The expression language of an [`Expression`].
#[derive(Debug, Clone, PartialEq)]
pub enum Dialect {
    /// Camunda 7 style `${...}` / `#{...}`.
    Juel,
    /// Camunda 8 style `= ...`.
    Feel,
}

/// A parsed attribute/element text from a BPMN file. Cheap to clone; parse once, evaluate
/// many times (also concurrently).
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    kind: Arc<Kind>,
}

impl Expression {
    /// Parses the full text of a BPMN attribute or element (condition, topic, assignee,
    /// timer, ...). The text is trimmed first; see the [crate documentation](crate) for how
    /// it is classified. A syntax error is [`ExprError::Syntax`] with the character position
    /// in the trimmed text.
    pub fn parse(text: &str) -> Result<Expression, ExprError> {
        let kind = template::parse_text(text.trim())?;
        Ok(Expression {
            source: text.to_string(),
            kind: Arc::new(kind),
        })
    }

    /// The dialect of an expression; `None` for literal text and templates.
    pub fn dialect(&self) -> Option<Dialect> {
        match &*self.kind {
            Kind::Juel(_) => Some(Dialect::Juel),
            Kind::Feel(_) => Some(Dialect::Feel),
            Kind::Literal(_) | Kind::Template(_) => None,
        }
    }

    /// True when the text contains no expression part at all.
    pub fn is_literal(&self) -> bool {
        matches!(&*self.kind, Kind::Literal(_))
    }

    /// The text as given to [`Expression::parse`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression. Literal text and templates give a string.
    pub fn eval(&self, ctx: &dyn Context) -> Result<Value, ExprError> {
        match &*self.kind {
            Kind::Literal(s) => Ok(Value::String(s.clone())),
            Kind::Juel(ast) => juel(ctx).eval(ast).map(|v| v.into_owned()),
            Kind::Feel(ast) => feel(ctx).eval(ast).map(|v| v.into_owned()),
            Kind::Template(parts) => render(parts, ctx).map(Value::String),
        }
    }

    /// Evaluates a condition: the result must be a boolean (null counts as false), anything
    /// else is an [`ExprError::Type`].
    pub fn eval_bool(&self, ctx: &dyn Context) -> Result<bool, ExprError> {
        let value = match &*self.kind {
            Kind::Juel(ast) => juel(ctx).eval(ast)?,
            Kind::Feel(ast) => feel(ctx).eval(ast)?,
            _ => std::borrow::Cow::Owned(self.eval(ctx)?),
        };
        match &*value {
            Value::Bool(b) => Ok(*b),
            Value::Null => Ok(false),
            other => Err(ExprError::Type(format!(
                "condition `{}` must evaluate to a boolean, got {} `{}`",
                self.source.trim(),
                ops::type_name(other),
                other
            ))),
        }
    }

    /// Evaluates and converts the result to text: strings as-is, integers without fraction,
    /// floats in their shortest form, booleans `true`/`false`, null `null`, lists and objects
    /// as JSON.
    pub fn eval_string(&self, ctx: &dyn Context) -> Result<String, ExprError> {
        match &*self.kind {
            Kind::Literal(s) => Ok(s.clone()),
            Kind::Juel(ast) => Ok(text::to_text(&*juel(ctx).eval(ast)?)),
            Kind::Feel(ast) => Ok(text::to_text(&*feel(ctx).eval(ast)?)),
            Kind::Template(parts) => render(parts, ctx),
        }
    }
}

fn juel(ctx: &dyn Context) -> Evaluator<'_> {
    Evaluator { ctx, feel: false }
}

fn feel(ctx: &dyn Context) -> Evaluator<'_> {
    Evaluator { ctx, feel: true }
}

fn render(parts: &[Part], ctx: &dyn Context) -> Result<String, ExprError> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Expr(ast) => text::push_text(&mut out, &*juel(ctx).eval(ast)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Expression>();
        assert_traits::<ExprError>();
    }
}
