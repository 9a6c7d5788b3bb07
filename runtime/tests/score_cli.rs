//! Runs the built `seqforge score` binary: on a case of the sacreBLEU golden file (from a file
//! and from standard input), and on bad input (missing file, invalid UTF-8, line-count
//! mismatch), which must fail with a clear message and a non-zero exit status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/score/testdata")
}

fn seqforge(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqforge"))
        .args(args)
        .current_dir(testdata())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning seqforge: {e}"));
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default()).unwrap_or_else(|e| panic!("stdin: {e}"));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("waiting for seqforge: {e}"))
}

/// The expected stdout of the golden record whose header is exactly `header`.
fn golden(header: &str) -> String {
    let path = testdata().join("cli_golden.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let marker = format!("=== {header}\n");
    let start =
        text.find(&marker).unwrap_or_else(|| panic!("no golden record {header:?}")) + marker.len();
    let rest = &text[start..];
    rest[..rest.find("\n=== ").map_or(rest.len(), |k| k + 1)].to_owned()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "seqforge failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "seqforge succeeded on bad input: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_references_two_metrics_match_sacrebleu() {
    let header = "-i wmt17.LIUM-NMT.de --ref wmt17.ref.de --ref wmt17.ref2.de --metrics bleu,chrf";
    let args: Vec<&str> = std::iter::once("score").chain(header.split(' ')).collect();
    let expected = golden(header);
    assert!(
        expected.contains("BLEU|nrefs:2|") && expected.contains("chrF2|nrefs:2|"),
        "{expected}"
    );
    assert_eq!(stdout(&seqforge(&args, None)), expected);

    let json = format!("{header} --json");
    let args: Vec<&str> = std::iter::once("score").chain(json.split(' ')).collect();
    assert_eq!(stdout(&seqforge(&args, None)), golden(&json));
}

#[test]
fn standard_input_gives_the_same_scores() {
    let header = "-i wmt17.online-A.de --ref wmt17.ref.de --metrics bleu --tokenize intl --smooth-method exp";
    let hyp = std::fs::read(testdata().join("wmt17.online-A.de")).unwrap_or_default();
    let out = seqforge(&["score", "--ref", "wmt17.ref.de", "--tokenize", "intl"], Some(&hyp));
    assert_eq!(stdout(&out), golden(header));
}

#[test]
fn missing_file_fails_naming_it() {
    let err = failure(&seqforge(&["score", "--ref", "no-such-file.txt", "-i", "zh.hyp"], None));
    assert!(err.contains("no-such-file.txt") && err.contains("No such file"), "{err}");
}

#[test]
fn invalid_utf8_fails_with_the_line_number() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let bad = dir.join("score_cli_invalid_utf8.txt");
    std::fs::write(&bad, b"ok\nalso ok\nbad \xc3\x28 byte\n").unwrap_or_else(|e| panic!("{e}"));
    let bad = bad.display().to_string();
    let err = failure(&seqforge(&["score", "--ref", "zero.ref", "-i", &bad], None));
    assert!(err.contains(&bad) && err.contains("line 3 is not valid UTF-8"), "{err}");
}

#[test]
fn line_count_mismatch_fails_naming_both_streams() {
    let err = failure(&seqforge(
        &["score", "--ref", "zh.ref", "--ref", "edge.ref", "-i", "zh.hyp"],
        None,
    ));
    assert!(err.contains("zh.hyp has 10 lines but edge.ref has 23"), "{err}");
    let err = failure(&seqforge(&["score", "--ref", "zero.ref"], Some(b"one line\n")));
    assert!(err.contains("stdin has 1 line but zero.ref has 3"), "{err}");
}

#[test]
fn unknown_tokenizer_is_rejected_with_the_known_ones() {
    let err = failure(&seqforge(
        &["score", "--ref", "zero.ref", "-i", "zero.hyp", "--tokenize", "13b"],
        None,
    ));
    assert!(err.contains("13b") && err.contains("13a, intl, none, zh, char"), "{err}");
}
