//! Replays every seed (`fuzz/corpus/<target>/`) and every input that once failed
//! (`fuzz/regressions/<target>/`) through its target, under the same allocation caps idea as
//! the AFL harness: a panic fails the test, a refused allocation aborts it naming the size.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use seqforge_fuzz::CappedAlloc;

/// A single allocation above 128 MiB is a loader sizing memory from a length field (the
/// inputs are a few KB); the live cap only guards the machine (tests run in parallel).
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(128 << 20, 8 << 30);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The files of `dir`, sorted (none when it does not exist).
fn inputs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Runs each file through `target`; answers how many its loaders accepted.
fn replay(target: &seqforge_fuzz::Target, files: &[PathBuf]) -> Result<usize> {
    let mut accepted = 0;
    for file in files {
        let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let ok =
            target.run(&data).with_context(|| format!("{}: {}", target.name, file.display()))?;
        eprintln!("{}: {} ({} bytes): accepted {ok}", target.name, file.display(), data.len());
        accepted += usize::from(ok);
    }
    Ok(accepted)
}

/// Seeds are real, valid files: each target's loaders accept at least one (else the fuzzer
/// would start from inputs that stop at the first check).
#[test]
fn every_target_has_seeds_its_loaders_accept() -> Result<()> {
    for target in seqforge_fuzz::targets() {
        let seeds = inputs(&fuzz_dir().join("corpus").join(target.name))?;
        let accepted = replay(target, &seeds)?;
        ensure!(
            accepted > 0,
            "no seed of fuzz/corpus/{} loads ({} seeds)",
            target.name,
            seeds.len()
        );
    }
    Ok(())
}

#[test]
fn regressions_replay() -> Result<()> {
    let dir = fuzz_dir().join("regressions");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = seqforge_fuzz::target(&name)
            .with_context(|| format!("fuzz/regressions/{name} is not a target's folder"))?;
        replay(target, &inputs(&entry.path())?)?;
    }
    Ok(())
}
