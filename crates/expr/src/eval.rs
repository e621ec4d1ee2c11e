//! Tree-walking evaluator. Values are borrowed from the context and the tree wherever
//! possible, so looking up `order.total` does not copy `order`.

use std::borrow::Cow;

use serde_json::Value;

use crate::Context;
use crate::ast::{Ast, BinOp, UnOp};
use crate::error::ExprError;
use crate::functions;
use crate::ops::{self, ArithFail, Num};

static NULL: Value = Value::Null;

pub(crate) type Val<'a> = Cow<'a, Value>;

/// Evaluates trees of one dialect against one context.
pub(crate) struct Evaluator<'a> {
    pub ctx: &'a dyn Context,
    /// FEEL semantics (unknown variables and type mismatches give null) instead of JUEL's.
    pub feel: bool,
}

enum Key<'k> {
    Field(&'k str),
    Pos(usize),
}

impl<'a> Evaluator<'a> {
    pub fn eval(&self, ast: &'a Ast) -> Result<Val<'a>, ExprError> {
        match ast {
            Ast::Lit(v) => Ok(Cow::Borrowed(v)),
            Ast::Var(name) => match self.ctx.get(name) {
                Some(v) => Ok(Cow::Borrowed(v)),
                None if self.feel => Ok(Cow::Borrowed(&NULL)),
                None => Err(ExprError::UnknownVariable(name.clone())),
            },
            Ast::Member(base, field) => {
                let base = self.eval(base)?;
                self.member(base, field)
            }
            Ast::Index(base, index) => {
                let base = self.eval(base)?;
                let index = self.eval(index)?;
                self.index(base, &index)
            }
            Ast::List(items) => {
                let items = items
                    .iter()
                    .map(|i| self.eval(i).map(Cow::into_owned))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Cow::Owned(Value::Array(items)))
            }
            Ast::Unary(op, operand) => {
                let v = self.eval(operand)?;
                self.unary(*op, &v).map(Cow::Owned)
            }
            Ast::Binary(op, lhs, rhs) => {
                let x = self.eval(lhs)?;
                let y = self.eval(rhs)?;
                self.binary(*op, &x, &y).map(Cow::Owned)
            }
            Ast::And(lhs, rhs) => self.logic(lhs, rhs, true),
            Ast::Or(lhs, rhs) => self.logic(lhs, rhs, false),
            Ast::Cond(cond, then, otherwise) => {
                let c = self.eval(cond)?;
                let take_then = if self.feel {
                    *c == Value::Bool(true)
                } else {
                    self.truth(&c, "`? :`")? == Some(true)
                };
                self.eval(if take_then { then } else { otherwise })
            }
            Ast::Call(func, args) => functions::call(self, func, args).map(Cow::Owned),
        }
    }

    /// Null for FEEL, a type error for JUEL.
    fn mismatch(&self, message: impl FnOnce() -> String) -> Result<Value, ExprError> {
        if self.feel {
            Ok(Value::Null)
        } else {
            Err(ExprError::Type(message()))
        }
    }

    fn member(&self, base: Val<'a>, field: &str) -> Result<Val<'a>, ExprError> {
        match &*base {
            Value::Object(_) => Ok(take(base, Key::Field(field))),
            Value::Null => Ok(Cow::Borrowed(&NULL)),
            other => self
                .mismatch(|| {
                    format!(
                        "cannot read property `{field}` of a {}",
                        ops::type_name(other)
                    )
                })
                .map(Cow::Owned),
        }
    }

    fn index(&self, base: Val<'a>, index: &Value) -> Result<Val<'a>, ExprError> {
        let key = match (&*base, index) {
            (Value::Null, _) => return Ok(Cow::Borrowed(&NULL)),
            (Value::Object(_), Value::String(s)) => Some(Key::Field(s)),
            (Value::Array(items), _) => match Num::of(index) {
                Some(Num::I(i)) => Some(Key::Pos(self.position(i, items.len()))),
                _ => None,
            },
            _ => None,
        };
        match key {
            Some(key) => Ok(take(base, key)),
            None => self
                .mismatch(|| {
                    format!(
                        "cannot index a {} with a {}",
                        ops::type_name(&base),
                        ops::type_name(index)
                    )
                })
                .map(Cow::Owned),
        }
    }

    /// Converts a dialect index (JUEL 0-based; FEEL 1-based, negative from the end) to a
    /// 0-based position; out of range gives `usize::MAX`, which `take` maps to null.
    fn position(&self, i: i64, len: usize) -> usize {
        let pos = if !self.feel {
            i
        } else if i > 0 {
            i - 1
        } else if i < 0 {
            i64::try_from(len).unwrap_or(i64::MAX).saturating_add(i)
        } else {
            -1
        };
        usize::try_from(pos).unwrap_or(usize::MAX)
    }

    fn unary(&self, op: UnOp, v: &Value) -> Result<Value, ExprError> {
        match (op, v) {
            (UnOp::Neg, Value::Null) if self.feel => Ok(Value::Null),
            // EL coerces null to 0 in arithmetic.
            (UnOp::Neg, Value::Null) => Ok(Value::from(0)),
            (UnOp::Neg, Value::Number(_)) => match Num::of(v).map(ops::negate) {
                Some(Ok(r)) => Ok(r),
                _ => Err(ExprError::Eval("integer overflow in unary `-`".to_string())),
            },
            (UnOp::Neg, other) => {
                self.mismatch(|| format!("cannot negate a {}", ops::type_name(other)))
            }
            (UnOp::Not, _) => Ok(match self.truth(v, "`not`")? {
                Some(b) => Value::Bool(!b),
                None => Value::Null,
            }),
            (UnOp::Empty, _) => Ok(Value::Bool(match v {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            })),
        }
    }

    /// A boolean operand: `Some(b)`; null is false in JUEL and unknown (`None`) in FEEL;
    /// anything else is a type error.
    pub fn truth(&self, v: &Value, op: &str) -> Result<Option<bool>, ExprError> {
        match v {
            Value::Bool(b) => Ok(Some(*b)),
            Value::Null if self.feel => Ok(None),
            Value::Null => Ok(Some(false)),
            other => Err(ExprError::Type(format!(
                "{op} expects boolean operands, found a {} ({other})",
                ops::type_name(other)
            ))),
        }
    }

    /// Short-circuit `and` (`is_and`) / `or` with FEEL's three-valued logic for null.
    fn logic(&self, lhs: &'a Ast, rhs: &'a Ast, is_and: bool) -> Result<Val<'a>, ExprError> {
        let name = if is_and { "`&&`/`and`" } else { "`||`/`or`" };
        // The value that decides the result on its own: false for `and`, true for `or`.
        let decisive = !is_and;
        let l = self.truth(&*self.eval(lhs)?, name)?;
        if l == Some(decisive) {
            return Ok(Cow::Owned(Value::Bool(decisive)));
        }
        let r = self.truth(&*self.eval(rhs)?, name)?;
        let result = match (l, r) {
            (_, Some(b)) if b == decisive => Value::Bool(decisive),
            (Some(_), Some(_)) => Value::Bool(!decisive),
            _ => Value::Null,
        };
        Ok(Cow::Owned(result))
    }

    pub fn binary(&self, op: BinOp, x: &Value, y: &Value) -> Result<Value, ExprError> {
        match op {
            BinOp::Eq => Ok(Value::Bool(ops::equal(x, y))),
            BinOp::Ne => Ok(Value::Bool(!ops::equal(x, y))),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => self.relational(op, x, y),
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                self.arithmetic(op, x, y)
            }
        }
    }

    fn relational(&self, op: BinOp, x: &Value, y: &Value) -> Result<Value, ExprError> {
        if let Some(ord) = ops::compare(x, y) {
            return Ok(Value::Bool(ops::ordering_matches(op, ord)));
        }
        if self.feel {
            return Ok(Value::Null);
        }
        match (x, y) {
            // EL: `null <= null` and `null >= null` hold, any other comparison with null is false.
            (Value::Null, Value::Null) => Ok(Value::Bool(matches!(op, BinOp::Le | BinOp::Ge))),
            (Value::Null, _) | (_, Value::Null) => Ok(Value::Bool(false)),
            _ => Err(ExprError::Type(format!(
                "cannot compare a {} with a {} using `{}`",
                ops::type_name(x),
                ops::type_name(y),
                op.symbol()
            ))),
        }
    }

    fn arithmetic(&self, op: BinOp, x: &Value, y: &Value) -> Result<Value, ExprError> {
        if let (BinOp::Add, Value::String(a), Value::String(b)) = (op, x, y) {
            return Ok(Value::String(format!("{a}{b}")));
        }
        let num = |v: &Value| match v {
            // EL coerces null to 0 in arithmetic.
            Value::Null if !self.feel => Some(Num::I(0)),
            _ => Num::of(v),
        };
        let (Some(a), Some(b)) = (num(x), num(y)) else {
            return self.mismatch(|| {
                format!(
                    "cannot apply `{}` to a {} and a {}",
                    op.symbol(),
                    ops::type_name(x),
                    ops::type_name(y)
                )
            });
        };
        match ops::arith(op, a, b) {
            Ok(v) => Ok(v),
            Err(ArithFail::DivByZero | ArithFail::NotFinite) if self.feel => Ok(Value::Null),
            Err(fail) => Err(ExprError::Eval(fail.message(op))),
        }
    }

    /// Whether a variable path (`x`, `x.y`) exists, even if its value is null. For any other
    /// expression: whether it evaluates to a non-null value.
    pub fn is_defined(&self, ast: &'a Ast) -> Result<bool, ExprError> {
        Ok(self.lookup(ast)?.is_some_and(|v| match ast {
            Ast::Var(_) | Ast::Member(..) => true,
            _ => !v.is_null(),
        }))
    }

    fn lookup(&self, ast: &'a Ast) -> Result<Option<Val<'a>>, ExprError> {
        match ast {
            Ast::Var(name) => Ok(self.ctx.get(name).map(Cow::Borrowed)),
            Ast::Member(base, field) => Ok(match self.lookup(base)? {
                Some(b) if b.get(field.as_str()).is_some() => Some(take(b, Key::Field(field))),
                _ => None,
            }),
            other => self.eval(other).map(Some),
        }
    }
}

/// Extracts a field / element from a container (null when missing), without copying the
/// container.
fn take<'a>(container: Val<'a>, key: Key<'_>) -> Val<'a> {
    match container {
        Cow::Borrowed(v) => Cow::Borrowed(
            match key {
                Key::Field(f) => v.get(f),
                Key::Pos(i) => v.get(i),
            }
            .unwrap_or(&NULL),
        ),
        Cow::Owned(v) => Cow::Owned(match (v, key) {
            (Value::Object(mut m), Key::Field(f)) => m.remove(f).unwrap_or(Value::Null),
            (Value::Array(mut a), Key::Pos(i)) if i < a.len() => a.swap_remove(i),
            _ => Value::Null,
        }),
    }
}
