//! The kill-and-resume soak in small: a few SIGKILLs (random and inside checkpoint saves), then
//! the resumed run must equal the uninterrupted one bit for bit (the bench fails otherwise).

use std::process::Command;

use anyhow::{Result, ensure};

#[test]
fn killed_runs_resume_bit_identical() -> Result<()> {
    let work = tempfile::tempdir()?;
    let json = work.path().join("soak.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kill_resume_soak"))
        .args(["--kills", "4", "--updates", "12", "--train-sentences", "120", "--work"])
        .arg(work.path().join("work"))
        .arg("--json")
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
    ensure!(line["kills"] == 4 && line["bit_identical"] == true, "{line}");
    ensure!(stdout.contains("bit-identical to the reference"), "{stdout}");
    Ok(())
}
