//! Conversion of values to text (templates, `eval_string`, FEEL `string()`).

use serde_json::Value;

/// Strings as-is, integers without fraction, floats in their shortest form, booleans as
/// `true`/`false`, null as `null`, lists and objects as JSON.
pub(crate) fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Appends the text of `v` to `out`.
pub(crate) fn push_text(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversions() {
        assert_eq!(to_text(&json!("abc")), "abc");
        assert_eq!(to_text(&json!(2)), "2");
        assert_eq!(to_text(&json!(-7)), "-7");
        assert_eq!(to_text(&json!(0.6)), "0.6");
        assert_eq!(to_text(&json!(2.0)), "2.0");
        assert_eq!(to_text(&json!(true)), "true");
        assert_eq!(to_text(&Value::Null), "null");
        assert_eq!(to_text(&json!(["a", 1])), r#"["a",1]"#);
    }
}
