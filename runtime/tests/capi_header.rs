//! `include/seqforge.h` is what cbindgen generates from `src/capi/` with
//! `include/cbindgen.toml`: the committed header never drifts from the Rust definitions.
//! Regenerate it with `SEQFORGE_BLESS=1 cargo test -p seqforge-runtime --test capi_header`.

use std::path::Path;

use anyhow::{Context, Result, ensure};

#[test]
fn committed_header_matches_cbindgen_output() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("include/cbindgen.toml"))
        .map_err(anyhow::Error::msg)?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi/mod.rs"))
        .generate()
        .context("cbindgen could not parse src/capi/")?;
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated)?;
    for symbol in [
        "seqforge_version",
        "seqforge_last_error",
        "seqforge_options_default",
        "seqforge_translator_create",
        "seqforge_translator_free",
        "seqforge_translate",
        "seqforge_translator_task",
        "seqforge_complete",
        "seqforge_result_translations",
        "seqforge_result_free",
        "typedef struct SeqforgeTranslator SeqforgeTranslator;",
        "SEQFORGE_STATUS_INVALID_HANDLE = 3,",
        "SEQFORGE_STATUS_WRONG_TASK = 10,",
        "SEQFORGE_TASK_LANGUAGE_MODELING = 1,",
    ] {
        ensure!(generated.contains(symbol), "generated header lacks {symbol:?}:\n{generated}");
    }
    let header = root.join("include/seqforge.h");
    if std::env::var_os("SEQFORGE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&header, &generated)?;
        return Ok(());
    }
    let committed = std::fs::read_to_string(&header).unwrap_or_default();
    ensure!(
        committed == generated,
        "{} is not what cbindgen generates from src/capi/ (or is missing); regenerate it with\n  \
         SEQFORGE_BLESS=1 cargo test -p seqforge-runtime --test capi_header\nand commit it. \
         Generated:\n{generated}",
        header.display()
    );
    Ok(())
}
