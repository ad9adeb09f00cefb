//! Manifest text to generic documents with positions: YAML (several documents), TOML and JSON.
//!
//! Each document becomes a `serde_json::Value` plus a map from JSON pointer to the line and column
//! of every node and key, so that schema and semantic diagnostics can point at the offending node in
//! all three formats alike. This module owns the resource limits for hostile input (size, depth,
//! alias expansion, duplicate keys); it knows nothing of pipelines.

use std::collections::HashMap;
use std::fmt;

use granit_parser::{Event, Options, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

/// Largest manifest read, in bytes.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Deepest nesting of collections accepted.
pub const MAX_DEPTH: usize = 64;
/// Nodes that YAML aliases may add in a file in total (guards against "billion laughs").
pub const MAX_ALIAS_NODES: usize = 100_000;

/// A manifest's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
    Json,
}

impl Format {
    /// The format a file name implies, if any.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Where each node of a document stands in its file, by JSON pointer (`/spec/jobs/0/id`).
///
/// The pointers are kept as 64-bit hashes, not strings: a 10,000-job manifest has some 100,000
/// nodes, and their pointers as strings were the largest part of validating it. Two pointers
/// with the same hash (odds of about one in 10^9 for such a file) could only misplace an error's
/// line and column.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    values: HashMap<u64, Pos>,
    keys: HashMap<u64, Pos>,
}

fn pointer_hash(pointer: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same pointer always hashes alike.
    let mut hasher = std::hash::DefaultHasher::new();
    pointer.hash(&mut hasher);
    hasher.finish()
}

impl Positions {
    fn value(&mut self, pointer: &str, pos: Pos) {
        self.values.entry(pointer_hash(pointer)).or_insert(pos);
    }

    fn key(&mut self, pointer: &str, pos: Pos) {
        self.keys.entry(pointer_hash(pointer)).or_insert(pos);
    }

    /// The position of the value at `pointer`, or of its nearest ancestor that has one.
    pub fn of_value(&self, pointer: &str) -> Pos {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.values.get(&pointer_hash(p)) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => {
                    return self
                        .values
                        .get(&pointer_hash(""))
                        .copied()
                        .unwrap_or(Pos::START);
                }
            }
        }
    }

    /// The position of the key whose value is at `pointer` (falls back to the value's position).
    pub fn of_key(&self, pointer: &str) -> Pos {
        self.keys
            .get(&pointer_hash(pointer))
            .copied()
            .unwrap_or_else(|| self.of_value(pointer))
    }
}

/// One parsed document.
#[derive(Debug, Clone)]
pub struct SourceDoc {
    pub value: Value,
    pub positions: Positions,
}

/// A syntax or limit error, with its position when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl SyntaxError {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        Self {
            pos: Some(pos),
            message: message.into(),
        }
    }
}

/// Appends one JSON-pointer segment, escaped.
pub fn push_pointer(base: &str, segment: &str) -> String {
    let mut out = String::with_capacity(base.len() + segment.len() + 1);
    out.push_str(base);
    out.push('/');
    for c in segment.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// Turns raw bytes into text: UTF-8 only, BOM removed, no NUL (binary files are refused).
pub fn decode(bytes: &[u8]) -> Result<&str, SyntaxError> {
    if let Some(i) = bytes.iter().position(|b| *b == 0) {
        let pos = byte_pos(&String::from_utf8_lossy(&bytes[..i]), i);
        return Err(SyntaxError::at(
            pos,
            "file contains a NUL byte: not a text manifest",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = e.valid_up_to();
        // Safe: the prefix up to `valid_up_to` is valid UTF-8 by definition.
        let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        SyntaxError::at(
            byte_pos(prefix, valid),
            "file is not valid UTF-8 text".to_owned(),
        )
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Parses `text` in the given format into its documents.
pub fn parse(text: &str, format: Format) -> Result<Vec<SourceDoc>, SyntaxError> {
    match format {
        Format::Yaml => parse_yaml(text),
        Format::Json => parse_json(text),
        Format::Toml => parse_toml(text).map(|doc| vec![doc]),
    }
}

fn byte_pos(text: &str, offset: usize) -> Pos {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    Pos { line, col }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// YAML (and JSON, which is YAML 1.2 flow syntax, for positions)

fn marker_pos(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        pointer: String,
    },
    Map {
        map: Map<String, Value>,
        pointer: String,
        key: Option<String>,
    },
}

struct YamlBuilder {
    docs: Vec<SourceDoc>,
    stack: Vec<(Frame, usize)>,
    anchors: HashMap<usize, Value>,
    positions: Positions,
    root: Option<Value>,
    alias_budget: usize,
}

impl YamlBuilder {
    fn new() -> Self {
        Self {
            docs: Vec::new(),
            stack: Vec::new(),
            anchors: HashMap::new(),
            positions: Positions::default(),
            root: None,
            alias_budget: MAX_ALIAS_NODES,
        }
    }

    /// The pointer of the node about to be added, and whether it is a mapping key.
    fn slot(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some((Frame::Seq { items, pointer }, _)) => {
                (push_pointer(pointer, &items.len().to_string()), false)
            }
            Some((Frame::Map { pointer, key, .. }, _)) => match key {
                None => (pointer.clone(), true),
                Some(k) => (push_pointer(pointer, k), false),
            },
        }
    }

    fn add(&mut self, value: Value, pos: Pos, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(value);
                Ok(())
            }
            Some((Frame::Seq { items, .. }, _)) => {
                items.push(value);
                Ok(())
            }
            Some((Frame::Map { map, key, pointer }, _)) => match key.take() {
                None => {
                    let k = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".to_owned(),
                        Value::Array(_) | Value::Object(_) => {
                            return Err(SyntaxError::at(
                                pos,
                                "a mapping key must be a scalar, not a collection",
                            ));
                        }
                    };
                    if map.contains_key(&k) {
                        return Err(SyntaxError::at(pos, format!("duplicate key {k:?}")));
                    }
                    let child = push_pointer(pointer, &k);
                    self.positions.key(&child, pos);
                    *key = Some(k);
                    Ok(())
                }
                Some(k) => {
                    map.insert(k, value);
                    Ok(())
                }
            },
        }
    }

    fn open(&mut self, frame: Frame, pos: Pos, anchor: usize) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError::at(
                pos,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.stack.push((frame, anchor));
        Ok(())
    }

    fn close(&mut self, pos: Pos) -> Result<(), SyntaxError> {
        let Some((frame, anchor)) = self.stack.pop() else {
            return Err(SyntaxError::at(pos, "unbalanced collection end"));
        };
        let value = match frame {
            Frame::Seq { items, .. } => Value::Array(items),
            Frame::Map { map, .. } => Value::Object(map),
        };
        // The collection's own position was recorded when it opened.
        self.add(value, pos, anchor)
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let pos = marker_pos(&span);
        match event {
            Event::StreamStart | Event::StreamEnd => Ok(()),
            Event::DocumentStart(..) => {
                self.anchors.clear();
                self.positions = Positions::default();
                self.root = None;
                Ok(())
            }
            Event::DocumentEnd => {
                let value = self.root.take().unwrap_or(Value::Null);
                self.docs.push(SourceDoc {
                    value,
                    positions: std::mem::take(&mut self.positions),
                });
                Ok(())
            }
            Event::Alias(id) => {
                let value = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| SyntaxError::at(pos, "alias to an unknown anchor"))?;
                let nodes = count_nodes(&value, self.alias_budget + 1);
                if nodes > self.alias_budget {
                    return Err(SyntaxError::at(
                        pos,
                        format!(
                            "YAML aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?)"
                        ),
                    ));
                }
                self.alias_budget -= nodes;
                let (pointer, is_key) = self.slot();
                if !is_key {
                    self.positions.value(&pointer, pos);
                }
                self.add(value, pos, 0)
            }
            Event::Scalar(text, style, anchor, tag) => {
                let (pointer, is_key) = self.slot();
                if !is_key {
                    self.positions.value(&pointer, pos);
                }
                let force_string = tag.as_ref().is_some_and(|t| t.suffix() == "str");
                let value = if style == ScalarStyle::Plain && !force_string {
                    resolve_plain(&text)
                } else {
                    Value::String(text.into_owned())
                };
                self.add(value, pos, anchor)
            }
            Event::SequenceStart(_, anchor, _) => {
                let (pointer, is_key) = self.slot();
                if is_key {
                    return Err(SyntaxError::at(
                        pos,
                        "a mapping key must be a scalar, not a collection",
                    ));
                }
                self.positions.value(&pointer, pos);
                self.open(
                    Frame::Seq {
                        items: Vec::new(),
                        pointer,
                    },
                    pos,
                    anchor,
                )
            }
            Event::MappingStart(_, anchor, _) => {
                let (pointer, is_key) = self.slot();
                if is_key {
                    return Err(SyntaxError::at(
                        pos,
                        "a mapping key must be a scalar, not a collection",
                    ));
                }
                self.positions.value(&pointer, pos);
                self.open(
                    Frame::Map {
                        map: Map::new(),
                        pointer,
                        key: None,
                    },
                    pos,
                    anchor,
                )
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(pos),
            _ => Ok(()),
        }
    }
}

fn count_nodes(value: &Value, cap: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        count += 1;
        if count >= cap {
            return count;
        }
        match v {
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    count
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return Value::String(text.to_owned()),
        _ => {}
    }
    let bytes = text.as_bytes();
    let numeric_start = bytes
        .first()
        .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.'));
    if !numeric_start {
        return Value::String(text.to_owned());
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Number(i.into());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Number(i.into());
    }
    let is_int = {
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if is_int {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Ok(u) = text.parse::<u64>() {
            return Value::Number(u.into());
        }
    }
    let is_float = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if is_float
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

fn yaml_events(text: &str) -> Result<Vec<SourceDoc>, SyntaxError> {
    let mut options = Options::default();
    options.emit_comments = false;
    options.flow_nesting_limit = MAX_DEPTH;
    options.block_nesting_limit = MAX_DEPTH;
    let mut builder = YamlBuilder::new();
    for item in Parser::new_from_str_with_options(text, options) {
        match item {
            Ok((event, span)) => builder.event(event, span)?,
            Err(e) => {
                let m = e.marker();
                let pos = Pos {
                    line: m.line(),
                    col: m.col() + 1,
                };
                if e.info().contains("tab") {
                    return Err(SyntaxError::at(
                        tab_near(text, pos).unwrap_or(pos),
                        "a tab in YAML indentation: indent with spaces",
                    ));
                }
                return Err(SyntaxError::at(pos, e.info()));
            }
        }
    }
    Ok(builder.docs)
}

/// The position of the tab nearest `pos`: the parser reports a tab where the token it was reading
/// ends or where the next one starts, not where the tab is. Searched on `pos`'s line up to it, then
/// forward, then backward.
fn tab_near(text: &str, pos: Pos) -> Option<Pos> {
    let lines: Vec<Vec<char>> = text.split('\n').map(|l| l.chars().collect()).collect();
    let at = pos.line.checked_sub(1)?.min(lines.len().checked_sub(1)?);
    let col = pos.col.saturating_sub(1);
    let found = |line: usize, col: usize| {
        Some(Pos {
            line: line + 1,
            col: col + 1,
        })
    };
    let here = &lines[at];
    if let Some(c) = here[..col.min(here.len())].iter().rposition(|c| *c == '\t') {
        return found(at, c);
    }
    if let Some(c) = here.iter().skip(col).position(|c| *c == '\t') {
        return found(at, col + c);
    }
    for (index, line) in lines.iter().enumerate().skip(at + 1) {
        if let Some(c) = line.iter().position(|c| *c == '\t') {
            return found(index, c);
        }
    }
    for index in (0..at).rev() {
        if let Some(c) = lines[index].iter().rposition(|c| *c == '\t') {
            return found(index, c);
        }
    }
    None
}

fn parse_yaml(text: &str) -> Result<Vec<SourceDoc>, SyntaxError> {
    let docs = yaml_events(text)?;
    // A file of only comments or `---` markers holds no manifest.
    Ok(docs
        .into_iter()
        .filter(|d| !d.value.is_null())
        .collect::<Vec<_>>())
}

// ---------------------------------------------------------------------------------------------
// JSON

fn parse_json(text: &str) -> Result<Vec<SourceDoc>, SyntaxError> {
    // serde_json is the judge of JSON syntax (strict, with precise error positions); the YAML event
    // walk over the same text only supplies node positions.
    let mut de = serde_json::Deserializer::from_str(text);
    let value: Value = serde::Deserialize::deserialize(&mut de).map_err(|e| {
        SyntaxError::at(
            Pos {
                line: e.line().max(1),
                col: e.column().max(1),
            },
            json_message(&e),
        )
    })?;
    de.end().map_err(|e| {
        SyntaxError::at(
            Pos {
                line: e.line(),
                col: e.column(),
            },
            json_message(&e),
        )
    })?;
    // serde_json keeps the last of duplicate keys silently; a manifest must not.
    let positions = match yaml_events(text) {
        Ok(mut docs) if docs.len() == 1 => docs.remove(0).positions,
        Err(e) if e.message.starts_with("duplicate key") => return Err(e),
        _ => Positions::default(),
    };
    Ok(vec![SourceDoc { value, positions }])
}

fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json appends " at line L column C", which the diagnostic prefix already says.
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

// ---------------------------------------------------------------------------------------------
// TOML

fn parse_toml(text: &str) -> Result<SourceDoc, SyntaxError> {
    use toml::de::{DeTable, DeValue};

    let table = DeTable::parse(text).map_err(|e| SyntaxError {
        pos: e.span().map(|s| byte_pos(text, s.start)),
        message: e.message().trim().to_owned(),
    })?;
    let mut positions = Positions::default();

    fn convert(
        text: &str,
        value: &DeValue<'_>,
        span: std::ops::Range<usize>,
        pointer: &str,
        depth: usize,
        positions: &mut Positions,
    ) -> Result<Value, SyntaxError> {
        let pos = byte_pos(text, span.start);
        positions.value(pointer, pos);
        if depth > MAX_DEPTH {
            return Err(SyntaxError::at(
                pos,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(match value {
            DeValue::String(s) => Value::String(s.to_string()),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map(Value::from)
                .map_err(|_| SyntaxError::at(pos, format!("integer {i} out of range")))?,
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.as_str().to_owned())),
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::String(d.to_string()),
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let child = push_pointer(pointer, &i.to_string());
                    out.push(convert(
                        text,
                        item.get_ref(),
                        item.span(),
                        &child,
                        depth + 1,
                        positions,
                    )?);
                }
                Value::Array(out)
            }
            DeValue::Table(table) => {
                let mut map = Map::new();
                for (key, item) in table {
                    let child = push_pointer(pointer, key.get_ref());
                    positions.key(&child, byte_pos(text, key.span().start));
                    let v = convert(
                        text,
                        item.get_ref(),
                        item.span(),
                        &child,
                        depth + 1,
                        positions,
                    )?;
                    map.insert(key.get_ref().to_string(), v);
                }
                Value::Object(map)
            }
        })
    }

    let root = DeValue::Table(table.get_ref().clone());
    let value = convert(text, &root, 0..0, "", 0, &mut positions)?;
    Ok(SourceDoc { value, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str, format: Format) -> SourceDoc {
        let mut docs = parse(text, format).unwrap();
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn yaml_positions_point_at_nodes_and_keys() {
        let doc = one("a: 1\nb:\n  - x\n  - {c: true}\n", Format::Yaml);
        assert_eq!(doc.value["b"][1]["c"], Value::Bool(true));
        assert_eq!(doc.positions.of_value("/a"), Pos { line: 1, col: 4 });
        assert_eq!(doc.positions.of_key("/a"), Pos { line: 1, col: 1 });
        assert_eq!(doc.positions.of_value("/b/0"), Pos { line: 3, col: 5 });
        assert_eq!(doc.positions.of_key("/b/1/c"), Pos { line: 4, col: 6 });
        assert_eq!(
            doc.positions.of_value("/b/1/c/missing"),
            Pos { line: 4, col: 9 }
        );
    }

    #[test]
    fn yaml_scalars_follow_the_core_schema() {
        let doc = one(
            "a: 1\nb: '1'\nc: 1.5\nd: yes\ne: ~\nf: 0x10\ng: !!str 5\n",
            Format::Yaml,
        );
        assert_eq!(doc.value["a"], Value::from(1));
        assert_eq!(doc.value["b"], Value::from("1"));
        assert_eq!(doc.value["c"], Value::from(1.5));
        assert_eq!(doc.value["d"], Value::from("yes"));
        assert_eq!(doc.value["e"], Value::Null);
        assert_eq!(doc.value["f"], Value::from(16));
        assert_eq!(doc.value["g"], Value::from("5"));
    }

    #[test]
    fn a_tab_in_indentation_is_pointed_at() {
        for (text, at) in [
            ("a:\n  - id: x\n\tb: y\n", Pos { line: 3, col: 1 }),
            ("a:\n  - id: x\n  \t  b: y\n", Pos { line: 3, col: 3 }),
            ("a:\n\tb: y\n", Pos { line: 2, col: 1 }),
            ("a:\n  b:\n\t- y\n", Pos { line: 3, col: 1 }),
        ] {
            let e = parse(text, Format::Yaml).unwrap_err();
            assert_eq!(e.pos, Some(at), "{text:?}: {e:?}");
            assert!(e.message.contains("indent with spaces"), "{e:?}");
        }
    }

    #[test]
    fn yaml_multi_documents() {
        let docs = parse("a: 1\n---\nb: 2\n---\n", Format::Yaml).unwrap();
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = parse("a: 1\na: 2\n", Format::Yaml).unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, col: 1 }));
        let e = parse("{\"a\": 1,\n \"a\": 2}", Format::Json).unwrap_err();
        assert!(e.message.contains("duplicate"), "{e:?}");
        assert!(parse("a = 1\na = 2\n", Format::Toml).is_err());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let e = parse(&text, Format::Yaml).unwrap_err();
        assert!(e.message.contains("alias"), "{e:?}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(parse(&deep, Format::Yaml).is_err());
        assert!(parse(&deep, Format::Json).is_err());
        let toml = format!("a = {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&toml, Format::Toml).is_err());
    }

    #[test]
    fn json_positions() {
        let doc = one("{\n  \"a\": [1,\n    {\"b\": 2}]\n}", Format::Json);
        assert_eq!(doc.positions.of_value("/a/1/b"), Pos { line: 3, col: 11 });
        let e = parse("{\"a\": }", Format::Json).unwrap_err();
        assert_eq!(e.pos.map(|p| p.line), Some(1));
    }

    #[test]
    fn toml_positions() {
        let doc = one(
            "[metadata]\nname = \"x\"\n\n[[spec.jobs]]\nid = \"a\"\ncommand = \"true\"\n",
            Format::Toml,
        );
        assert_eq!(doc.value["spec"]["jobs"][0]["id"], Value::from("a"));
        assert_eq!(
            doc.positions.of_value("/spec/jobs/0/command"),
            Pos { line: 6, col: 11 }
        );
        assert_eq!(
            doc.positions.of_key("/metadata/name"),
            Pos { line: 2, col: 1 }
        );
    }

    #[test]
    fn decode_refuses_binary_and_bad_utf8() {
        assert!(decode(b"a: 1\0").is_err());
        let e = decode(b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, col: 4 }));
        assert_eq!(decode("\u{feff}a: 1".as_bytes()).unwrap(), "a: 1");
    }
}
