//! Run parameters against their declaration (`spec.params`): the values given on the command line
//! (`run --param`, `rerun --param`) checked for name, type and `enum`, defaults filled in, each
//! value turned into the text `${params.NAME}` stands for.
//!
//! Pure: it neither reads the values from anywhere nor records them (the run's pinned spec does).

use indexmap::IndexMap;

use super::{ParamSpec, ParamType, ScalarValue};

/// Why the given parameters do not fit the declaration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown parameter {name:?}{}", hint(.suggestion))]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
    #[error("parameter {name}: {value:?} is not {}", article(*.kind))]
    WrongType {
        name: String,
        value: String,
        kind: ParamType,
    },
    #[error("parameter {name}: {value:?} is not one of {allowed}")]
    NotAllowed {
        name: String,
        value: String,
        allowed: String,
    },
    #[error("parameter {name} is required (it has no default): give it with --param {name}=VALUE")]
    Missing { name: String },
}

fn hint(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(", did you mean {s:?}?"))
        .unwrap_or_else(|| " (not declared in spec.params)".to_owned())
}

fn article(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "a string",
        ParamType::Integer => "an integer",
        ParamType::Number => "a number",
        ParamType::Boolean => "a boolean (true or false)",
    }
}

/// The run's parameter values, in declaration order: each given value checked, each one left
/// out taken from its default. Every problem is reported, unknown names first.
pub fn resolve(
    declared: &IndexMap<String, ParamSpec>,
    given: &IndexMap<String, String>,
) -> Result<IndexMap<String, String>, Vec<ParamError>> {
    let mut errors = Vec::new();
    for name in given.keys() {
        if !declared.contains_key(name) {
            errors.push(ParamError::Unknown {
                name: name.clone(),
                suggestion: closest(name, declared.keys().map(String::as_str)),
            });
        }
    }
    let mut values = IndexMap::with_capacity(declared.len());
    for (name, spec) in declared {
        let value = match (given.get(name), &spec.default) {
            (Some(value), _) => value.clone(),
            (None, Some(default)) => default.to_text(),
            (None, None) => {
                errors.push(ParamError::Missing { name: name.clone() });
                continue;
            }
        };
        match check(name, spec, &value) {
            Ok(text) => {
                values.insert(name.clone(), text);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

/// Checks one value (given or default) against its declaration; returns its normalized text
/// (`+5` is `5`, `TRUE` is not a boolean).
pub fn check(name: &str, spec: &ParamSpec, value: &str) -> Result<String, ParamError> {
    let wrong = || ParamError::WrongType {
        name: name.to_owned(),
        value: value.to_owned(),
        kind: spec.kind,
    };
    let text = match spec.kind {
        ParamType::String => value.to_owned(),
        ParamType::Integer => value
            .trim()
            .parse::<i64>()
            .map_err(|_| wrong())?
            .to_string(),
        ParamType::Number => {
            let n = value.trim().parse::<f64>().map_err(|_| wrong())?;
            if !n.is_finite() {
                return Err(wrong());
            }
            value.trim().to_owned()
        }
        ParamType::Boolean => match value {
            "true" | "false" => value.to_owned(),
            _ => return Err(wrong()),
        },
    };
    if let Some(allowed) = &spec.allowed
        && !allowed.iter().any(|a| same(spec.kind, a, &text))
    {
        return Err(ParamError::NotAllowed {
            name: name.to_owned(),
            value: value.to_owned(),
            allowed: allowed
                .iter()
                .map(ScalarValue::to_text)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(text)
}

/// Whether an `enum` entry is the value `text` (numbers compare as numbers: `1.0` is `1`).
fn same(kind: ParamType, allowed: &ScalarValue, text: &str) -> bool {
    match kind {
        ParamType::Number => {
            allowed.to_text().parse::<f64>().ok() == text.parse::<f64>().ok()
                && text.parse::<f64>().is_ok()
        }
        ParamType::String | ParamType::Integer | ParamType::Boolean => allowed.to_text() == text,
    }
}

fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(
        kind: ParamType,
        default: Option<ScalarValue>,
        allowed: Option<Vec<ScalarValue>>,
    ) -> ParamSpec {
        ParamSpec {
            kind,
            default,
            allowed,
            description: None,
        }
    }

    fn given(pairs: &[(&str, &str)]) -> IndexMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_types_and_enums() {
        let mut declared = IndexMap::new();
        declared.insert(
            "date".to_owned(),
            decl(
                ParamType::String,
                Some(ScalarValue::String("today".into())),
                None,
            ),
        );
        declared.insert(
            "count".to_owned(),
            decl(ParamType::Integer, Some(ScalarValue::Integer(3)), None),
        );
        declared.insert(
            "env".to_owned(),
            decl(
                ParamType::String,
                Some(ScalarValue::String("dev".into())),
                Some(vec![
                    ScalarValue::String("dev".into()),
                    ScalarValue::String("prod".into()),
                ]),
            ),
        );
        declared.insert("dry".to_owned(), decl(ParamType::Boolean, None, None));
        let values = resolve(&declared, &given(&[("dry", "true"), ("count", "+7")])).unwrap();
        assert_eq!(
            values.into_iter().collect::<Vec<_>>(),
            vec![
                ("date".to_owned(), "today".to_owned()),
                ("count".to_owned(), "7".to_owned()),
                ("env".to_owned(), "dev".to_owned()),
                ("dry".to_owned(), "true".to_owned()),
            ]
        );
        let errors = resolve(
            &declared,
            &given(&[("dates", "x"), ("count", "many"), ("env", "qa")]),
        )
        .unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "unknown parameter \"dates\", did you mean \"date\"?",
                "parameter count: \"many\" is not an integer",
                "parameter env: \"qa\" is not one of dev, prod",
                "parameter dry is required (it has no default): give it with --param dry=VALUE",
            ]
        );
        let number = decl(ParamType::Number, None, Some(vec![ScalarValue::Float(1.5)]));
        assert_eq!(check("n", &number, "1.50"), Ok("1.50".to_owned()));
        assert!(check("n", &number, "inf").is_err());
        assert!(check("b", &decl(ParamType::Boolean, None, None), "yes").is_err());
    }
}
