//! Compatibility with real fairseq 0.12.2, against `tests/fixtures/fairseq` (made by its
//! `make_fixture.sh` with `fairseq-preprocess` and fairseq's own readers):
//!
//! - we read fairseq's dictionaries and every item of its datasets exactly as fairseq's
//!   `Dictionary.load` / `MMapIndexedDataset` do (`expected.json`);
//! - our preprocess, with the same flags on the same text, writes byte-identical
//!   dictionaries, `.bin` and `.idx` files and the same summary lines in `preprocess.log`;
//! - our builder writes byte-identical files for every dtype fairseq picks (uint16, uint32,
//!   int64), and loading + saving a fairseq `dict.txt` reproduces it byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::indexed::{data_file_path, index_file_path};
use super::preprocess::{PreprocessArgs, run};
use super::{DType, Dictionary, IndexedDataset, IndexedDatasetBuilder};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fairseq")
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Value::Object(m) => m,
        other => panic!("expected.json: not an object: {other}"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| u32::try_from(x.as_u64().unwrap()).unwrap()).collect()
}

fn dtype_name(d: DType) -> String {
    d.to_string()
}

#[test]
fn reads_fairseq_dictionaries_and_datasets_like_fairseq() {
    let exp = expected();
    let (mut dicts, mut datasets) = (0, 0);
    for (key, val) in &exp {
        let path = fixture().join(key);
        if let Some(symbols) = val.get("symbols") {
            let d = Dictionary::load(&path).unwrap();
            let want: Vec<&str> =
                symbols.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
            assert_eq!(d.symbols(), want.as_slice(), "{key}");
            for (i, s) in want.iter().enumerate() {
                assert_eq!(d.index(s), i as u32, "{key}: {s}");
            }
            dicts += 1;
        } else {
            let ds = IndexedDataset::open(&path).unwrap();
            assert_eq!(dtype_name(ds.dtype()), val["dtype"].as_str().unwrap(), "{key}");
            let sizes = ids(&val["sizes"]);
            assert_eq!(ds.sizes(), sizes.as_slice(), "{key}");
            let items = val["items"].as_array().unwrap();
            assert_eq!(ds.len(), items.len(), "{key}");
            for (i, item) in items.iter().enumerate() {
                assert_eq!(ds.get(i).unwrap(), ids(item), "{key}[{i}]");
            }
            datasets += 1;
        }
    }
    assert_eq!((dicts, datasets), (4, 14));
}

#[test]
fn dictionary_round_trips_byte_for_byte() {
    for dir in ["separate", "joined"] {
        for lang in ["en", "de"] {
            let path = fixture().join(format!("{dir}/dict.{lang}.txt"));
            let d = Dictionary::load(&path).unwrap();
            assert_eq!(d.to_text(), std::fs::read_to_string(&path).unwrap(), "{}", path.display());
        }
    }
}

#[test]
fn builder_rewrites_fairseq_datasets_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for key in expected().keys().filter(|k| !k.ends_with(".txt")) {
        let src = fixture().join(key);
        let ds = IndexedDataset::open(&src).unwrap();
        let out = tmp.path().join(key.replace('/', "_"));
        let mut b = IndexedDatasetBuilder::create(&out, ds.dtype()).unwrap();
        for item in ds.iter() {
            b.add_item(&item.unwrap()).unwrap();
        }
        b.finalize().unwrap();
        for (a, b) in [
            (data_file_path(&src), data_file_path(&out)),
            (index_file_path(&src), index_file_path(&out)),
        ] {
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{}", a.display());
        }
    }
    // fairseq's make_builder(vocab_size=...) picked these types.
    assert_eq!(DType::best_fitting(70000), DType::U32);
    assert_eq!(DType::best_fitting(5_000_000_000), DType::I64);
}

/// Runs our preprocess with the flags of `make_fixture.sh` and compares with fairseq's output.
fn compare_preprocess(dest: &str, tweak: impl Fn(&mut PreprocessArgs), workers: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let raw = fixture().join("raw");
    let raw_s = raw.to_string_lossy().into_owned();
    let mut args = PreprocessArgs {
        source_lang: Some("en".into()),
        target_lang: Some("de".into()),
        trainpref: Some(format!("{raw_s}/train")),
        validpref: Some(format!("{raw_s}/valid")),
        testpref: Some(format!("{raw_s}/test")),
        destdir: tmp.path().join(dest),
        workers,
        ..Default::default()
    };
    tweak(&mut args);
    run(&args).unwrap();
    let theirs = fixture().join(dest);
    let mut compared = 0;
    for entry in std::fs::read_dir(&theirs).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let ours = std::fs::read(args.destdir.join(&name)).unwrap();
        let want = std::fs::read(theirs.join(&name)).unwrap();
        if name == "preprocess.log" {
            // Line 1 is each tool's own dump of its arguments; the rest must match once the
            // paths are made alike.
            let ours = String::from_utf8(ours)
                .unwrap()
                .replace(&format!("{raw_s}/"), "raw/")
                .replace(&args.destdir.to_string_lossy().into_owned(), dest);
            let want = String::from_utf8(want).unwrap();
            let ours: Vec<&str> = ours.lines().skip(1).collect();
            let want: Vec<&str> = want.lines().skip(1).collect();
            assert_eq!(ours, want, "{dest}/preprocess.log");
        } else {
            assert!(ours == want, "{dest}/{name} differs from fairseq's");
        }
        compared += 1;
    }
    assert_eq!(compared, 15);
}

#[test]
fn preprocess_matches_fairseq_separate_dictionaries() {
    for workers in [1, 2, 4] {
        compare_preprocess("separate", |a| a.nwordstgt = 30, workers);
    }
}

#[test]
fn preprocess_matches_fairseq_joined_dictionary() {
    for workers in [1, 3] {
        compare_preprocess(
            "joined",
            |a| {
                a.joined_dictionary = true;
                a.thresholdsrc = 2;
            },
            workers,
        );
    }
}
