//! YAML text -> `serde_json::Value` plus a map from each node's path to its line, so that every
//! later problem (a serde error or a validation rule) can name the file line it comes from.
//! `${VAR}` and `${VAR:-default}` in string scalars are filled from the environment here.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

use super::problems::Problem;

/// Where each node of the document starts: path (as `serde_path_to_error` prints it) -> line.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> usize {
        let mut current = path;
        loop {
            if let Some(line) = self.lines.get(current) {
                return *line;
            }
            match current.rfind(['.', '[']) {
                Some(cut) => current = &current[..cut],
                None => return self.lines.get("").copied().unwrap_or(1),
            }
        }
    }
}

/// Joins a parent path and a child segment the way `serde_path_to_error` prints paths.
pub fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a parent path and a sequence index.
pub fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Parses YAML text; env interpolation problems and duplicate keys are pushed to `problems`.
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Result<(Value, LineIndex), Problem> {
    let mut builder = Builder {
        events: Parser::new_from_str(text),
        index: LineIndex::default(),
        anchors: HashMap::new(),
        env,
        problems,
    };
    let mut root = Value::Null;
    loop {
        let (event, span) = builder.next()?;
        match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            other => {
                builder.index.lines.insert(String::new(), span.start.line());
                root = builder.node(other, span, "")?;
            }
        }
    }
    Ok((root, builder.index))
}

struct Builder<'t, 'e> {
    events: Parser<'t, saphyr_parser::StrInput<'t>>,
    index: LineIndex,
    anchors: HashMap<usize, Value>,
    env: &'e dyn Fn(&str) -> Option<String>,
    problems: &'e mut Vec<Problem>,
}

impl<'t> Builder<'t, '_> {
    fn next(&mut self) -> Result<(Event<'t>, Span), Problem> {
        match self.events.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(error)) => Err(Problem::at(
                error.marker().line(),
                "",
                format!("invalid YAML: {}", error.info()),
            )),
            None => Err(Problem::at(0, "", "invalid YAML: unexpected end of input")),
        }
    }

    fn node(&mut self, event: Event<'t>, span: Span, path: &str) -> Result<Value, Problem> {
        self.index
            .lines
            .entry(path.to_owned())
            .or_insert(span.start.line());
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, _tag) => {
                (self.scalar(&text, style, path, span.start.line()), anchor)
            }
            Event::SequenceStart(anchor, _) => (self.sequence(path)?, anchor),
            Event::MappingStart(anchor, _) => (self.mapping(path)?, anchor),
            Event::Alias(anchor) => (self.anchors.get(&anchor).cloned().unwrap_or(Value::Null), 0),
            _ => {
                return Err(Problem::at(
                    span.start.line(),
                    path,
                    "invalid YAML: unexpected event",
                ));
            }
        };
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    fn sequence(&mut self, path: &str) -> Result<Value, Problem> {
        let mut items = Vec::new();
        loop {
            let (event, span) = self.next()?;
            if matches!(event, Event::SequenceEnd) {
                return Ok(Value::Array(items));
            }
            let item_path = index_path(path, items.len());
            items.push(self.node(event, span, &item_path)?);
        }
    }

    fn mapping(&mut self, path: &str) -> Result<Value, Problem> {
        let mut map = Map::new();
        loop {
            let (event, span) = self.next()?;
            let key = match event {
                Event::MappingEnd => return Ok(Value::Object(map)),
                Event::Scalar(text, ..) => text.into_owned(),
                _ => {
                    return Err(Problem::at(
                        span.start.line(),
                        path,
                        "mapping keys must be plain strings",
                    ));
                }
            };
            let key_path = join_path(path, &key);
            let line = span.start.line();
            if map.contains_key(&key) {
                self.problems.push(Problem::at(
                    line,
                    &key_path,
                    format!("duplicate key `{key}`"),
                ));
            }
            self.index.lines.insert(key_path.clone(), line);
            let (event, span) = self.next()?;
            let value = self.node(event, span, &key_path)?;
            map.insert(key, value);
        }
    }

    fn scalar(&mut self, text: &str, style: ScalarStyle, path: &str, line: usize) -> Value {
        if matches!(style, ScalarStyle::Plain)
            && let Some(value) = plain_scalar(text)
        {
            return value;
        }
        Value::String(self.interpolate(text, path, line))
    }

    fn interpolate(&mut self, text: &str, path: &str, line: usize) -> String {
        if !text.contains("${") {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.problems.push(Problem::at(
                    line,
                    path,
                    "unterminated `${` in value (write `${NAME}`)",
                ));
                out.push_str(&rest[start..]);
                return out;
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            match ((self.env)(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    // Keep the placeholder so later checks do not report the value as empty too.
                    out.push_str(&rest[start..start + end + 3]);
                    self.problems.push(Problem::at(
                        line,
                        path,
                        format!("environment variable `{name}` is not set"),
                    ));
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// YAML 1.2 core schema resolution of a plain scalar: null, booleans, integers and floats.
fn plain_scalar(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Ok(int) = text.parse::<i64>() {
        return Some(Value::Number(int.into()));
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Some(number) = text.parse::<f64>().ok().and_then(Number::from_f64) {
        return Some(Value::Number(number));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_owned())
    }

    #[test]
    fn values_and_lines() {
        let text = "a: 1\nb:\n  c: [x, 'y']\n  d: ${SET}\n  e: ${UNSET:-dflt}\nf: true\n";
        let mut problems = Vec::new();
        let (value, index) = parse(text, &env, &mut problems).unwrap();
        assert!(problems.is_empty());
        assert_eq!(value["a"], 1);
        assert_eq!(value["b"]["c"][1], "y");
        assert_eq!(value["b"]["d"], "value");
        assert_eq!(value["b"]["e"], "dflt");
        assert_eq!(value["f"], true);
        assert_eq!(index.line_of("b.c"), 3);
        assert_eq!(index.line_of("b.d"), 4);
        assert_eq!(index.line_of("b.d.missing"), 4);
        assert_eq!(index.line_of("f"), 6);
    }

    #[test]
    fn missing_env_and_duplicates_are_problems() {
        let text = "a: ${NOPE}\na: 2\n";
        let mut problems = Vec::new();
        parse(text, &env, &mut problems).unwrap();
        let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{messages:?}");
        assert!(messages[0].contains("NOPE") && messages[0].contains("line 1"));
        assert!(messages[1].contains("duplicate key") && messages[1].contains("line 2"));
    }

    #[test]
    fn syntax_error_names_line() {
        let mut problems = Vec::new();
        let error = parse("a: [1, 2\nb: 3\n", &env, &mut problems).unwrap_err();
        assert!(error.to_string().contains("invalid YAML"), "{error}");
    }
}
