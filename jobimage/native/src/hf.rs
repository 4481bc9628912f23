//! Parse a HF `tokenizer.json` into an [`Engine`], rejecting every configuration whose ids we
//! cannot reproduce exactly.  Every `Err(reason)` becomes `ValueError("unsupported: <reason>")`.

use crate::bpe::{BpeModel, ByteInit};
use crate::engine::{AddedMatcher, Engine, Normalizer, Stage, TemplatePiece};
use crate::pretok::{Splitter, GPT2_PATTERN};
use crate::table::{PairTable, TokenTable};
use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

type R<T> = Result<T, String>;


/// bytes_to_unicode: byte -> char of the GPT-2 byte-level alphabet.
pub fn bytes_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(256 + n).unwrap();
            n += 1;
            c
        };
    }
    table
}

fn get_bool(obj: &Map<String, Value>, k: &str, default: bool) -> R<bool> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("field {k} is not a bool: {v}")),
    }
}

fn type_of(obj: &Map<String, Value>) -> &str {
    obj.get("type").and_then(|v| v.as_str()).unwrap_or("")
}

fn as_obj<'a>(v: &'a Value, what: &str) -> R<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| format!("{what} is not an object"))
}

struct PreTok {
    splits: Vec<Stage>,
    add_prefix_space: bool,
    use_regex: bool,
}

/// A pattern stage: the hand-written splitter for a known pattern (unless `fast_split` is off),
/// else the onig regex compiled like HF's `SysRegex`.
fn pattern_stage(pattern: &str, fast_split: bool) -> R<Stage> {
    match Splitter::recognise(pattern) {
        Some(sp) if fast_split => Ok(Stage::Split(sp)),
        _ => Ok(Stage::Regex(
            onig::Regex::new(pattern).map_err(|e| format!("Split regex does not compile: {e}"))?,
        )),
    }
}

fn parse_split(o: &Map<String, Value>, fast_split: bool) -> R<Stage> {
    let behavior = o.get("behavior").and_then(|v| v.as_str()).unwrap_or("");
    if behavior != "Isolated" {
        return Err(format!("Split behavior {behavior:?} (only Isolated)"));
    }
    if get_bool(o, "invert", false)? {
        return Err("Split invert=true".into());
    }
    let pat = as_obj(o.get("pattern").unwrap_or(&Value::Null), "Split.pattern")?;
    if let Some(r) = pat.get("Regex").and_then(|v| v.as_str()) {
        pattern_stage(r, fast_split)
    } else if let Some(s) = pat.get("String").and_then(|v| v.as_str()) {
        if s.is_empty() {
            return Err("Split with empty String pattern".into());
        }
        Ok(Stage::Literal(s.to_owned()))
    } else {
        Err("Split.pattern is neither Regex nor String".into())
    }
}

fn parse_byte_level(o: &Map<String, Value>) -> R<(bool, bool)> {
    Ok((get_bool(o, "add_prefix_space", true)?, get_bool(o, "use_regex", true)?))
}

fn parse_pre_tokenizer(v: &Value, fast_split: bool) -> R<PreTok> {
    let o = match v {
        Value::Null => return Err("pre_tokenizer null (not byte-level)".into()),
        v => as_obj(v, "pre_tokenizer")?,
    };
    let items: Vec<&Map<String, Value>> = match type_of(o) {
        "ByteLevel" => vec![o],
        "Sequence" => {
            let list = o
                .get("pretokenizers")
                .and_then(|v| v.as_array())
                .ok_or("pre_tokenizer Sequence without pretokenizers")?;
            list.iter()
                .map(|x| as_obj(x, "pre_tokenizer item"))
                .collect::<R<Vec<_>>>()?
        }
        t => return Err(format!("pre_tokenizer type {t:?}")),
    };
    let mut splits = Vec::new();
    let mut bl: Option<(bool, bool)> = None;
    for it in items {
        if bl.is_some() {
            return Err("pre_tokenizer after ByteLevel in Sequence".into());
        }
        match type_of(it) {
            "Split" => splits.push(parse_split(it, fast_split)?),
            "ByteLevel" => bl = Some(parse_byte_level(it)?),
            t => return Err(format!("pre_tokenizer type {t:?} in Sequence")),
        }
    }
    let (add_prefix_space, use_regex) = bl.ok_or("pre_tokenizer has no ByteLevel step")?;
    Ok(PreTok {
        splits,
        add_prefix_space,
        use_regex,
    })
}

fn parse_normalizer(v: &Value) -> R<Normalizer> {
    match v {
        Value::Null => Ok(Normalizer::None),
        v => {
            let o = as_obj(v, "normalizer")?;
            match type_of(o) {
                "NFC" => Ok(Normalizer::Nfc),
                "Sequence" => {
                    let list = o
                        .get("normalizers")
                        .and_then(|v| v.as_array())
                        .ok_or("normalizer Sequence without normalizers")?;
                    let mut out = Normalizer::None;
                    for item in list {
                        match parse_normalizer(item)? {
                            Normalizer::None => {}
                            // NFC is idempotent: any number of NFC steps == one NFC step.
                            Normalizer::Nfc => out = Normalizer::Nfc,
                        }
                    }
                    Ok(out)
                }
                t => Err(format!("normalizer type {t:?}")),
            }
        }
    }
}

/// Returns the single-sequence template (None = no post-processor effect on ids).
fn parse_post_processor(v: &Value) -> R<Option<Vec<TemplatePiece>>> {
    let o = match v {
        Value::Null => return Ok(None),
        v => as_obj(v, "post_processor")?,
    };
    let items: Vec<&Map<String, Value>> = match type_of(o) {
        "Sequence" => o
            .get("processors")
            .and_then(|v| v.as_array())
            .ok_or("post_processor Sequence without processors")?
            .iter()
            .map(|x| as_obj(x, "post_processor item"))
            .collect::<R<Vec<_>>>()?,
        _ => vec![o],
    };
    let mut template: Option<Vec<TemplatePiece>> = None;
    for it in items {
        match type_of(it) {
            // ByteLevel post-processing only trims offsets.
            "ByteLevel" => {}
            "TemplateProcessing" => {
                if template.is_some() {
                    return Err("more than one TemplateProcessing".into());
                }
                template = Some(parse_template(it)?);
            }
            t => return Err(format!("post_processor type {t:?}")),
        }
    }
    Ok(template)
}

fn parse_template(o: &Map<String, Value>) -> R<Vec<TemplatePiece>> {
    let specials = o
        .get("special_tokens")
        .and_then(|v| v.as_object())
        .ok_or("TemplateProcessing without special_tokens")?;
    let single = o
        .get("single")
        .and_then(|v| v.as_array())
        .ok_or("TemplateProcessing without single template")?;
    let mut pieces = Vec::new();
    for p in single {
        let p = as_obj(p, "template piece")?;
        if let Some(seq) = p.get("Sequence") {
            let id = seq.get("id").and_then(|v| v.as_str()).unwrap_or("");
            if id != "A" {
                return Err(format!("single template uses sequence {id:?}"));
            }
            pieces.push(TemplatePiece::Sequence);
        } else if let Some(sp) = p.get("SpecialToken") {
            let name = sp
                .get("id")
                .and_then(|v| v.as_str())
                .ok_or("template SpecialToken without id")?;
            let tok = specials
                .get(name)
                .and_then(|v| v.as_object())
                .ok_or_else(|| format!("template special token {name:?} not in special_tokens"))?;
            let ids = tok
                .get("ids")
                .and_then(|v| v.as_array())
                .ok_or("template special token without ids")?
                .iter()
                .map(|x| {
                    x.as_u64()
                        .filter(|&n| n <= u32::MAX as u64)
                        .map(|n| n as u32)
                        .ok_or_else(|| "template special token id is not a u32".to_string())
                })
                .collect::<R<Vec<u32>>>()?;
            pieces.push(TemplatePiece::Special(ids));
        } else {
            return Err("unknown template piece".into());
        }
    }
    Ok(pieces)
}

/// A JSON string, borrowed from the file's text unless it holds escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// One entry of `model.merges`: `["a", "b"]` or the legacy `"a b"`.  Read by hand rather than
/// as an untagged enum, which buffers every entry before trying each form (a 128k vocabulary
/// has some 260k merges: the buffering was a fifth of the load time).
enum MergeJson<'a> {
    Pair(Cow<'a, str>, Cow<'a, str>),
    Line(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for MergeJson<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MergeJson<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge: [\"a\", \"b\"] or \"a b\"")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MergeJson::Line(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MergeJson::Line(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MergeJson::Line(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let (Some(Text(a)), Some(Text(b))) = (seq.next_element()?, seq.next_element()?) else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(MergeJson::Pair(a, b))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn parse_merges(arr: Vec<MergeJson<'_>>) -> R<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    let mut out = Vec::with_capacity(arr.len());
    // Tuple form [["a","b"], ...] or legacy ["a b", ...] (HF decides per whole list).
    let pairs = arr.iter().all(|m| matches!(m, MergeJson::Pair(..)));
    if !pairs && !arr.iter().all(|m| matches!(m, MergeJson::Line(..))) {
        return Err("model.merges mixes formats".into());
    }
    for m in arr {
        match m {
            MergeJson::Pair(a, b) => out.push((a, b)),
            MergeJson::Line(line) => {
                if line.starts_with("#version") {
                    continue;
                }
                let parts: Vec<&str> = line.split(' ').collect();
                if parts.len() != 2 {
                    return Err(format!("bad legacy merge line {line:?}"));
                }
                out.push((Cow::Owned(parts[0].to_owned()), Cow::Owned(parts[1].to_owned())));
            }
        }
    }
    Ok(out)
}

/// The model: vocab and merges typed (they are most of the file; a generic JSON tree of them
/// would cost ~20x their size in memory), the rest as JSON values.
#[derive(Deserialize)]
struct ModelJson<'a> {
    vocab: FxHashMap<String, u32>,
    #[serde(borrow)]
    merges: Vec<MergeJson<'a>>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct RootJson<'a> {
    #[serde(borrow)]
    model: ModelJson<'a>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

pub struct Options {
    pub add_special_tokens: bool,
    pub cache_size: usize,
    /// Use the hand-written splitters for known patterns (off: onig for every pattern).
    pub fast_split: bool,
}

/// Token strings → ids: the model's vocab and the added tokens (HF `get_vocab(true)`).
pub struct Vocab {
    pub model_size: usize,
    pub ids: FxHashMap<String, u32>,
}

/// The engine and the vocab.
pub fn build_engine(json: &str, opts: Options) -> R<(Engine, Vocab)> {
    let RootJson {
        model: model_json,
        rest: root,
    } = serde_json::from_str(json).map_err(|e| format!("invalid tokenizer.json: {e}"))?;
    let root = &root;
    match root.get("version").and_then(|v| v.as_str()) {
        Some("1.0") => {}
        v => return Err(format!("tokenizer.json version {v:?}")),
    }
    for k in ["truncation", "padding"] {
        if !matches!(root.get(k), None | Some(Value::Null)) {
            return Err(format!("{k} is set"));
        }
    }

    // ---------------- model ----------------
    let ModelJson {
        vocab,
        merges: merges_json,
        rest: model,
    } = model_json;
    let model = &model;
    if type_of(model) != "BPE" {
        return Err(format!("model type {:?}", type_of(model)));
    }
    match model.get("dropout") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_f64() == Some(0.0) => {}
        Some(v) => return Err(format!("BPE dropout {v}")),
    }
    for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match model.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => return Err(format!("BPE {k} {v}")),
        }
    }
    let byte_fallback = get_bool(model, "byte_fallback", false)?;
    let fuse_unk = get_bool(model, "fuse_unk", false)?;
    let ignore_merges = get_bool(model, "ignore_merges", false)?;
    let unk_token: Option<String> = match model.get("unk_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => return Err(format!("unk_token {v}")),
    };
    let merges_list = parse_merges(merges_json)?;

    let bc = bytes_char();
    // byte-level character -> byte (the alphabet's characters are below U+0144)
    let mut char_byte = [None::<u8>; 0x144];
    for (b, c) in bc.iter().enumerate() {
        char_byte[*c as usize] = Some(b as u8);
    }
    let to_bytes = |s: &str| -> Option<Vec<u8>> {
        s.chars().map(|c| char_byte.get(c as usize).copied().flatten()).collect()
    };

    // Initial symbol per byte (BPE::merge_word).
    let mut byte_init = Vec::with_capacity(256);
    let mut any_missing = false;
    for ch in bc.iter() {
        let s = ch.to_string();
        if let Some(&id) = vocab.get(&s) {
            byte_init.push(ByteInit::Id(id));
            continue;
        }
        if byte_fallback {
            let fb: Option<Vec<u32>> = s
                .bytes()
                .map(|x| vocab.get(&format!("<{x:#04X}>")).copied())
                .collect();
            if let Some(fb) = fb {
                byte_init.push(ByteInit::Fallback(fb.into_boxed_slice()));
                continue;
            }
        }
        any_missing = true;
        byte_init.push(ByteInit::Missing);
    }
    let unk = match &unk_token {
        None => None,
        Some(u) => match vocab.get(u) {
            Some(&id) => Some((id, fuse_unk)),
            None if any_missing => {
                return Err(format!(
                    "unk_token {u:?} is not in the vocab (HF errors on unknown bytes)"
                ))
            }
            None => None,
        },
    };

    let mut merges: Vec<(u32, u32, u32, u32)> = Vec::with_capacity(merges_list.len());
    let mut ab = String::new();
    for (rank, (a, b)) in merges_list.iter().enumerate() {
        let (a, b) = (a.as_ref(), b.as_ref());
        let a_id = *vocab
            .get(a)
            .ok_or_else(|| format!("merge token {a:?} not in vocab"))?;
        let b_id = *vocab
            .get(b)
            .ok_or_else(|| format!("merge token {b:?} not in vocab"))?;
        ab.clear();
        ab.push_str(a);
        ab.push_str(b);
        let new_id = *vocab
            .get(ab.as_str())
            .ok_or_else(|| format!("merged token {ab:?} not in vocab"))?;
        merges.push((a_id, b_id, rank as u32, new_id));
    }
    let merges = PairTable::new(merges.into_iter())?;

    let whole_word = if ignore_merges {
        let words: Vec<(Vec<u8>, u32)> = vocab
            .iter()
            .filter_map(|(k, &id)| to_bytes(k).filter(|b| !b.is_empty()).map(|b| (b, id)))
            .collect();
        Some(TokenTable::new(words.into_iter()))
    } else {
        None
    };

    let bpe = BpeModel {
        byte_init,
        unk,
        merges,
        whole_word,
    };

    // ---------------- normalizer / pre-tokenizer / post-processor ----------------
    let normalizer = parse_normalizer(root.get("normalizer").unwrap_or(&Value::Null))?;
    let pretok = parse_pre_tokenizer(root.get("pre_tokenizer").unwrap_or(&Value::Null), opts.fast_split)?;
    let template = parse_post_processor(root.get("post_processor").unwrap_or(&Value::Null))?;

    // ---------------- added tokens (AddedVocabulary::add_tokens simulation) ----------------
    let added = root
        .get("added_tokens")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let vocab_size = vocab.len() as u32; // BPE::get_vocab_size
    let mut next_id = vocab_size;
    let mut added_map: HashMap<String, u32> = HashMap::new(); // content -> id
    // id -> (content, normalized, single_word, lstrip, rstrip, special)
    let mut added_map_r: HashMap<u32, (String, bool, [bool; 4])> = HashMap::new();
    for t in &added {
        let t = as_obj(t, "added token")?;
        let content = t
            .get("content")
            .and_then(|v| v.as_str())
            .ok_or("added token without content")?
            .to_owned();
        let special = get_bool(t, "special", false)?;
        let normalized = get_bool(t, "normalized", !special)?;
        let flags = [
            get_bool(t, "single_word", false)?,
            get_bool(t, "lstrip", false)?,
            get_bool(t, "rstrip", false)?,
            special,
        ];
        if content.is_empty() {
            continue;
        }
        if let Some(id) = added_map.get(&content) {
            if let Some((c, n, f)) = added_map_r.get(id) {
                if *c == content && *n == normalized && *f == flags {
                    continue;
                }
            }
        }
        let new_id = if let Some(&id) = added_map.get(&content) {
            id
        } else if let Some(&id) = vocab.get(&content) {
            id
        } else {
            let id = next_id;
            next_id += 1;
            id
        };
        added_map.insert(content.clone(), new_id);
        added_map_r.insert(new_id, (content, normalized, flags));
    }
    let mut plain: Vec<(String, u32)> = Vec::new();
    let mut normed: Vec<(String, u32)> = Vec::new();
    for (id, (content, normalized, flags)) in &added_map_r {
        if flags[0] || flags[1] || flags[2] {
            return Err(format!(
                "added token {content:?} has single_word/lstrip/rstrip set"
            ));
        }
        if *normalized {
            let pat = match normalizer {
                Normalizer::None => content.clone(),
                Normalizer::Nfc => crate::engine::nfc(content),
            };
            normed.push((pat, *id));
        } else {
            plain.push((content.clone(), *id));
        }
    }
    let mut patterns_seen: HashMap<&str, ()> = HashMap::new();
    for (p, _) in plain.iter() {
        if patterns_seen.insert(p.as_str(), ()).is_some() {
            return Err(format!("duplicate added token pattern {p:?}"));
        }
    }
    patterns_seen.clear();
    for (p, _) in normed.iter() {
        if patterns_seen.insert(p.as_str(), ()).is_some() {
            return Err(format!("duplicate normalized added token pattern {p:?}"));
        }
    }
    let plain_matcher = AddedMatcher::new(plain)?;
    let normed_matcher = AddedMatcher::new(normed)?;

    let mut stages = pretok.splits;
    let byte_level_index = stages.len();
    if pretok.use_regex {
        stages.push(pattern_stage(GPT2_PATTERN, opts.fast_split)?);
    }

    let engine = Engine::new(
        bpe,
        normalizer,
        plain_matcher,
        normed_matcher,
        stages,
        byte_level_index,
        pretok.add_prefix_space,
        template,
        opts.add_special_tokens,
        opts.cache_size,
    );
    let model_size = vocab.len();
    let mut ids = vocab;
    ids.extend(added_map);
    Ok((engine, Vocab { model_size, ids }))
}
