//! The text field of each JSONL line, read the way datasetprep's Python reader reads it
//! (`readers._split_lines` + `json.loads`), without making Python objects.
//!
//! Lines end at `\n`, `\r\n` or a bare `\r` (universal newlines); a final empty line is dropped.
//! Each line must be a strict RFC 8259 JSON object (serde_json) whose field `key` (the last one
//! when the key repeats, as in `json.loads`) is a string.  Anything else — a line `json.loads`
//! reads differently or rejects (NaN, a lone surrogate escape, a list of sentences, a missing
//! field, an empty line, a byte-order mark, invalid UTF-8 anywhere, nesting deeper than 128)
//! — returns `None` for the
//! whole batch, and the caller takes the Python path, which gives the same records or the same
//! error message as before.  serde_json accepts no line that `json.loads` rejects.

use serde::de::{self, Deserialize, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The lines of `data` (universal newlines).
pub fn split_lines(data: &str) -> Vec<&str> {
    let (text, data) = (data, data.as_bytes());
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\n' => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                out.push(&text[start..i]);
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < data.len() {
        out.push(&text[start..]);
    }
    out
}

/// Any JSON value, skipped.  Unlike serde's `IgnoredAny` it nests through `deserialize_any`, so
/// serde_json's recursion limit (128) applies: `json.loads` fails on deep nesting (around 1000
/// levels) and such lines must go to the Python reader.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor).map(|_| Skip)
    }
}

/// The value of the wanted field: a string, or anything else (consumed).
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(None)
    }
}

/// A JSON object line: the value of `key` (`None` inside when it is not a string or absent).
struct LineVisitor<'k> {
    key: &'k str,
}

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = Option<Option<Cow<'de, str>>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            if k == self.key {
                found = Some(map.next_value_seed(FieldSeed)?);
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(found)
    }
}

struct LineSeed<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = Option<Option<Cow<'de, str>>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(LineVisitor { key: self.key })
    }
}

/// The string value of `key` in one line, or None when the Python path must read this line.
pub fn text_of<'a>(line: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let mut de = serde_json::Deserializer::from_str(line);
    let v = LineSeed { key }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    v.flatten()
}

/// The texts of all lines of `data`, or None when any line needs the Python path.
pub fn texts<'a>(data: &'a [u8], key: &str) -> Option<Vec<Cow<'a, str>>> {
    // json.loads rejects invalid UTF-8 anywhere in a line: checked once for the whole batch
    // (serde_json then reads the lines as `str`, without checking again).
    let data = std::str::from_utf8(data).ok()?;
    split_lines(data).into_iter().map(|line| text_of(line, key)).collect()
}
