//! Value-level operations: numbers, arithmetic, equality and ordering.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::ast::BinOp;

/// A JSON number split into integer (`as_i64()` is Some) and float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    I(i64),
    F(f64),
}

impl Num {
    pub fn of(v: &Value) -> Option<Num> {
        let n = v.as_number()?;
        match n.as_i64() {
            Some(i) => Some(Num::I(i)),
            None => n.as_f64().map(Num::F),
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    pub fn into_value(self) -> Result<Value, ArithFail> {
        match self {
            Num::I(i) => Ok(Value::from(i)),
            Num::F(f) => Number::from_f64(f)
                .map(Value::Number)
                .ok_or(ArithFail::NotFinite),
        }
    }
}

/// Why an arithmetic operation has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithFail {
    DivByZero,
    Overflow,
    NotFinite,
}

impl ArithFail {
    pub fn message(self, op: BinOp) -> String {
        match self {
            ArithFail::DivByZero => "division by zero".to_string(),
            ArithFail::Overflow => format!("integer overflow in `{}`", op.symbol()),
            ArithFail::NotFinite => format!(
                "`{}` gives a result that is not a finite number",
                op.symbol()
            ),
        }
    }
}

/// `+ - * / %` on two numbers. Integers stay integers except for `/`, which always yields a
/// float.
pub(crate) fn arith(op: BinOp, a: Num, b: Num) -> Result<Value, ArithFail> {
    let result = match (op, a, b) {
        (BinOp::Div, _, _) => {
            let d = b.as_f64();
            if d == 0.0 {
                return Err(ArithFail::DivByZero);
            }
            Num::F(a.as_f64() / d)
        }
        (_, Num::I(x), Num::I(y)) => {
            let r = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::Rem if y == 0 => return Err(ArithFail::DivByZero),
                BinOp::Rem => x.checked_rem(y),
                _ => unreachable!("not an arithmetic operator: {op:?}"),
            };
            Num::I(r.ok_or(ArithFail::Overflow)?)
        }
        _ => {
            let (x, y) = (a.as_f64(), b.as_f64());
            Num::F(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Rem if y == 0.0 => return Err(ArithFail::DivByZero),
                BinOp::Rem => x % y,
                _ => unreachable!("not an arithmetic operator: {op:?}"),
            })
        }
    };
    result.into_value()
}

/// Unary minus.
pub(crate) fn negate(n: Num) -> Result<Value, ArithFail> {
    match n {
        Num::I(i) => i.checked_neg().map(Value::from).ok_or(ArithFail::Overflow),
        Num::F(f) => Num::F(-f).into_value(),
    }
}

/// Equality: numbers by value across int/float, lists and objects element-wise, different
/// types are never equal, `null == null`.
pub(crate) fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => compare(a, b) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Ordering of numbers (numerically) and strings (lexicographically); `None` for any other
/// combination.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => match (Num::of(a)?, Num::of(b)?) {
            (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
            (x, y) => x.as_f64().partial_cmp(&y.as_f64()),
        },
    }
}

/// Applies a relational operator to an ordering.
pub(crate) fn ordering_matches(op: BinOp, ord: Ordering) -> bool {
    match op {
        BinOp::Lt => ord == Ordering::Less,
        BinOp::Le => ord != Ordering::Greater,
        BinOp::Gt => ord == Ordering::Greater,
        BinOp::Ge => ord != Ordering::Less,
        _ => unreachable!("not a relational operator: {op:?}"),
    }
}

/// A short type name for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_arithmetic_stays_integer() {
        assert_eq!(arith(BinOp::Sub, Num::I(5), Num::I(2)), Ok(json!(3)));
        assert_eq!(arith(BinOp::Rem, Num::I(7), Num::I(3)), Ok(json!(1)));
        assert_eq!(arith(BinOp::Mul, Num::I(4), Num::F(0.5)), Ok(json!(2.0)));
    }

    #[test]
    fn division_is_float() {
        assert_eq!(arith(BinOp::Div, Num::I(3), Num::I(5)), Ok(json!(0.6)));
        assert_eq!(arith(BinOp::Div, Num::I(4), Num::I(2)), Ok(json!(2.0)));
        assert_eq!(
            arith(BinOp::Div, Num::I(1), Num::I(0)),
            Err(ArithFail::DivByZero)
        );
        assert_eq!(
            arith(BinOp::Rem, Num::F(1.0), Num::F(0.0)),
            Err(ArithFail::DivByZero)
        );
    }

    #[test]
    fn overflow_is_detected() {
        assert_eq!(
            arith(BinOp::Add, Num::I(i64::MAX), Num::I(1)),
            Err(ArithFail::Overflow)
        );
        assert_eq!(
            arith(BinOp::Rem, Num::I(i64::MIN), Num::I(-1)),
            Err(ArithFail::Overflow)
        );
        assert_eq!(negate(Num::I(i64::MIN)), Err(ArithFail::Overflow));
        assert_eq!(
            arith(BinOp::Mul, Num::F(1e300), Num::F(1e300)),
            Err(ArithFail::NotFinite)
        );
    }

    #[test]
    fn equality_rules() {
        assert!(equal(&json!(1), &json!(1.0)));
        assert!(!equal(&json!(1), &json!("1")));
        assert!(equal(&Value::Null, &Value::Null));
        assert!(!equal(&json!(0), &Value::Null));
        assert!(equal(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!equal(&json!([1, 2]), &json!([1])));
        assert!(equal(&json!(u64::MAX), &json!(u64::MAX)));
    }

    #[test]
    fn ordering_rules() {
        assert_eq!(compare(&json!(1), &json!(1.5)), Some(Ordering::Less));
        assert_eq!(compare(&json!("b"), &json!("a")), Some(Ordering::Greater));
        assert_eq!(compare(&json!(1), &json!("a")), None);
        assert_eq!(compare(&json!(1), &Value::Null), None);
    }
}
