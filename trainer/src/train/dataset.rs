//! Reading a preprocessed data folder as fairseq's translation task does: the language pair
//! (given, or inferred from the file names), the dictionaries and the split datasets.

use std::collections::BTreeSet;
use std::path::Path;

use super::{Error, Result};
use crate::batching::{CollateConfig, LanguagePairDataset};
use crate::data::{Dictionary, IndexedDataset};

/// A pair of binarized datasets, source and target.
pub type PairDataset = LanguagePairDataset<IndexedDataset, IndexedDataset>;

/// The source and target languages of a data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguagePair {
    /// Source language (file suffix).
    pub src: String,
    /// Target language.
    pub tgt: String,
}

/// The language pairs named by `{split}.{a}-{b}.{lang}.idx` files in `dir`.
fn pairs_in(dir: &Path) -> Result<BTreeSet<(String, String)>> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    let mut pairs = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('.').collect();
        if let [_, pair, _, "idx"] = parts.as_slice()
            && let Some((a, b)) = pair.split_once('-')
            && !a.is_empty()
            && !b.is_empty()
            && !b.contains('-')
        {
            pairs.insert((a.to_string(), b.to_string()));
        }
    }
    Ok(pairs)
}

/// The source and target languages: those given, or, when one or both are missing, the only
/// pair named by the dataset files in `dir` (fairseq's `infer_language_pair`, which takes the
/// first file it lists; here more than one candidate is an error naming them).
pub fn infer_language_pair(
    dir: &Path,
    src: Option<&str>,
    tgt: Option<&str>,
) -> Result<LanguagePair> {
    if let (Some(s), Some(t)) = (src, tgt) {
        return Ok(LanguagePair { src: s.to_string(), tgt: t.to_string() });
    }
    let candidates: Vec<(String, String)> = pairs_in(dir)?
        .into_iter()
        .filter(|(a, b)| src.is_none_or(|s| s == a) && tgt.is_none_or(|t| t == b))
        .collect();
    match candidates.as_slice() {
        [(a, b)] => Ok(LanguagePair { src: a.clone(), tgt: b.clone() }),
        [] => Err(Error::Data {
            path: dir.to_path_buf(),
            message: "no {split}.{src}-{tgt}.{lang}.idx files to infer the language pair from; \
                      give --source-lang and --target-lang"
                .into(),
        }),
        many => Err(Error::Data {
            path: dir.to_path_buf(),
            message: format!(
                "several language pairs ({}); give --source-lang and --target-lang",
                many.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// `dict.{lang}.txt` in `dir`.
pub(crate) fn load_dictionary(dir: &Path, lang: &str) -> Result<Dictionary> {
    Ok(Dictionary::load(dir.join(format!("dict.{lang}.txt")))?)
}

/// Opens `{split}.{src}-{tgt}.{lang}` (or the reverse direction's files, as fairseq does)
/// as a source/target pair dataset with fairseq's default collation.
pub fn load_split(dir: &Path, split: &str, pair: &LanguagePair) -> Result<PairDataset> {
    let (s, t) = (&pair.src, &pair.tgt);
    let exists = |stem: &str| dir.join(format!("{stem}.idx")).is_file();
    let direction = [format!("{split}.{s}-{t}"), format!("{split}.{t}-{s}")]
        .into_iter()
        .find(|base| exists(&format!("{base}.{s}")) && exists(&format!("{base}.{t}")))
        .ok_or_else(|| Error::Data {
            path: dir.to_path_buf(),
            message: format!("no {split}.{s}-{t}.{{{s},{t}}}.idx datasets (nor {t}-{s})"),
        })?;
    let src = IndexedDataset::open(dir.join(format!("{direction}.{s}")))?;
    let tgt = IndexedDataset::open(dir.join(format!("{direction}.{t}")))?;
    Ok(LanguagePairDataset::new(src, Some(tgt), CollateConfig::default())?)
}
