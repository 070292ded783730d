//! Checks a configuration reference written in Markdown (`docs/CONFIG.md`) against the code that reads the file, so
//! the two cannot drift: every key the parser accepts has a row, every row names a key the parser accepts, the
//! examples parse with the real parser, the complete example sets every key (a later one those excluding a key it
//! sets), and each documented default is the parser's own (feature `testkit`; the hub's and the agent's config
//! tests call [`check`]).
//!
//! A file's section starts at the heading ``## `FILE` `` and runs to the next `## ` heading. Its table rows read
//! ``| `section.key` | `default` | meaning |``; a default that is not one TOML literal in backticks (`required`,
//! `none`) is not checked. Its ```` ```toml ```` blocks are examples, the first one complete.

use serde::de::value::Error;
use serde::de::{DeserializeOwned, DeserializeSeed, Error as _, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// The dotted keys (`limits.max_model_bytes`) a configuration type accepts, found by walking its `Deserialize`
/// implementation: every struct field is a key, a struct-valued field a section. Maps and enums are not walked.
///
/// # Errors
/// The type asks for something the walk cannot give it (an enum, a fixed-length tuple).
pub fn keys<T: DeserializeOwned>() -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    T::deserialize(Walker { key: String::new(), out: &mut out })?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// One row of a file's reference table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The dotted key.
    pub key: String,
    /// The documented default as a TOML literal, if the row gives one.
    pub default: Option<String>,
}

/// What the reference says about one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reference {
    /// The table's rows, in order.
    pub rows: Vec<Row>,
    /// The TOML examples, in order; the first is the complete one.
    pub examples: Vec<String>,
}

/// The section of `doc` about `file` (heading ``## `FILE` ``); empty if there is none.
pub fn section(doc: &str, file: &str) -> Reference {
    let heading = format!("## `{file}`");
    let mut reference = Reference::default();
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != heading).skip(1);
    let mut example: Option<String> = None;
    for line in lines.by_ref() {
        match &mut example {
            Some(text) if line.starts_with("```") => {
                reference.examples.push(std::mem::take(text));
                example = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None if line.starts_with("## ") => break,
            None if line.starts_with("```toml") => example = Some(String::new()),
            None if line.starts_with("| `") => {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let literal = |cell: &str| {
                    cell.strip_prefix('`')
                        .and_then(|c| c.strip_suffix('`'))
                        .filter(|c| !c.contains('`'))
                        .map(str::to_owned)
                };
                if let Some(key) = cells.get(1).and_then(|c| literal(c)) {
                    reference.rows.push(Row { key, default: cells.get(2).and_then(|c| literal(c)) });
                }
            }
            None => {}
        }
    }
    reference
}

/// What is wrong between the reference for `file` in `doc` and the code: `keys` are the keys the parser accepts
/// ([`keys`]), `parse` the real parser, answering a text's parsed value (its `Debug` form, to compare) or the error.
/// Empty when they agree.
pub fn check(doc: &str, file: &str, keys: &[String], parse: impl Fn(&str) -> Result<String, String>) -> Vec<String> {
    let reference = section(doc, file);
    let mut problems = Vec::new();
    let documented: Vec<&str> = reference.rows.iter().map(|r| r.key.as_str()).collect();
    for key in keys.iter().filter(|k| !documented.contains(&k.as_str())) {
        problems.push(format!("{file}: `{key}` is read by the code but has no row in the reference"));
    }
    for key in documented.iter().filter(|k| !keys.iter().any(|c| c == *k)) {
        problems.push(format!("{file}: `{key}` has a row in the reference but the code does not read it"));
    }
    for (i, text) in reference.examples.iter().enumerate() {
        if let Err(e) = parse(text) {
            problems.push(format!("{file}: example {} does not parse: {e}", i + 1));
        }
    }
    let Some(complete) = reference.examples.first().and_then(|t| t.parse::<toml::Table>().ok()) else {
        problems.push(format!("{file}: no complete example (a ```toml block) in the reference"));
        return problems;
    };
    let mut set = Vec::new();
    leaves(&complete, "", &mut set);
    // A key the complete example cannot set, because it excludes one set there (`hub.address` and
    // `hub.addresses`), is set by a later example instead.
    let mut later = Vec::new();
    for table in reference.examples.iter().skip(1).filter_map(|t| t.parse::<toml::Table>().ok()) {
        leaves(&table, "", &mut later);
    }
    for key in keys.iter().filter(|k| !set.contains(k) && !later.contains(k)) {
        problems.push(format!("{file}: the complete example does not set `{key}`"));
    }
    for row in &reference.rows {
        let Some(default) = &row.default else { continue };
        let value = match format!("v = {default}").parse::<toml::Table>() {
            Ok(mut t) => t.remove("v"),
            Err(e) => {
                problems.push(format!("{file}: `{}`: default `{default}` is not a TOML value: {e}", row.key));
                continue;
            }
        };
        let (mut given, mut left_out) = (complete.clone(), complete.clone());
        put(&mut given, &row.key, value);
        put(&mut left_out, &row.key, None);
        let (given, left_out) = (parse(&given.to_string()), parse(&left_out.to_string()));
        if given.is_err() || given != left_out {
            problems.push(format!("{file}: `{}`: the documented default `{default}` is not the code's", row.key));
        }
    }
    problems
}

/// The dotted keys of `table`'s values that are not tables themselves.
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match value {
            toml::Value::Table(t) => leaves(t, &key, out),
            _ => out.push(key),
        }
    }
}

/// Sets the dotted `key` in `table` to `value`, or removes it when `value` is `None`.
fn put(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    let (sections, name) = key.rsplit_once('.').map_or((None, key), |(s, n)| (Some(s), n));
    let mut table = table;
    for section in sections.into_iter().flat_map(|s| s.split('.')) {
        let entry = table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(inner) = entry else { return };
        table = inner;
    }
    match value {
        Some(v) => table.insert(name.to_owned(), v),
        None => table.remove(name),
    };
}

/// A `Deserializer` that produces a placeholder for every field and writes down the dotted path of each leaf.
struct Walker<'a> {
    key: String,
    out: &'a mut Vec<String>,
}

impl Walker<'_> {
    fn leaf(self) {
        if !self.key.is_empty() {
            self.out.push(self.key);
        }
    }
}

macro_rules! leaves {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.$visit($($value)?)
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for Walker<'_> {
    type Error = Error;

    leaves! {
        deserialize_any => visit_unit(),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(1),
        deserialize_i16 => visit_i64(1),
        deserialize_i32 => visit_i64(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u64(1),
        deserialize_u16 => visit_u64(1),
        deserialize_u32 => visit_u64(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f64(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str("x"),
        deserialize_string => visit_str("x"),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str("x"),
        deserialize_ignored_any => visit_unit(),
        deserialize_seq => visit_seq(Empty),
        deserialize_map => visit_map(Empty),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Fields { prefix: self.key, fields, next: 0, out: self.out })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Error> {
        Err(Error::custom(format_args!("`{}`: enum {name} is not walked", self.key)))
    }
}

/// A struct's fields, each given once.
struct Fields<'a> {
    prefix: String,
    fields: &'static [&'static str],
    next: usize,
    out: &'a mut Vec<String>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.fields.get(self.next) {
            Some(field) => seed.deserialize(IntoDeserializer::<Error>::into_deserializer(*field)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let field = self.fields.get(self.next).ok_or_else(|| Error::custom("value without a key"))?;
        self.next += 1;
        let key = if self.prefix.is_empty() { (*field).to_owned() } else { format!("{}.{field}", self.prefix) };
        seed.deserialize(Walker { key, out: &mut *self.out })
    }
}

/// An empty sequence or map.
struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, _: T) -> Result<Option<T::Value>, Error> {
        Ok(None)
    }
}

impl<'de> MapAccess<'de> for Empty {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _: K) -> Result<Option<K::Value>, Error> {
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _: V) -> Result<V::Value, Error> {
        Err(Error::custom("value without a key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through `Debug`, as `check` compares parsed configurations
    struct Raw {
        name: String,
        #[serde(default)]
        limits: Limits,
        #[serde(default)]
        extra: Option<Extra>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)] // read through `Debug`
    struct Limits {
        max_bytes: u64,
        paths: Vec<String>,
    }

    impl Default for Limits {
        fn default() -> Self {
            Limits { max_bytes: 10, paths: Vec::new() }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through `Debug`
    struct Extra {
        on: bool,
    }

    fn parse(text: &str) -> Result<String, String> {
        toml::from_str::<Raw>(text).map(|r| format!("{r:?}")).map_err(|e| e.to_string())
    }

    const DOC: &str = "# Config\n\n## `x.toml`\n\n| key | default | meaning |\n|---|---|---|\n\
        | `name` | required | a name |\n| `limits.max_bytes` | `10` | bytes |\n| `limits.paths` | `[]` | paths |\n\
        | `extra.on` | none | on |\n\n```toml\nname = \"a\"\n[limits]\nmax_bytes = 3\npaths = [\"p\"]\n\
        [extra]\non = true\n```\n\n## `other.toml`\n\n| `stray` | `1` | not ours |\n";

    #[test]
    fn keys_are_the_leaves_of_the_type_and_its_optional_sections() {
        assert_eq!(keys::<Raw>().unwrap(), ["extra.on", "limits.max_bytes", "limits.paths", "name"]);
    }

    #[test]
    fn a_reference_that_matches_the_code_has_no_problems() {
        let r = section(DOC, "x.toml");
        assert_eq!(r.rows.len(), 4, "{r:?}");
        assert_eq!(r.rows[1], Row { key: "limits.max_bytes".into(), default: Some("10".into()) });
        assert_eq!(r.examples.len(), 1);
        assert_eq!(check(DOC, "x.toml", &keys::<Raw>().unwrap(), parse), Vec::<String>::new());
    }

    #[test]
    fn drift_either_way_and_a_wrong_default_are_named() {
        let keys = keys::<Raw>().unwrap();
        let undocumented = DOC.replace("| `limits.paths` | `[]` | paths |\n", "");
        let problems = check(&undocumented, "x.toml", &keys, parse);
        assert_eq!(problems, ["x.toml: `limits.paths` is read by the code but has no row in the reference"]);
        let stale = DOC.replace("paths = [\"p\"]\n", "paths = [\"p\"]\nold = 1\n");
        let problems = check(&stale, "x.toml", &keys, parse);
        // The stale key is named; the defaults cannot be judged on an example that does not parse either.
        assert!(problems[0].starts_with("x.toml: example 1 does not parse") && problems[0].contains("`old`"));
        assert!(problems[1..].iter().all(|p| p.contains("is not the code's")), "{problems:?}");
        let wrong = DOC.replace("| `10` |", "| `11` |");
        let problems = check(&wrong, "x.toml", &keys, parse);
        assert_eq!(problems, ["x.toml: `limits.max_bytes`: the documented default `11` is not the code's"]);
        let problems = check(DOC, "missing.toml", &keys, parse);
        assert!(problems.iter().any(|p| p.contains("no complete example")), "{problems:?}");
    }
}
