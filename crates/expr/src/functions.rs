//! Built-in FEEL functions. Arguments of the wrong type give null (FEEL semantics); a wrong
//! number of arguments or an unknown function is an evaluation error.

use std::cmp::Ordering;

use serde_json::Value;

use crate::ast::{Ast, BinOp, Func};
use crate::error::ExprError;
use crate::eval::{Evaluator, Val};
use crate::ops::{self, Num};
use crate::text;

fn name(func: &Func) -> &str {
    match func {
        Func::Count => "count",
        Func::Contains => "contains",
        Func::StringLength => "string length",
        Func::IsDefined => "is defined",
        Func::UpperCase => "upper case",
        Func::LowerCase => "lower case",
        Func::StartsWith => "starts with",
        Func::EndsWith => "ends with",
        Func::ListContains => "list contains",
        Func::Sum => "sum",
        Func::Min => "min",
        Func::Max => "max",
        Func::Abs => "abs",
        Func::String => "string",
        Func::Unknown(n) => n,
    }
}

/// Number of arguments a function takes; `None` for variadic ones (at least one).
fn arity(func: &Func) -> Option<usize> {
    match func {
        Func::Sum | Func::Min | Func::Max | Func::Unknown(_) => None,
        Func::Contains | Func::StartsWith | Func::EndsWith | Func::ListContains => Some(2),
        _ => Some(1),
    }
}

pub(crate) fn call<'a>(
    ev: &Evaluator<'a>,
    func: &'a Func,
    args: &'a [Ast],
) -> Result<Value, ExprError> {
    if let Func::Unknown(n) = func {
        return Err(ExprError::Eval(format!("unknown function `{n}`")));
    }
    let expected = arity(func);
    if expected.map_or(args.is_empty(), |n| n != args.len()) {
        let wanted = match expected {
            Some(1) => "1 argument".to_string(),
            Some(n) => format!("{n} arguments"),
            None => "at least 1 argument".to_string(),
        };
        return Err(ExprError::Eval(format!(
            "function `{}` expects {wanted}, got {}",
            name(func),
            args.len()
        )));
    }
    if *func == Func::IsDefined {
        return ev.is_defined(&args[0]).map(Value::Bool);
    }
    let values = args
        .iter()
        .map(|a| ev.eval(a))
        .collect::<Result<Vec<Val<'a>>, _>>()?;
    let v: Vec<&Value> = values.iter().map(|c| &**c).collect();
    Ok(match (func, v.as_slice()) {
        (Func::Count, [Value::Array(a)]) => Value::from(a.len()),
        (Func::StringLength, [Value::String(s)]) => Value::from(s.chars().count()),
        (Func::UpperCase, [Value::String(s)]) => Value::String(s.to_uppercase()),
        (Func::LowerCase, [Value::String(s)]) => Value::String(s.to_lowercase()),
        (Func::Contains, [Value::String(s), Value::String(sub)]) => {
            Value::Bool(s.contains(sub.as_str()))
        }
        (Func::StartsWith, [Value::String(s), Value::String(p)]) => {
            Value::Bool(s.starts_with(p.as_str()))
        }
        (Func::EndsWith, [Value::String(s), Value::String(p)]) => {
            Value::Bool(s.ends_with(p.as_str()))
        }
        (Func::ListContains, [Value::Array(a), x]) => {
            Value::Bool(a.iter().any(|item| ops::equal(item, x)))
        }
        (Func::Abs, [n @ Value::Number(_)]) => abs(n)?,
        (Func::String, [Value::Null]) => Value::Null,
        (Func::String, [x]) => Value::String(text::to_text(x)),
        (Func::Sum, _) => sum(list_args(&v))?,
        (Func::Min, _) => extreme(list_args(&v), Ordering::Less),
        (Func::Max, _) => extreme(list_args(&v), Ordering::Greater),
        _ => Value::Null,
    })
}

/// `f([a, b])` and `f(a, b)` mean the same for the variadic functions.
fn list_args<'v>(args: &[&'v Value]) -> Vec<&'v Value> {
    match args {
        [Value::Array(items)] => items.iter().collect(),
        _ => args.to_vec(),
    }
}

fn abs(n: &Value) -> Result<Value, ExprError> {
    match Num::of(n) {
        Some(Num::I(i)) => i
            .checked_abs()
            .map(Value::from)
            .ok_or_else(|| ExprError::Eval("integer overflow in `abs`".to_string())),
        Some(Num::F(f)) => Ok(Num::F(f.abs()).into_value().unwrap_or(Value::Null)),
        None => Ok(Value::Null),
    }
}

fn sum(items: Vec<&Value>) -> Result<Value, ExprError> {
    let mut total = Value::Null;
    for item in items {
        let Some(n) = Num::of(item) else {
            return Ok(Value::Null);
        };
        total = match Num::of(&total) {
            None => item.clone(),
            Some(acc) => ops::arith(BinOp::Add, acc, n)
                .map_err(|f| ExprError::Eval(f.message(BinOp::Add)))?,
        };
    }
    Ok(total)
}

/// The smallest (`want == Less`) or largest item; null for an empty list or items that cannot
/// be compared with each other.
fn extreme(items: Vec<&Value>, want: Ordering) -> Value {
    let mut best: Option<&Value> = None;
    for item in items {
        best = match best {
            None => Some(item),
            Some(b) => match ops::compare(item, b) {
                Some(ord) if ord == want => Some(item),
                Some(_) => Some(b),
                None => return Value::Null,
            },
        };
    }
    best.cloned().unwrap_or(Value::Null)
}
