//! The server soak in small: a few seconds of mixed load (valid, malformed, oversized, slow and
//! disconnecting clients) against the real `seqforge serve` binary on 127.0.0.1; the bench
//! fails on a wrong answer, a missing 4xx/413, an idle connection left open, or growing RSS.

use std::process::Command;

use anyhow::{Result, ensure};

#[test]
fn serve_survives_a_short_mixed_soak() -> Result<()> {
    // The server binary is another package's: make sure it is built (a no-op under
    // `cargo nextest run --workspace`, which built it already).
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "seqforge-runtime", "--bin", "seqforge"])
        .status()?;
    ensure!(status.success(), "building seqforge failed ({status})");
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_serve_soak"));
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("soak.json");
    let out = Command::new(bench)
        .args(["--seconds", "8", "--idle-timeout-ms", "1000", "--sample-seconds", "0.5"])
        .args(["--valid-clients", "2", "--json"])
        .arg(&json)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "the soak failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    ensure!(line["passed"] == true, "{line}");
    for kind in ["valid", "malformed", "oversized", "slow", "disconnecting"] {
        ensure!(line[kind]["ok"].as_u64().unwrap_or(0) > 0, "{kind}: nothing checked: {line}");
    }
    Ok(())
}
