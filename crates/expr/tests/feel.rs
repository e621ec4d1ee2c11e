//! FEEL (`= ...`) behaviour.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use serde_json::{Map, Value, json};
use steadyflow_expr::{Dialect, ExprError, Expression};

fn vars(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("vars must be an object"),
    }
}

fn eval(src: &str, v: Value) -> Result<Value, ExprError> {
    Expression::parse(src)?.eval(&vars(v))
}

fn cond(src: &str, v: Value) -> bool {
    Expression::parse(src)
        .unwrap()
        .eval_bool(&vars(v))
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

#[test]
fn camunda8_examples() {
    assert!(cond(
        r#"= reviewResult = "approved""#,
        json!({"reviewResult": "approved"})
    ));
    assert!(!cond(
        r#"= reviewResult = "approved""#,
        json!({"reviewResult": "rejected"})
    ));
    assert!(cond(
        "= loopAmount != totalLoops",
        json!({"loopAmount": 1, "totalLoops": 3})
    ));
    let next = eval("= loopAmount + 1", json!({"loopAmount": 1})).unwrap();
    assert_eq!(next, json!(2));
    assert!(next.is_i64());
    assert_eq!(eval("= 0", json!({})).unwrap(), json!(0));
    assert_eq!(
        eval(r#"= ["ubuntu", "windows", "macos"]"#, json!({})).unwrap(),
        json!(["ubuntu", "windows", "macos"])
    );
    assert_eq!(eval("= prId", json!({"prId": 42})).unwrap(), json!(42));
    assert!(cond(
        "=amount > 1000 and not(flag)",
        json!({"amount": 1001, "flag": false})
    ));
    assert!(!cond(
        "=amount > 1000 and not(flag)",
        json!({"amount": 1001, "flag": true})
    ));
    assert!(cond(
        "=order.total >= 10",
        json!({"order": {"total": 10.5}})
    ));
}

#[test]
fn dialect_detection() {
    let e = Expression::parse("  = x  ").unwrap();
    assert_eq!(e.dialect(), Some(Dialect::Feel));
    assert!(!e.is_literal());
    assert_eq!(e.source(), "  = x  ");
}

#[test]
fn unknown_variables_are_null() {
    assert_eq!(eval("= unknown", json!({})).unwrap(), Value::Null);
    assert!(!cond("=unknown > 1", json!({})));
    assert_eq!(eval("=unknown > 1", json!({})).unwrap(), Value::Null);
    assert!(cond("=unknown = null", json!({})));
    assert!(!cond("=unknown", json!({})));
    assert_eq!(eval("=unknown.field", json!({})).unwrap(), Value::Null);
}

#[test]
fn three_valued_logic() {
    let v = json!({"n": null});
    assert_eq!(eval("=false and n", v.clone()).unwrap(), json!(false));
    assert_eq!(eval("=n and false", v.clone()).unwrap(), json!(false));
    assert_eq!(eval("=true and n", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("=true or n", v.clone()).unwrap(), json!(true));
    assert_eq!(eval("=n or true", v.clone()).unwrap(), json!(true));
    assert_eq!(eval("=false or n", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("=not(n)", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("=not(true)", v.clone()).unwrap(), json!(false));
    assert!(matches!(
        eval(r#"="a" and true"#, v),
        Err(ExprError::Type(_))
    ));
}

#[test]
fn null_and_mismatched_operands() {
    assert_eq!(eval("=n + 1", json!({"n": null})).unwrap(), Value::Null);
    assert_eq!(eval(r#"="a" + 1"#, json!({})).unwrap(), Value::Null);
    assert_eq!(eval(r#"="a" < 1"#, json!({})).unwrap(), Value::Null);
    assert_eq!(eval("=1 / 0", json!({})).unwrap(), Value::Null);
    assert_eq!(eval(r#"=1 = "1""#, json!({})).unwrap(), json!(false));
    assert!(matches!(
        eval("=x * 2", json!({"x": i64::MAX})),
        Err(ExprError::Eval(_))
    ));
}

#[test]
fn operators() {
    assert_eq!(eval("=7 / 2", json!({})).unwrap(), json!(3.5));
    assert_eq!(eval("=2 + 3 * 4 - 1", json!({})).unwrap(), json!(13));
    assert_eq!(eval("=(2 + 3) * 4", json!({})).unwrap(), json!(20));
    assert_eq!(eval(r#"="a" + "b""#, json!({})).unwrap(), json!("ab"));
    assert!(cond("=1 = 1.0", json!({})));
    assert!(cond("=1 == 1", json!({})));
    assert!(cond("=2 >= 1 and 1 <= 1 and 0 < 1 and 1 > 0", json!({})));
    assert!(cond("=x || y", json!({"x": false, "y": true})));
    assert!(cond(r#"="abc" < "abd""#, json!({})));
    assert!(cond("=-x = -3", json!({"x": 3})));
}

#[test]
fn if_then_else() {
    let src = r#"=if x > 1 then "big" else "small""#;
    assert_eq!(eval(src, json!({"x": 2})).unwrap(), json!("big"));
    assert_eq!(eval(src, json!({"x": 1})).unwrap(), json!("small"));
    assert_eq!(eval(src, json!({})).unwrap(), json!("small"));
    assert!(matches!(
        Expression::parse("=if x then 1"),
        Err(ExprError::Syntax { .. })
    ));
}

#[test]
fn lists_are_one_based() {
    let v = json!({"xs": ["a", "b", "c"]});
    assert_eq!(eval("=xs[1]", v.clone()).unwrap(), json!("a"));
    assert_eq!(eval("=xs[3]", v.clone()).unwrap(), json!("c"));
    assert_eq!(eval("=xs[-1]", v.clone()).unwrap(), json!("c"));
    assert_eq!(eval("=xs[0]", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("=xs[4]", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("=xs[-4]", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval(r#"=xs["a"]"#, v).unwrap(), Value::Null);
    assert_eq!(eval("=[1, [2, 3]][2][1]", json!({})).unwrap(), json!(2));
    assert_eq!(eval("=[]", json!({})).unwrap(), json!([]));
}

#[test]
fn builtin_functions() {
    let v = json!({"xs": [3, 1.5, 2], "s": "Hello", "n": null, "o": {"k": null}});
    assert_eq!(eval("=count(xs)", v.clone()).unwrap(), json!(3));
    assert_eq!(eval("=string length(s)", v.clone()).unwrap(), json!(5));
    assert_eq!(
        eval(r#"=contains(s, "ell")"#, v.clone()).unwrap(),
        json!(true)
    );
    assert_eq!(
        eval(r#"=starts with(s, "He")"#, v.clone()).unwrap(),
        json!(true)
    );
    assert_eq!(
        eval(r#"=ends with(s, "x")"#, v.clone()).unwrap(),
        json!(false)
    );
    assert_eq!(eval("=upper case(s)", v.clone()).unwrap(), json!("HELLO"));
    assert_eq!(eval("=lower case(s)", v.clone()).unwrap(), json!("hello"));
    assert_eq!(
        eval("=list contains(xs, 2.0)", v.clone()).unwrap(),
        json!(true)
    );
    assert_eq!(eval("=sum(xs)", v.clone()).unwrap(), json!(6.5));
    assert_eq!(eval("=sum(1, 2)", v.clone()).unwrap(), json!(3));
    assert_eq!(eval("=min(xs)", v.clone()).unwrap(), json!(1.5));
    assert_eq!(eval("=max(xs)", v.clone()).unwrap(), json!(3));
    assert_eq!(eval("=max([])", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("=abs(-4)", v.clone()).unwrap(), json!(4));
    assert_eq!(eval("=string(1.5)", v.clone()).unwrap(), json!("1.5"));
    assert_eq!(eval("=count(n)", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("=count(s)", v.clone()).unwrap(), Value::Null);
    assert!(cond("=count(xs) > 2 and contains(s, \"H\")", v.clone()));
    assert!(cond("=is defined(s)", v.clone()));
    assert!(cond("=is defined(n)", v.clone()));
    assert!(cond("=is defined(o.k)", v.clone()));
    assert!(!cond("=is defined(missing)", v.clone()));
    assert!(!cond("=is defined(o.missing)", v.clone()));
    assert!(!cond("=is defined(s.missing)", v));
}

#[test]
fn function_errors() {
    let err = eval("=frobnicate(1)", json!({})).unwrap_err();
    assert_eq!(err, ExprError::Eval("unknown function `frobnicate`".into()));
    let err = eval("=count(1, 2)", json!({})).unwrap_err();
    assert!(
        matches!(&err, ExprError::Eval(m) if m.contains("count")),
        "{err}"
    );
    assert!(matches!(eval("=sum()", json!({})), Err(ExprError::Eval(_))));
}

#[test]
fn feel_syntax_errors() {
    for bad in [
        "=",
        "= ",
        "='a'",
        "=a ==",
        "=a ? 1 : 2",
        "=(1",
        "=[1,",
        "=1 +",
        "=and",
    ] {
        assert!(
            matches!(Expression::parse(bad), Err(ExprError::Syntax { .. })),
            "{bad} should be a syntax error"
        );
    }
    let err = Expression::parse("=a >").unwrap_err();
    assert!(matches!(err, ExprError::Syntax { pos: 4, .. }), "{err}");
}

#[test]
fn non_boolean_condition_is_type_error() {
    let e = Expression::parse("=x + 1").unwrap();
    assert!(matches!(
        e.eval_bool(&vars(json!({"x": 1}))),
        Err(ExprError::Type(_))
    ));
}

#[test]
fn eval_string() {
    let e = Expression::parse("=x / 4").unwrap();
    assert_eq!(e.eval_string(&vars(json!({"x": 1}))).unwrap(), "0.25");
    let e = Expression::parse(r#"="id-" + string(x)"#).unwrap();
    assert_eq!(e.eval_string(&vars(json!({"x": 7}))).unwrap(), "id-7");
}
