//! Configuration from the environment, the container way: `FERRYD_<SECTION>__<FIELD>`
//! sets `<field>` of `[<section>]` (`FERRYD_API__LISTEN=0.0.0.0:7070`), and a top-level
//! field has no section (`FERRYD_DATA_DIR=/data`). Names are matched in lower case. A
//! value is read as a TOML value (a number, a boolean, an array, an inline table); one
//! that is not valid TOML is a string, so quote a string that reads as a number or a
//! boolean (`FERRYD_UPLOAD__HOST_ID='"8080"'`). Variables override the file; flags
//! override both.

use std::ffi::{OsStr, OsString};

use super::ConfigError;

/// Prefix of the variables that set configuration fields.
pub(super) const PREFIX: &str = "FERRYD_";

/// Whether variable `name` is one of ours (`FERRYD_*`).
pub(super) fn is_ours(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(PREFIX.as_bytes())
}

/// Sets in `doc` the field each `FERRYD_*` variable of `vars` names, in the order of
/// their names; returns the variables used.
pub(super) fn overlay(
    doc: &mut toml::Table,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<String>, ConfigError> {
    let mut vars: Vec<_> = vars.into_iter().collect();
    vars.sort();
    let mut used = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        let Some(path) = name.strip_prefix(PREFIX) else { continue };
        let invalid =
            |why: String| ConfigError::Invalid(format!("environment variable {name}: {why}"));
        let value = value.into_string().map_err(|_| invalid("the value is not UTF-8".into()))?;
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            return Err(invalid(format!(
                "name a field as {PREFIX}FIELD or {PREFIX}SECTION__FIELD"
            )));
        }
        set(doc, &keys, parse_value(&value)).map_err(invalid)?;
        used.push(name.to_string());
    }
    Ok(used)
}

/// `text` as a TOML value, or as a string when it is not one.
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Sets `doc[keys[0]][keys[1]]... = value`, making the tables on the way.
fn set(doc: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, sections)) = keys.split_last() else {
        return Err("no field named".into());
    };
    let mut table = doc;
    for key in sections {
        let entry =
            table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| format!("`{key}` is a field, not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn variables_set_fields_of_sections_and_the_top_level() {
        let mut doc: toml::Table = toml::from_str("[api]\nmax_body_bytes = 9999").expect("toml");
        let used = overlay(
            &mut doc,
            vars(&[
                ("FERRYD_DATA_DIR", "/data"),
                ("FERRYD_API__LISTEN", "0.0.0.0:7070"),
                ("FERRYD_RAFT__HEARTBEAT_MS", "100"),
                ("FERRYD_PEER_CACHE__ENABLED", "false"),
                ("FERRYD_UPLOAD__HOST_ID", "\"8080\""),
                ("FERRYD_CLUSTER__JOIN", "[\"a:7071\", \"b:7071\"]"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("overlay");
        assert_eq!(used.len(), 6);
        assert_eq!(doc["data_dir"].as_str(), Some("/data"));
        assert_eq!(doc["api"]["listen"].as_str(), Some("0.0.0.0:7070"));
        assert_eq!(doc["api"]["max_body_bytes"].as_integer(), Some(9999), "the file's stays");
        assert_eq!(doc["raft"]["heartbeat_ms"].as_integer(), Some(100));
        assert_eq!(doc["peer_cache"]["enabled"].as_bool(), Some(false));
        assert_eq!(doc["upload"]["host_id"].as_str(), Some("8080"));
        assert_eq!(doc["cluster"]["join"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn bad_names_are_refused_naming_the_variable() {
        for name in ["FERRYD_", "FERRYD_API__", "FERRYD___LISTEN"] {
            let mut doc = toml::Table::new();
            let error = overlay(&mut doc, vars(&[(name, "1")])).expect_err(name).to_string();
            assert!(error.contains(name), "{error}");
        }
        // In either order (variables are applied sorted by name).
        for pair in
            [["FERRYD_DATA_DIR__X", "FERRYD_DATA_DIR"], ["FERRYD_DATA_DIR", "FERRYD_DATA_DIR__X"]]
        {
            let mut doc = toml::Table::new();
            let error = overlay(&mut doc, vars(&[(pair[0], "1"), (pair[1], "2")]))
                .expect_err("a field is not a section");
            assert!(error.to_string().contains("`data_dir` is a field"), "{error}");
        }
    }
}
