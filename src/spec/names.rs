//! Identities that end up in file paths and SQL: pipeline names and job ids.
//!
//! Both are parsed at the edge (deserialization, CLI arguments), so a value of these types can never
//! hold `..`, a slash, a NUL or anything else that could escape the state or manifests folder.
//! They are carried past the edge (the plan, the store's rows) as they are: the text is shared
//! (`Arc<str>`), so a clone never copies it. This module owns the rules; it does not know where
//! the names are used (how they go in and out of database columns is the store's).

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest pipeline name or job id (a DNS label's limit, also safe as a file name).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong { kind: &'static str, value: String },
    #[error("{kind} {value:?} {rule}")]
    Invalid {
        kind: &'static str,
        value: String,
        rule: &'static str,
    },
}

/// A pipeline's `metadata.name`: a lowercase DNS label, `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PipelineName(Arc<str>);

/// A job's `id`: `[A-Za-z0-9_.-]+`, at most 63, never `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(Arc<str>);

impl PipelineName {
    pub const PATTERN: &'static str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

    pub fn parse(value: &str) -> Result<Self, NameError> {
        const KIND: &str = "pipeline name";
        check_len(KIND, value)?;
        let bytes = value.as_bytes();
        let inner_ok = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        let ends_ok = bytes[0] != b'-' && bytes[bytes.len() - 1] != b'-';
        if inner_ok && ends_ok {
            Ok(Self(value.into()))
        } else {
            Err(NameError::Invalid {
                kind: KIND,
                value: value.to_owned(),
                rule: "must be a lowercase DNS label: a-z, 0-9 and '-', starting and ending with a letter or digit",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JobId {
    pub const PATTERN: &'static str = "^[A-Za-z0-9_.-]+$";

    pub fn parse(value: &str) -> Result<Self, NameError> {
        const KIND: &str = "job id";
        check_len(KIND, value)?;
        if value == "." || value == ".." {
            return Err(NameError::Invalid {
                kind: KIND,
                value: value.to_owned(),
                rule: "must not be '.' or '..'",
            });
        }
        if Self::allowed_chars(value) {
            Ok(Self(value.into()))
        } else {
            Err(NameError::Invalid {
                kind: KIND,
                value: value.to_owned(),
                rule: "may only contain A-Z, a-z, 0-9, '_', '.' and '-'",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `value` uses only the characters of [`Self::PATTERN`] (`.` and `..` still fail
    /// [`Self::parse`]).
    pub fn allowed_chars(value: &str) -> bool {
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    }
}

fn check_len(kind: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            value: value.chars().take(80).collect(),
        });
    }
    Ok(())
}

macro_rules! name_impls {
    ($ty:ident, $schema_name:literal, $description:literal, $example:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl $ty {
            /// The text, shared (for a column that takes it without copying).
            pub fn shared(&self) -> Arc<str> {
                Arc::clone(&self.0)
            }
        }

        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<$ty> for str {
            fn eq(&self, other: &$ty) -> bool {
                *self == *other.0
            }
        }

        impl PartialEq<$ty> for &str {
            fn eq(&self, other: &$ty) -> bool {
                **self == *other.0
            }
        }

        impl PartialEq<$ty> for String {
            fn eq(&self, other: &$ty) -> bool {
                **self == *other.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($schema_name)
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "description": $description,
                    "pattern": Self::PATTERN,
                    "minLength": 1,
                    "maxLength": MAX_NAME_LEN,
                    "examples": [$example],
                })
            }
        }
    };
}

name_impls!(
    PipelineName,
    "PipelineName",
    "A lowercase DNS label: a-z, 0-9 and '-', starting and ending with a letter or digit, at most 63 characters.",
    "nightly-etl"
);
name_impls!(
    JobId,
    "JobId",
    "A job id, unique within the pipeline: A-Z, a-z, 0-9, '_', '.' and '-', at most 63 characters, never '.' or '..'.",
    "extract"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_names_are_dns_labels() {
        for ok in ["a", "nightly-etl", "a1", "0", &"x".repeat(63)] {
            assert!(PipelineName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "../x",
            "a/b",
            &"x".repeat(64),
            "é",
        ] {
            assert!(PipelineName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_is_shared_and_serialized_as_its_text() {
        let id = JobId::parse("extract").unwrap();
        let copy = id.clone();
        // A clone shares the text: carrying ids through the engine copies no string.
        assert!(std::ptr::eq(id.as_str(), copy.as_str()));
        assert_eq!(id, "extract");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"extract\"");
        assert_eq!(serde_json::from_str::<JobId>("\"extract\"").unwrap(), id);
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
        let name = PipelineName::parse("nightly-etl").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"nightly-etl\"");
    }

    #[test]
    fn job_ids_cannot_escape_a_folder() {
        for ok in ["extract", "a.b", "A_1-2", "..a", "a.."] {
            assert!(JobId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../etc/x",
            "/abs",
            "a/b",
            "a\0b",
            "a\nb",
            "ａ",
            "a b",
            &"x".repeat(300),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
