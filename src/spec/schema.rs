//! The Pipeline JSON Schema as editors and validation read it: schemars' output, made plainer.
//!
//! schemars describes an optional field as "this type or null" and an enum with documented
//! variants as a `oneOf` of constants. Both read badly: an editor's hover on `trigger:` showed the
//! doc of the value written instead of the field's, and a bad value was reported as "expected
//! null, found a string". So, after generation:
//! - an optional field is its type alone (leaving it out is how a manifest says "none");
//! - an enum is an `enum` of its values, each value's doc in `markdownEnumDescriptions` (read by
//!   yaml-language-server and VS Code);
//! - every definition has a `title`.

use serde_json::{Map, Value};

/// Rewrites a generated schema in place (see the module doc).
pub fn polish(schema: &mut Value) {
    if let Some(defs) = schema.get_mut("$defs").and_then(Value::as_object_mut) {
        for (name, def) in defs.iter_mut() {
            if let Some(obj) = def.as_object_mut()
                && !obj.contains_key("title")
            {
                obj.insert("title".into(), Value::from(title_of(name)));
            }
        }
    }
    walk(schema);
    if let Some(defs) = schema.get_mut("$defs").and_then(Value::as_object_mut) {
        defs.values_mut().for_each(fold_branch_docs);
    }
}

/// The docs of a definition's `anyOf`/`oneOf` branches move into the definition's description:
/// an editor shows the first description it meets from the innermost schema out, so a branch's
/// doc ("Executed directly...") hid the doc of the field that uses the definition.
fn fold_branch_docs(def: &mut Value) {
    let Some(obj) = def.as_object_mut() else {
        return;
    };
    let mut docs = Vec::new();
    for keyword in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = obj.get_mut(keyword) {
            for branch in branches.iter_mut().filter_map(Value::as_object_mut) {
                let Some(Value::String(doc)) = branch.remove("description") else {
                    continue;
                };
                // A variant written as `{name: value}`: the doc is the doc of that one key.
                if let Some(Value::Object(properties)) = branch.get_mut("properties")
                    && properties.len() == 1
                    && let Some(Value::Object(only)) = properties.values_mut().next()
                    && !only.contains_key("description")
                {
                    only.insert("description".into(), Value::from(doc));
                    continue;
                }
                docs.push(doc);
            }
        }
    }
    if docs.is_empty() {
        return;
    }
    let mut text = obj
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for doc in docs {
        text.push_str("\n- ");
        text.push_str(&doc.replace('\n', " "));
    }
    obj.insert(
        "description".into(),
        Value::from(text.trim_start().to_owned()),
    );
}

fn walk(node: &mut Value) {
    match node {
        Value::Object(obj) => {
            drop_null_branch(obj);
            drop_null_type(obj);
            constants_to_enum(obj);
            for value in obj.values_mut() {
                walk(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(walk),
        Value::Bool(_) | Value::Null | Value::Number(_) | Value::String(_) => {}
    }
}

fn is_null_type(branch: &Value) -> bool {
    branch
        .as_object()
        .is_some_and(|b| b.len() == 1 && b.get("type").and_then(Value::as_str) == Some("null"))
}

/// `{"anyOf": [X, {"type": "null"}], ...}` becomes `X` with the node's own keys kept.
fn drop_null_branch(obj: &mut Map<String, Value>) {
    for keyword in ["anyOf", "oneOf"] {
        let Some(Value::Array(branches)) = obj.get(keyword) else {
            continue;
        };
        if branches.len() != 2 || !branches.iter().any(is_null_type) {
            continue;
        }
        let Some(Value::Array(branches)) = obj.remove(keyword) else {
            continue;
        };
        for branch in branches {
            if is_null_type(&branch) {
                continue;
            }
            match branch {
                Value::Object(inner) => {
                    for (key, value) in inner {
                        obj.entry(key).or_insert(value);
                    }
                }
                other => {
                    obj.insert(keyword.into(), Value::Array(vec![other]));
                }
            }
        }
    }
}

/// `{"type": ["string", "null"]}` becomes `{"type": "string"}`.
fn drop_null_type(obj: &mut Map<String, Value>) {
    let Some(Value::Array(types)) = obj.get_mut("type") else {
        return;
    };
    if !types.iter().any(|t| t.as_str() == Some("null")) {
        return;
    }
    types.retain(|t| t.as_str() != Some("null"));
    if types.len() == 1 {
        let only = types.remove(0);
        obj.insert("type".into(), only);
    }
}

/// A `oneOf` of documented string constants becomes an `enum` with its values' docs alongside.
fn constants_to_enum(obj: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = obj.get("oneOf") else {
        return;
    };
    let mut values = Vec::with_capacity(branches.len());
    let mut docs = Vec::with_capacity(branches.len());
    for branch in branches {
        let Some(b) = branch.as_object() else { return };
        let Some(value) = b.get("const").and_then(Value::as_str) else {
            return;
        };
        if b.get("type").and_then(Value::as_str) != Some("string")
            || b.keys()
                .any(|k| !matches!(k.as_str(), "type" | "const" | "description"))
        {
            return;
        }
        values.push(Value::from(value));
        docs.push(
            b.get("description")
                .cloned()
                .unwrap_or_else(|| Value::from("")),
        );
    }
    obj.remove("oneOf");
    obj.insert("type".into(), Value::from("string"));
    obj.insert("enum".into(), Value::Array(values));
    obj.insert("markdownEnumDescriptions".into(), Value::Array(docs));
}

/// `RetryPolicy` as `Retry policy`.
fn title_of(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push(' ');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn optional_fields_lose_their_null_and_enums_become_enums() {
        let mut schema = json!({
            "$defs": {
                "RetryPolicy": {"type": "object"},
                "Trigger": {"oneOf": [
                    {"type": "string", "const": "a", "description": "A."},
                    {"type": "string", "const": "b", "description": "B."}
                ]}
            },
            "properties": {
                "t": {"anyOf": [{"$ref": "#/$defs/Trigger"}, {"type": "null"}], "description": "T."},
                "s": {"type": ["string", "null"]}
            }
        });
        polish(&mut schema);
        assert_eq!(schema["$defs"]["RetryPolicy"]["title"], "Retry policy");
        assert_eq!(schema["$defs"]["Trigger"]["enum"], json!(["a", "b"]));
        assert_eq!(
            schema["$defs"]["Trigger"]["markdownEnumDescriptions"],
            json!(["A.", "B."])
        );
        assert_eq!(
            schema["properties"]["t"],
            json!({"$ref": "#/$defs/Trigger", "description": "T."})
        );
        assert_eq!(schema["properties"]["s"], json!({"type": "string"}));
    }
}
