//! A job's outputs: the `KEY=VALUE` lines and `KEY<<DELIM` ... `DELIM` blocks it wrote to the
//! file named by `$EXECUTIONER_OUTPUT`, read by the rules of GitHub Actions' `$GITHUB_OUTPUT`.
//!
//! This module owns the format (a pure parser) and the size limit. It does not create or read the
//! file, mask secrets (the engine does both) or store anything (the store does).

use indexmap::IndexMap;

/// A job's outputs, in the order their keys first appeared.
pub type Outputs = IndexMap<String, String>;

/// The most a job may write to its outputs file: 1 MiB.
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// Why an outputs file was refused; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("outputs line {line}: expected KEY=VALUE or KEY<<DELIMITER")]
    Malformed { line: usize },
    #[error("outputs line {line}: invalid key {key:?} (keys match [A-Za-z_][A-Za-z0-9_]*)")]
    InvalidKey { line: usize, key: String },
    #[error("outputs line {line}: {key}<< needs a delimiter")]
    EmptyDelimiter { line: usize, key: String },
    #[error("outputs line {line}: the block of {key} is never closed by a line {delimiter:?}")]
    Unclosed {
        line: usize,
        key: String,
        delimiter: String,
    },
    #[error("outputs are not UTF-8 text")]
    NotText,
}

/// Parses an outputs file. Empty lines are ignored; a line is `KEY=VALUE` when its first `=`
/// comes before any `<<`, else it opens a `KEY<<DELIMITER` block whose value is every line up to
/// the one that is exactly the delimiter, joined with `\n`. `\r\n` ends a line like `\n`. A key
/// given twice keeps its last value.
pub fn parse(bytes: &[u8]) -> Result<Outputs, OutputError> {
    let text = std::str::from_utf8(bytes).map_err(|_| OutputError::NotText)?;
    let mut outputs = Outputs::new();
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l));
    while let Some((line, content)) = lines.next() {
        if content.is_empty() {
            continue;
        }
        let equals = content.find('=');
        let heredoc = content.find("<<");
        // `KEY=VALUE` when the `=` comes first, else a block.
        let block = match (equals, heredoc) {
            (Some(e), Some(h)) if e < h => None,
            (Some(_), None) => None,
            (_, Some(h)) => Some(h),
            (None, None) => return Err(OutputError::Malformed { line }),
        };
        let (key, value) = match (block, equals) {
            (None, Some(e)) => (&content[..e], content[e + 1..].to_owned()),
            (Some(h), _) => {
                let key = &content[..h];
                let delimiter = &content[h + 2..];
                check_key(key, line)?;
                if delimiter.is_empty() {
                    return Err(OutputError::EmptyDelimiter {
                        line,
                        key: key.to_owned(),
                    });
                }
                let mut value: Vec<&str> = Vec::new();
                loop {
                    match lines.next() {
                        Some((_, l)) if l == delimiter => break,
                        Some((_, l)) => value.push(l),
                        None => {
                            return Err(OutputError::Unclosed {
                                line,
                                key: key.to_owned(),
                                delimiter: delimiter.to_owned(),
                            });
                        }
                    }
                }
                (key, value.join("\n"))
            }
            (None, None) => return Err(OutputError::Malformed { line }),
        };
        check_key(key, line)?;
        outputs.insert(key.to_owned(), value);
    }
    Ok(outputs)
}

fn check_key(key: &str, line: usize) -> Result<(), OutputError> {
    if crate::env::is_valid_name(key) {
        Ok(())
    } else {
        Err(OutputError::InvalidKey {
            line,
            key: key.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(String, String)> {
        parse(text.as_bytes()).expect("valid").into_iter().collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn key_value_lines() {
        assert_eq!(ok(""), pairs(&[]));
        assert_eq!(
            ok("A=1\n\nB=x=y\r\nC=\nD=a<<b\n"),
            pairs(&[("A", "1"), ("B", "x=y"), ("C", ""), ("D", "a<<b")])
        );
        assert_eq!(ok("A=1\nA=2"), pairs(&[("A", "2")]));
    }

    #[test]
    fn blocks() {
        assert_eq!(
            ok("NOTES<<EOF\nline 1\n\nline=3\nEOF\nAFTER=x\n"),
            pairs(&[("NOTES", "line 1\n\nline=3"), ("AFTER", "x")])
        );
        assert_eq!(ok("E<<END\nEND\n"), pairs(&[("E", "")]));
        assert_eq!(ok("K<<a=b\nv\na=b\n"), pairs(&[("K", "v")]));
        assert_eq!(ok("W<<EOF\r\none\r\nEOF\r\n"), pairs(&[("W", "one")]));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(b"A=1\njust text\n"),
            Err(OutputError::Malformed { line: 2 })
        );
        assert_eq!(
            parse(b"1A=x"),
            Err(OutputError::InvalidKey {
                line: 1,
                key: "1A".into()
            })
        );
        assert_eq!(
            parse(b"a.b=x").unwrap_err().to_string(),
            "outputs line 1: invalid key \"a.b\" (keys match [A-Za-z_][A-Za-z0-9_]*)"
        );
        assert_eq!(
            parse(b"K<<\nx\n"),
            Err(OutputError::EmptyDelimiter {
                line: 1,
                key: "K".into()
            })
        );
        assert_eq!(
            parse(b"K<<EOF\nx\nEO\n"),
            Err(OutputError::Unclosed {
                line: 1,
                key: "K".into(),
                delimiter: "EOF".into()
            })
        );
        assert_eq!(parse(b"K=\xff"), Err(OutputError::NotText));
    }
}
