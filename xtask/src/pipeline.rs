//! Steps shared by `cargo xtask demo` and `cargo xtask bench-train`: release binaries, the
//! Bible corpus → BPE → binarized data, each step resumable through a stamp file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The release binaries of the toolchain.
pub struct Bins {
    /// `seqforge-train`.
    pub train: PathBuf,
    /// `seqforge-export`.
    pub export: PathBuf,
    /// `seqforge` (generate / interactive / score).
    pub seqforge: PathBuf,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Builds `seqforge-train`, `seqforge-export` and `seqforge` in release mode.
pub fn build_bins(root: &Path) -> Result<Bins> {
    let t0 = Instant::now();
    println!("build: release binaries (seqforge-train, seqforge-export, seqforge)…");
    run(
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "--release", "--quiet"])
            .args(["-p", "seqforge-trainer", "--bin", "seqforge-train"])
            .args(["-p", "seqforge-exporter", "--bin", "seqforge-export"])
            .args(["-p", "seqforge-runtime", "--bin", "seqforge"]),
        "cargo build --release",
    )?;
    println!("build: done in {:.0}s", t0.elapsed().as_secs_f64());
    let dir = root.join("target/release");
    Ok(Bins {
        train: dir.join("seqforge-train"),
        export: dir.join("seqforge-export"),
        seqforge: dir.join("seqforge"),
    })
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming `what`.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// A resumable step: runs `body` unless `work/stamps/{name}.done` exists, then writes the stamp.
pub fn step(work: &Path, name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    let stamps = work.join("stamps");
    std::fs::create_dir_all(&stamps).with_context(|| format!("creating {}", stamps.display()))?;
    let stamp = stamps.join(format!("{name}.done"));
    if stamp.exists() {
        println!("{name}: done earlier ({} exists)", stamp.display());
        return Ok(());
    }
    let t0 = Instant::now();
    body().with_context(|| format!("step `{name}`"))?;
    let secs = t0.elapsed().as_secs_f64();
    std::fs::write(&stamp, format!("{secs:.1}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    println!("{name}: done in {secs:.1}s");
    Ok(())
}

/// Seconds a finished step took (from its stamp), if it ran.
pub fn step_seconds(work: &Path, name: &str) -> Option<f64> {
    std::fs::read_to_string(work.join("stamps").join(format!("{name}.done")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Removes `path` if it exists (a partial output of an interrupted step).
pub fn clean(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// How a demo's data is made: `seqforge-train corpus {corpus}` into `work/{corpus}`, a byte-level
/// BPE learned on some of its files, and `preprocess` into `work/{corpus}-bin`.
pub struct CorpusRecipe<'a> {
    /// The `corpus` subcommand (`bible`, `english`).
    pub corpus: &'a str,
    /// Files of the corpus folder the BPE learns on.
    pub bpe_inputs: &'a [&'a str],
    /// BPE vocabulary size.
    pub vocab_size: u32,
    /// `preprocess` flags besides the split prefixes, tokenizer and destination.
    pub preprocess: &'a [&'a str],
    /// The train, valid and test prefixes inside the corpus folder.
    pub splits: [&'a str; 3],
}

/// The Bible corpus (es → en), a joint 8k byte-level BPE and the binarized data.
pub const BIBLE: CorpusRecipe<'static> = CorpusRecipe {
    corpus: "bible",
    bpe_inputs: &["train.es", "train.en"],
    vocab_size: 8000,
    preprocess: &["--source-lang", "es", "--target-lang", "en", "--joined-dictionary"],
    splits: ["train", "valid", "test"],
};

/// Makes the corpus, its BPE and binarized data as `recipe` says (each a resumable step):
/// returns `(text_dir, bin_dir)` under `work`.
pub fn prepare_corpus(
    root: &Path,
    work: &Path,
    bins: &Bins,
    recipe: &CorpusRecipe<'_>,
) -> Result<(PathBuf, PathBuf)> {
    let text = work.join(recipe.corpus);
    let bin = work.join(format!("{}-bin", recipe.corpus));
    step(work, "corpus", || {
        clean(&text)?;
        run(
            Command::new(&bins.train)
                .args(["corpus", recipe.corpus, "--out"])
                .arg(&text)
                .arg("--cache-dir")
                .arg(root.join(".deps/sword")),
            &format!("seqforge-train corpus {}", recipe.corpus),
        )
    })?;
    step(work, "bpe", || {
        run(
            Command::new(&bins.train)
                .args(["learn-bpe", "--input"])
                .args(recipe.bpe_inputs.iter().map(|f| text.join(f)))
                .args(["--vocab-size", &recipe.vocab_size.to_string(), "--out"])
                .arg(text.join("tokenizer.json")),
            "seqforge-train learn-bpe",
        )
    })?;
    step(work, "preprocess", || {
        clean(&bin)?;
        let p = |s: &str| text.join(s).display().to_string();
        let [train, valid, test] = recipe.splits;
        run(
            Command::new(&bins.train)
                .arg("preprocess")
                .args(recipe.preprocess)
                .args(["--workers", "2"])
                .args(["--trainpref", &p(train), "--validpref", &p(valid)])
                .args(["--testpref", &p(test), "--tokenizer", &p("tokenizer.json")])
                .arg("--destdir")
                .arg(&bin),
            "seqforge-train preprocess",
        )
    })?;
    Ok((text, bin))
}

/// [`prepare_corpus`] with [`BIBLE`].
pub fn prepare_bible(root: &Path, work: &Path, bins: &Bins) -> Result<(PathBuf, PathBuf)> {
    prepare_corpus(root, work, bins, &BIBLE)
}

/// Installs `packages` with pip into `.deps/{folder}` for a bench's Python side (once: a stamp
/// in `.deps/stamps/{folder}` records the package list; a different list reinstalls).
pub fn pip_install_once(
    root: &Path,
    python: &str,
    folder: &str,
    packages: &[&str],
) -> Result<PathBuf> {
    let target = root.join(".deps").join(folder);
    let stamp = root.join(".deps/stamps").join(folder);
    let wanted = packages.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) && target.is_dir() {
        return Ok(target);
    }
    println!("installing {wanted} for Python into {}…", target.display());
    run(
        Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(&target)
            .args(packages),
        &format!("pip install {wanted}"),
    )?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(target)
}

/// Builds the release bench binary `name` of `seqforge-benches` and returns its path.
pub fn build_bench(root: &Path, name: &str) -> Result<PathBuf> {
    run(
        Command::new(cargo()).current_dir(root).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "seqforge-benches",
            "--bin",
            name,
        ]),
        &format!("cargo build {name}"),
    )?;
    Ok(root.join("target/release").join(name))
}
