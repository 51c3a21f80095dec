//! `-o yaml`: a JSON value written as block-style YAML. YAML 1.2 is a superset of
//! JSON, so every scalar is written as its JSON text (strings double-quoted, with
//! JSON's escapes, which YAML reads the same way); only the nesting becomes
//! indentation. No YAML library is needed for that, and none is used.

use serde_json::Value;

/// `value` as a YAML document (ends with a newline).
pub(crate) fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

/// The text of a scalar or of an empty collection (`{}`, `[]`).
fn scalar_text(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

/// True if `value` is written on the line of its key (a scalar or an empty collection).
fn inline(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => true,
    }
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key_text(key));
        if inline(value) {
            out.push_str(": ");
            out.push_str(&scalar_text(value));
            out.push('\n');
        } else {
            out.push_str(":\n");
            write_nested(out, value, indent + 2);
        }
    }
}

/// A key as written: bare when it is a plain word no YAML reader takes for anything
/// but a string, else quoted.
fn key_text(key: &str) -> String {
    let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain { key.to_owned() } else { Value::String(key.to_owned()).to_string() }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for value in items {
        out.push_str(&" ".repeat(indent));
        if inline(value) {
            out.push_str("- ");
            out.push_str(&scalar_text(value));
            out.push('\n');
        } else {
            out.push_str("-\n");
            write_nested(out, value, indent + 2);
        }
    }
}

fn write_nested(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) => write_map(out, map, indent),
        Value::Array(items) => write_seq(out, items, indent),
        scalar => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::to_yaml;

    #[test]
    fn nesting_becomes_indentation_and_scalars_stay_json() {
        // serde_json's maps keep keys sorted.
        let value = json!({
            "jobs": [
                {"a": "x: \"y\"\n", "files": [], "count": 3},
                {"error": null, "flags": {}, "on": 1}
            ],
            "z z": [],
        });
        let want = "jobs:\n  -\n    a: \"x: \\\"y\\\"\\n\"\n    count: 3\n    files: []\n  -\n    \
                    error: null\n    flags: {}\n    \"on\": 1\n\"z z\": []\n";
        assert_eq!(to_yaml(&value), want);
        assert_eq!(to_yaml(&json!({})), "{}\n");
    }
}
