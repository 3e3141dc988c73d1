//! A Transformers tokenizer saved without `tokenizer.json`: the slow tokenizer's `vocab.json`,
//! `merges.txt` and `added_tokens.json` (what `WhisperTokenizer.save_pretrained` writes), put in
//! `tokenizer.json`'s shape for [`Tokenizer::from_json`].
use std::path::Path;

use serde_json::{json, Map, Value};

use super::read_json;
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelError;

pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";
pub const ADDED_TOKENS_FILE: &str = "added_tokens.json";

/// Whether `dir` holds a slow tokenizer's files.
pub fn present(dir: &Path) -> bool {
    dir.join(VOCAB_FILE).is_file() && dir.join(MERGES_FILE).is_file()
}

/// Reads the slow tokenizer's files in `dir`; `n_vocab` as for [`Tokenizer::load`].
pub fn load(dir: &Path, n_vocab: usize) -> Result<Tokenizer, ModelError> {
    let vocab_path = dir.join(VOCAB_FILE);
    let vocab = read_json(&vocab_path)?.ok_or_else(|| ModelError::FileNotFound {
        path: vocab_path.clone(),
    })?;
    let vocab = vocab.as_object().ok_or_else(|| ModelError::Tokenizer {
        path: vocab_path.clone(),
        reason: "not a JSON object of token -> id".into(),
    })?;
    let merges_path = dir.join(MERGES_FILE);
    let merges_text =
        std::fs::read_to_string(&merges_path).map_err(|e| ModelError::io(&merges_path, e))?;
    // The first line is a "#version: ..." comment.
    let merges: Vec<Value> = merges_text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| json!(l))
        .collect();
    // Special tokens: added_tokens.json, and the `<|...|>` entries of the vocabulary itself
    // (English-only vocabularies keep `<|endoftext|>` there).
    let mut added: Map<String, Value> = vocab
        .iter()
        .filter(|(k, _)| k.starts_with("<|") && k.ends_with("|>"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(extra) = read_json(&dir.join(ADDED_TOKENS_FILE))? {
        if let Some(extra) = extra.as_object() {
            added.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let added_tokens: Vec<Value> = added
        .iter()
        .map(|(content, id)| json!({"id": id, "content": content, "special": true}))
        .collect();
    let doc = json!({
        "model": {"vocab": vocab, "merges": merges},
        "added_tokens": added_tokens,
    });
    Tokenizer::from_json(&doc, n_vocab).map_err(|reason| ModelError::Tokenizer {
        path: vocab_path,
        reason,
    })
}
