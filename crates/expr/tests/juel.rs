//! JUEL (`${...}` / `#{...}`) behaviour.

// A test crate: its helpers outside `#[test]` functions may unwrap too (clippy.toml
// exempts only test functions and `#[cfg(test)]` modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use serde_json::{Map, Value, json};
use steadyflow_expr::{Dialect, ExprError, Expression, Layered};

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
fn gateway_conditions() {
    assert!(cond("${input == 1}", json!({"input": 1})));
    assert!(!cond("${input == 1}", json!({"input": 2})));
    assert!(cond("${input <= 2}", json!({"input": 2})));
    assert!(cond("${input >= 3}", json!({"input": 3})));
    assert!(!cond("${input >= 3}", json!({"input": 2})));
    assert!(cond("${input != 'right'}", json!({"input": "left"})));
    assert!(cond("${input == 'right'}", json!({"input": "right"})));
    assert!(cond("${ input > 1 }", json!({"input": 2})));
    assert!(cond("${amount > 1000}", json!({"amount": 1500})));
    assert!(!cond("${amount > 1000}", json!({"amount": 999.5})));
    assert!(cond(
        "${order.total >= 10}",
        json!({"order": {"total": 10}})
    ));
    assert!(cond("${creditApproved}", json!({"creditApproved": true})));
}

#[test]
fn whitespace_and_newlines_around_expression() {
    let e = Expression::parse("  \n  ${input == 1}  \n  ").unwrap();
    assert_eq!(e.dialect(), Some(Dialect::Juel));
    assert!(!e.is_literal());
    assert!(e.eval_bool(&vars(json!({"input": 1}))).unwrap());
    assert!(cond("${\n  input\n  ==\t1\n}", json!({"input": 1})));
}

#[test]
fn multi_instance_completion_condition() {
    let src = "${nrOfCompletedInstances/nrOfInstances >= 0.6 }";
    assert!(cond(
        src,
        json!({"nrOfCompletedInstances": 3, "nrOfInstances": 5})
    ));
    assert!(!cond(
        src,
        json!({"nrOfCompletedInstances": 2, "nrOfInstances": 5})
    ));
}

#[test]
fn arithmetic_types() {
    assert_eq!(eval("${5-2}", json!({})).unwrap(), json!(3));
    assert!(eval("${5-2}", json!({})).unwrap().is_i64());
    assert_eq!(eval("${2 * 3 + 1}", json!({})).unwrap(), json!(7));
    assert_eq!(eval("${2 * (3 + 1)}", json!({})).unwrap(), json!(8));
    assert_eq!(eval("${7 % 3}", json!({})).unwrap(), json!(1));
    assert_eq!(eval("${7 mod 3}", json!({})).unwrap(), json!(1));
    assert_eq!(eval("${6 / 3}", json!({})).unwrap(), json!(2.0));
    assert!(eval("${6 / 3}", json!({})).unwrap().is_f64());
    assert_eq!(eval("${3 div 4}", json!({})).unwrap(), json!(0.75));
    assert_eq!(eval("${1.5 + 1}", json!({})).unwrap(), json!(2.5));
    assert_eq!(eval("${-x}", json!({"x": 4})).unwrap(), json!(-4));
    assert_eq!(eval("${- -4}", json!({})).unwrap(), json!(4));
    assert_eq!(eval("${10 - 2 - 3}", json!({})).unwrap(), json!(5));
    assert_eq!(eval("${'a' + \"b\"}", json!({})).unwrap(), json!("ab"));
}

#[test]
fn arithmetic_errors() {
    assert!(matches!(
        eval("${1 / 0}", json!({})),
        Err(ExprError::Eval(_))
    ));
    assert!(matches!(
        eval("${1 % 0}", json!({})),
        Err(ExprError::Eval(_))
    ));
    let err = eval("${x + 1}", json!({"x": i64::MAX})).unwrap_err();
    assert!(
        matches!(&err, ExprError::Eval(m) if m.contains("overflow")),
        "{err}"
    );
    assert!(matches!(
        eval("${'a' + 1}", json!({})),
        Err(ExprError::Type(_))
    ));
    assert!(matches!(
        eval("${true * 2}", json!({})),
        Err(ExprError::Type(_))
    ));
}

#[test]
fn null_follows_el_rules() {
    let v = json!({"n": null});
    assert_eq!(eval("${n + 1}", v.clone()).unwrap(), json!(1));
    assert!(!cond("${n > 1}", v.clone()));
    assert!(!cond("${n < 1}", v.clone()));
    assert!(cond("${n == null}", v.clone()));
    assert!(!cond("${n == 0}", v.clone()));
    assert!(cond("${n != 0}", v.clone()));
    assert!(!cond("${n}", v.clone()));
    assert!(cond("${!n}", v.clone()));
    assert!(!cond("${n && true}", v.clone()));
    assert!(cond("${null <= null}", v));
}

#[test]
fn comparisons() {
    assert!(cond("${1 == 1.0}", json!({})));
    assert!(cond("${1 < 1.5}", json!({})));
    assert!(!cond("${1 == '1'}", json!({})));
    assert!(cond("${'abc' < 'abd'}", json!({})));
    assert!(cond("${'b' gt 'a'}", json!({})));
    assert!(cond("${2 ge 2 and 1 le 1 and 1 lt 2}", json!({})));
    assert!(cond("${x eq 'y' && z ne 'y'}", json!({"x": "y", "z": "q"})));
    assert!(cond("${xs == ys}", json!({"xs": [1, 2], "ys": [1.0, 2]})));
    assert!(matches!(
        eval("${'a' < 1}", json!({})),
        Err(ExprError::Type(_))
    ));
}

#[test]
fn logic_and_precedence() {
    let v = json!({"a": 2, "b": 1, "c": true});
    assert!(cond("${a > 1 && b < 2 || !c}", v.clone()));
    assert!(cond("${a > 1 and not c}", json!({"a": 2, "c": false})));
    assert!(!cond("${a > 1 and not c}", v.clone()));
    assert!(cond("${false && true || true}", json!({})));
    assert!(!cond("${false && (true || true)}", json!({})));
    assert!(cond("${true or false and false}", json!({})));
    assert!(cond("${1 + 2 * 3 == 7}", json!({})));
    assert!(cond("${!(a < b)}", v));
}

#[test]
fn short_circuit_skips_unknown_variables() {
    assert!(!cond("${false && missing}", json!({})));
    assert!(cond("${true || missing}", json!({})));
    assert!(cond("${true ? true : missing}", json!({})));
}

#[test]
fn logic_type_errors() {
    let err = eval("${'a' && true}", json!({})).unwrap_err();
    assert!(matches!(err, ExprError::Type(_)), "{err}");
    assert!(matches!(
        eval("${1 || true}", json!({})),
        Err(ExprError::Type(_))
    ));
    assert!(matches!(
        eval("${!'x'}", json!({})),
        Err(ExprError::Type(_))
    ));
}

#[test]
fn ternary() {
    assert_eq!(
        eval("${x > 1 ? 'big' : 'small'}", json!({"x": 2})).unwrap(),
        json!("big")
    );
    assert_eq!(
        eval("${x > 1 ? 'big' : 'small'}", json!({"x": 0})).unwrap(),
        json!("small")
    );
    assert_eq!(
        eval("${a ? 1 : b ? 2 : 3}", json!({"a": false, "b": true})).unwrap(),
        json!(2)
    );
    assert!(matches!(
        eval("${1 ? 1 : 2}", json!({})),
        Err(ExprError::Type(_))
    ));
}

#[test]
fn empty_operator() {
    assert!(cond("${empty s}", json!({"s": ""})));
    assert!(cond("${empty n}", json!({"n": null})));
    assert!(cond("${empty xs}", json!({"xs": []})));
    assert!(cond("${not empty xs}", json!({"xs": [1]})));
    assert!(!cond("${empty 0}", json!({})));
}

#[test]
fn values_keep_their_type() {
    assert_eq!(
        eval("${topicName}", json!({"topicName": "testTopicExpression"})).unwrap(),
        json!("testTopicExpression")
    );
    assert_eq!(
        eval("#{dueDate}", json!({"dueDate": "2024-01-01T10:00:00Z"})).unwrap(),
        json!("2024-01-01T10:00:00Z")
    );
    assert_eq!(
        eval("${order}", json!({"order": {"a": [1]}})).unwrap(),
        json!({"a": [1]})
    );
    assert_eq!(eval("${null}", json!({})).unwrap(), Value::Null);
    assert_eq!(eval("${[1, 'a']}", json!({})).unwrap(), json!([1, "a"]));
}

#[test]
fn paths_and_indexes() {
    let v = json!({"order": {"items": [{"sku": "A"}, {"sku": "B"}], "customer": null}});
    assert_eq!(
        eval("${order.items[1].sku}", v.clone()).unwrap(),
        json!("B")
    );
    assert_eq!(eval("${order.items[5]}", v.clone()).unwrap(), Value::Null);
    assert_eq!(eval("${order.missing}", v.clone()).unwrap(), Value::Null);
    assert_eq!(
        eval("${order.missing.deeper}", v.clone()).unwrap(),
        Value::Null
    );
    assert_eq!(
        eval("${order.customer.name}", v.clone()).unwrap(),
        Value::Null
    );
    assert_eq!(
        eval("${order['items'][0].sku}", v.clone()).unwrap(),
        json!("A")
    );
    assert_eq!(eval("${[10, 20][1]}", json!({})).unwrap(), json!(20));
    assert!(matches!(
        eval("${order.items.sku}", v.clone()),
        Err(ExprError::Type(_))
    ));
    assert!(matches!(
        eval("${order.items['x']}", v),
        Err(ExprError::Type(_))
    ));
}

#[test]
fn unknown_variable() {
    let e = Expression::parse("${unknownVar > 1}").unwrap();
    assert_eq!(
        e.eval_bool(&Map::new()),
        Err(ExprError::UnknownVariable("unknownVar".into()))
    );
    assert_eq!(
        e.eval_bool(&Map::new()).unwrap_err().to_string(),
        "unknown variable `unknownVar`"
    );
}

#[test]
fn functions_are_not_supported() {
    let err = eval("${execution.getVariable('x')}", json!({"execution": {}})).unwrap_err();
    assert_eq!(
        err,
        ExprError::Eval("unknown function `execution.getVariable`".into())
    );
    let err = eval("${count(xs)}", json!({"xs": []})).unwrap_err();
    assert!(
        matches!(&err, ExprError::Eval(m) if m.contains("count")),
        "{err}"
    );
}

#[test]
fn non_boolean_condition_is_type_error() {
    let e = Expression::parse("${x}").unwrap();
    let err = e.eval_bool(&vars(json!({"x": "yes"}))).unwrap_err();
    assert!(matches!(err, ExprError::Type(_)), "{err}");
    let e = Expression::parse("approved").unwrap();
    assert!(matches!(e.eval_bool(&Map::new()), Err(ExprError::Type(_))));
}

#[test]
fn syntax_errors() {
    let err = Expression::parse("${input ==}").unwrap_err();
    match &err {
        ExprError::Syntax { text, pos, message } => {
            assert_eq!(text, "${input ==}");
            assert_eq!(*pos, 10);
            assert!(message.contains("expected an operand"), "{message}");
        }
        other => panic!("expected syntax error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("syntax error in expression `${input ==}` at 10:")
    );
    for bad in [
        "${}",
        "${a +}",
        "${(a}",
        "${a)}",
        "${a b}",
        "${'x}",
        "${a = 1}",
        "${a ? 1}",
        "${a..b}",
        "${1 +* 2}",
        "${a",
        "x ${a",
        "${and}",
        "${a[1}",
        "${f(1,}",
    ] {
        assert!(
            matches!(Expression::parse(bad), Err(ExprError::Syntax { .. })),
            "{bad} should be a syntax error"
        );
    }
}

#[test]
fn syntax_error_position_is_relative_to_trimmed_text() {
    let err = Expression::parse("   ${a + }").unwrap_err();
    assert!(matches!(err, ExprError::Syntax { pos: 6, .. }), "{err}");
    let err = Expression::parse("${é == §}").unwrap_err();
    assert!(matches!(err, ExprError::Syntax { pos: 7, .. }), "{err}");
}

#[test]
fn layered_context_prefers_inner() {
    let local = vars(json!({"x": 1}));
    let global = vars(json!({"x": 2, "y": 3}));
    let ctx = Layered {
        inner: &local,
        outer: &global,
    };
    assert_eq!(
        Expression::parse("${x + y}").unwrap().eval(&ctx).unwrap(),
        json!(4)
    );
}

#[test]
fn parsed_expression_is_reusable_across_threads() {
    let e = Expression::parse("${n * 2}").unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || e.eval(&vars(json!({"n": i}))).unwrap())
        })
        .collect();
    let results: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results, vec![json!(0), json!(2), json!(4), json!(6)]);
}

#[test]
fn eval_string_of_typed_values() {
    let e = Expression::parse("${x}").unwrap();
    let s = |v: Value| e.eval_string(&vars(json!({"x": v}))).unwrap();
    assert_eq!(s(json!(2)), "2");
    assert_eq!(s(json!(0.25)), "0.25");
    assert_eq!(s(json!(true)), "true");
    assert_eq!(s(Value::Null), "null");
    assert_eq!(s(json!("txt")), "txt");
}
