//! Parse a HF `tokenizer.json` into an [`Engine`], rejecting every configuration whose ids we
//! cannot reproduce exactly.  Every `Err(reason)` becomes `ValueError("unsupported: <reason>")`.

use crate::bpe::{BpeModel, ByteInit};
use crate::engine::{AddedMatcher, Engine, Normalizer, Stage, TemplatePiece};
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};
use std::collections::HashMap;

type R<T> = Result<T, String>;

/// GPT-2 pre-tokenization pattern used by `ByteLevel { use_regex: true }`.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

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

fn parse_split(o: &Map<String, Value>) -> R<Stage> {
    let behavior = o.get("behavior").and_then(|v| v.as_str()).unwrap_or("");
    if behavior != "Isolated" {
        return Err(format!("Split behavior {behavior:?} (only Isolated)"));
    }
    if get_bool(o, "invert", false)? {
        return Err("Split invert=true".into());
    }
    let pat = as_obj(o.get("pattern").unwrap_or(&Value::Null), "Split.pattern")?;
    if let Some(r) = pat.get("Regex").and_then(|v| v.as_str()) {
        let re = onig::Regex::new(r).map_err(|e| format!("Split regex does not compile: {e}"))?;
        Ok(Stage::Regex(re, crate::chunk::ChunkRule::for_pattern(r)))
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

fn parse_pre_tokenizer(v: &Value) -> R<PreTok> {
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
            "Split" => splits.push(parse_split(it)?),
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

fn parse_merges(v: &Value) -> R<Vec<(String, String)>> {
    let arr = v.as_array().ok_or("model.merges is not a list")?;
    let mut out = Vec::with_capacity(arr.len());
    // Tuple form [["a","b"], ...] or legacy ["a b", ...] (HF decides per whole list).
    if arr.iter().all(|x| x.is_array()) {
        for m in arr {
            let m = m.as_array().unwrap();
            match (m.first().and_then(|v| v.as_str()), m.get(1).and_then(|v| v.as_str())) {
                (Some(a), Some(b)) if m.len() == 2 => out.push((a.to_owned(), b.to_owned())),
                _ => return Err("malformed merge pair".into()),
            }
        }
    } else if arr.iter().all(|x| x.is_string()) {
        for m in arr {
            let line = m.as_str().unwrap();
            if line.starts_with("#version") {
                continue;
            }
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.len() != 2 {
                return Err(format!("bad legacy merge line {line:?}"));
            }
            out.push((parts[0].to_owned(), parts[1].to_owned()));
        }
    } else {
        return Err("model.merges mixes formats".into());
    }
    Ok(out)
}

pub struct Options {
    pub add_special_tokens: bool,
    pub cache_size: usize,
    pub chunking: bool,
}

pub fn build_engine(json: &str, opts: Options) -> R<Engine> {
    let root: Value = serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let root = as_obj(&root, "tokenizer.json")?;
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
    let model = as_obj(root.get("model").ok_or("no model")?, "model")?;
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
    let vocab_obj = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or("model.vocab is not an object")?;
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(vocab_obj.len());
    for (k, v) in vocab_obj {
        let id = v
            .as_u64()
            .filter(|&n| n <= u32::MAX as u64)
            .ok_or_else(|| format!("vocab id of {k:?} is not a u32"))?;
        vocab.insert(k.clone(), id as u32);
    }
    let merges_list = parse_merges(model.get("merges").ok_or("model.merges missing")?)?;

    let bc = bytes_char();
    let mut char_byte: HashMap<char, u8> = HashMap::new();
    for (b, c) in bc.iter().enumerate() {
        char_byte.insert(*c, b as u8);
    }
    let to_bytes = |s: &str| -> Option<Vec<u8>> {
        s.chars().map(|c| char_byte.get(&c).copied()).collect()
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

    let mut merges: FxHashMap<u64, (u32, u32)> = FxHashMap::default();
    merges.reserve(merges_list.len());
    for (rank, (a, b)) in merges_list.iter().enumerate() {
        let a_id = *vocab
            .get(a)
            .ok_or_else(|| format!("merge token {a:?} not in vocab"))?;
        let b_id = *vocab
            .get(b)
            .ok_or_else(|| format!("merge token {b:?} not in vocab"))?;
        let ab = format!("{a}{b}");
        let new_id = *vocab
            .get(&ab)
            .ok_or_else(|| format!("merged token {ab:?} not in vocab"))?;
        merges.insert(((a_id as u64) << 32) | b_id as u64, (rank as u32, new_id));
    }

    let whole_word = if ignore_merges {
        let mut m: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        for (k, &id) in &vocab {
            if let Some(bytes) = to_bytes(k) {
                if !bytes.is_empty() {
                    m.insert(bytes.into_boxed_slice(), id);
                }
            }
        }
        Some(m)
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
    let pretok = parse_pre_tokenizer(root.get("pre_tokenizer").unwrap_or(&Value::Null))?;
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
        stages.push(Stage::Regex(
            onig::Regex::new(GPT2_PATTERN).map_err(|e| format!("gpt2 regex: {e}"))?,
            crate::chunk::ChunkRule::for_pattern(GPT2_PATTERN),
        ));
    }

    Ok(Engine::new(
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
        opts.chunking,
    ))
}
