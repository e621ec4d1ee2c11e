//! Literal text and `${...}` templates.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use serde_json::{Map, Value, json};
use steadyflow_expr::{ExprError, Expression};

fn vars(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("vars must be an object"),
    }
}

#[test]
fn literals() {
    for text in [
        "PT5M",
        "invoice",
        "",
        "  invoice \n",
        "R3/PT10M",
        "a $ b # c { }",
    ] {
        let e = Expression::parse(text).unwrap();
        assert!(e.is_literal(), "{text}");
        assert_eq!(e.dialect(), None);
        assert_eq!(e.source(), text);
        assert_eq!(e.eval(&Map::new()).unwrap(), json!(text.trim()));
        assert_eq!(e.eval_string(&Map::new()).unwrap(), text.trim());
    }
}

#[test]
fn templates_render_strings() {
    let e = Expression::parse("kermit_${loopCounter}").unwrap();
    assert!(!e.is_literal());
    assert_eq!(e.dialect(), None);
    assert_eq!(
        e.eval(&vars(json!({"loopCounter": 2}))).unwrap(),
        json!("kermit_2")
    );

    let e = Expression::parse("My Task ${loopCounter}").unwrap();
    assert_eq!(
        e.eval_string(&vars(json!({"loopCounter": 0}))).unwrap(),
        "My Task 0"
    );
}

#[test]
fn template_value_conversion() {
    let e = Expression::parse("${a}|${b}|${c}|${d}|#{e}|${f}").unwrap();
    let v = vars(json!({"a": "s", "b": 3, "c": 0.5, "d": true, "e": null, "f": [1]}));
    assert_eq!(e.eval_string(&v).unwrap(), "s|3|0.5|true|null|[1]");
}

#[test]
fn template_with_operators_and_strings() {
    let e = Expression::parse("Total: ${price * qty} ${qty > 1 ? 'items' : 'item'}").unwrap();
    let v = vars(json!({"price": 2, "qty": 3}));
    assert_eq!(e.eval_string(&v).unwrap(), "Total: 6 items");
    let e = Expression::parse("x${'}'}y").unwrap();
    assert_eq!(e.eval_string(&Map::new()).unwrap(), "x}y");
}

#[test]
fn template_errors() {
    let e = Expression::parse("task-${missing}").unwrap();
    assert_eq!(
        e.eval(&Map::new()),
        Err(ExprError::UnknownVariable("missing".into()))
    );
    assert!(matches!(
        Expression::parse("task-${a +}"),
        Err(ExprError::Syntax { pos: 10, .. })
    ));
    assert!(matches!(
        Expression::parse("task-${a"),
        Err(ExprError::Syntax { pos: 5, .. })
    ));
}

#[test]
fn escaped_dollar_brace() {
    let e = Expression::parse(r"costs \${price} = ${price}").unwrap();
    assert_eq!(
        e.eval_string(&vars(json!({"price": 5}))).unwrap(),
        "costs ${price} = 5"
    );
}

#[test]
fn equals_sign_inside_text_is_not_feel() {
    let e = Expression::parse("a=b").unwrap();
    assert!(e.is_literal());
}
