//! Byte-for-byte comparisons with the outputs of the real sacreBLEU 2.6.0 stored in
//! `testdata/` by `testdata/make_golden.sh`.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;

use super::bleu::{Bleu, BleuConfig, Smoothing};
use super::chrf::{Chrf, ChrfConfig};
use super::cli::{ScoreArgs, run};
use super::format::py_repr;
use super::{Error, Tokenizer};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/score/testdata")
}

fn read(name: &str) -> String {
    let path = testdata().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Test-only wrapper to parse [`ScoreArgs`] from a golden record's header.
#[derive(Debug, Parser)]
struct Cmd {
    #[command(flatten)]
    args: ScoreArgs,
}

/// `(header arguments, expected stdout)` of every record of `cli_golden.txt`.
fn cli_records() -> Vec<(Vec<String>, String)> {
    let text = read("cli_golden.txt");
    let mut records: Vec<(Vec<String>, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(header) = line.strip_prefix("=== ") {
            records.push((header.split_whitespace().map(str::to_owned).collect(), String::new()));
        } else if let Some(last) = records.last_mut() {
            last.1.push_str(line);
        } else {
            panic!("cli_golden.txt: output before the first header: {line:?}");
        }
    }
    records
}

fn parse_args(header: &[String]) -> ScoreArgs {
    let argv = std::iter::once("score".to_owned()).chain(header.iter().cloned());
    let mut args = Cmd::try_parse_from(argv).unwrap_or_else(|e| panic!("{header:?}: {e}")).args;
    args.input = args.input.map(|p| testdata().join(p));
    args.refs = args.refs.iter().map(|p| testdata().join(p)).collect();
    args
}

/// Runs one golden record through [`run`]; `Some(description)` when the output differs.
fn check_record(header: &[String], expected: &str) -> Option<String> {
    let args = parse_args(header);
    let mut out = Vec::new();
    if let Err(e) = run(&args, std::io::empty(), &mut out) {
        return Some(format!("{}\n  error: {e}", header.join(" ")));
    }
    let got = String::from_utf8_lossy(&out);
    (got != expected)
        .then(|| format!("{}\n  sacreBLEU: {expected:?}\n  seqforge:  {got:?}", header.join(" ")))
}

#[test]
fn cli_output_matches_sacrebleu_byte_for_byte() {
    let records = cli_records();
    assert!(records.len() > 900, "only {} records in cli_golden.txt", records.len());
    // The records are independent: check them on every core (a debug build is slow).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let records = &records;
                scope.spawn(move || {
                    records
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .filter_map(|(header, expected)| check_record(header, expected))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec!["a checking thread panicked".into()]))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} records differ:\n{}",
        failures.len(),
        records.len(),
        failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn lines(name: &str) -> Vec<String> {
    read(name).lines().map(|l| super::text::rstrip(l).to_owned()).collect()
}

fn bleu_config(cfg: &Value) -> BleuConfig {
    let method = cfg["smooth_method"].as_str().unwrap_or("exp");
    let smoothing = Smoothing::from_method(method, cfg["smooth_value"].as_f64())
        .unwrap_or_else(|e| panic!("{e}"));
    BleuConfig {
        tokenizer: cfg["tokenize"]
            .as_str()
            .map_or(Ok(Tokenizer::Mteval13a), str::parse)
            .unwrap_or_else(|e: Error| panic!("{e}")),
        lowercase: cfg["lowercase"].as_bool().unwrap_or(false),
        smoothing,
        effective_order: cfg["effective_order"].as_bool().unwrap_or(false),
        ..BleuConfig::default()
    }
}

fn chrf_config(cfg: &Value) -> ChrfConfig {
    ChrfConfig {
        word_order: cfg["word_order"].as_u64().unwrap_or(0) as usize,
        lowercase: cfg["lowercase"].as_bool().unwrap_or(false),
        whitespace: cfg["whitespace"].as_bool().unwrap_or(false),
        eps_smoothing: cfg["eps_smoothing"].as_bool().unwrap_or(false),
        ..ChrfConfig::default()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s}")).to_owned())
        .collect()
}

/// `(str(score), signature, repr(score.score))` for one API record.
fn api_result(rec: &Value) -> (String, String, String) {
    let sentence = rec["kind"] == "sentence";
    let (hyps, refs): (Vec<String>, Vec<Vec<String>>) = if sentence {
        let hyp = rec["hyp"].as_str().unwrap_or_else(|| panic!("no hyp: {rec}")).to_owned();
        (vec![hyp], strings(&rec["refs"]).into_iter().map(|r| vec![r]).collect())
    } else {
        let case = strings(&rec["case"]);
        (lines(&case[0]), case[1..].iter().map(|f| lines(f)).collect())
    };
    let flat_refs: Vec<String> = refs.iter().map(|r| r[0].clone()).collect();
    if rec["metric"] == "bleu" {
        let bleu = Bleu::new(bleu_config(&rec["config"])).unwrap_or_else(|e| panic!("{e}"));
        let s = if sentence {
            bleu.sentence_score(&hyps[0], &flat_refs)
        } else {
            bleu.corpus_score(&hyps, &refs)
        }
        .unwrap_or_else(|e| panic!("{e}"));
        (s.to_string(), s.signature(), py_repr(s.score))
    } else {
        let chrf = Chrf::new(chrf_config(&rec["config"])).unwrap_or_else(|e| panic!("{e}"));
        let s = if sentence {
            chrf.sentence_score(&hyps[0], &flat_refs)
        } else {
            chrf.corpus_score(&hyps, &refs)
        }
        .unwrap_or_else(|e| panic!("{e}"));
        (s.to_string(), s.signature(), py_repr(s.score))
    }
}

#[test]
fn api_scores_match_sacrebleu_to_the_last_bit() {
    let text = read("api_golden.jsonl");
    let mut failures = Vec::new();
    let mut count = 0;
    let mut sentences = 0;
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        count += 1;
        if rec["kind"] == "sentence" && rec["metric"] == "bleu" {
            sentences += 1;
        }
        let expected = (
            rec["str"].as_str().unwrap_or_default().to_owned(),
            rec["signature"].as_str().unwrap_or_default().to_owned(),
            rec["score"].as_str().unwrap_or_default().to_owned(),
        );
        let got = api_result(&rec);
        if got != expected {
            failures.push(format!("{line}\n  seqforge: {got:?}"));
        }
    }
    assert!(sentences >= 100, "only {sentences} sentence-BLEU records");
    assert!(failures.is_empty(), "{} of {count} differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn mismatched_files_are_named_with_their_counts() {
    let args =
        parse_args(&["-i", "zh.hyp", "--ref", "zh.ref", "--ref", "zero.ref"].map(str::to_owned));
    let err = run(&args, std::io::empty(), Vec::new())
        .map(|()| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(err.contains("zh.hyp has 10 lines but") && err.contains("zero.ref has 3"), "{err}");
}

#[test]
fn tokenizers_and_python_string_functions_match_on_random_unicode() {
    let text = read("tokenizer_golden.jsonl");
    let mut failures = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let s = rec["s"].as_str().unwrap_or_else(|| panic!("no string: {line}"));
        count += 1;
        let split: Vec<String> = super::text::split_whitespace(s).map(str::to_owned).collect();
        let checks = [
            ("13a", Tokenizer::Mteval13a.tokenize(s)),
            ("intl", Tokenizer::Intl.tokenize(s)),
            ("zh", Tokenizer::Zh.tokenize(s)),
            ("char", Tokenizer::Char.tokenize(s)),
            ("lower", super::text::lower(s)),
            ("rstrip", super::text::rstrip(s).to_owned()),
        ];
        for (what, got) in checks {
            if rec[what].as_str() != Some(got.as_str()) {
                failures.push(format!("{what}({s:?}): sacreBLEU {} seqforge {got:?}", rec[what]));
            }
        }
        if strings(&rec["split"]) != split {
            failures.push(format!("split({s:?}): Python {} seqforge {split:?}", rec["split"]));
        }
    }
    assert!(count >= 500, "only {count} strings");
    assert!(failures.is_empty(), "{} differences:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn sentence_level_takes_one_metric() {
    let args = parse_args(
        &["-i", "zh.hyp", "--ref", "zh.ref", "--metrics", "bleu,chrf", "--sentence-level"]
            .map(str::to_owned),
    );
    let err = run(&args, std::io::empty(), Vec::new())
        .map(|()| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(err.contains("one metric at a time (2 given)"), "{err}");
}
