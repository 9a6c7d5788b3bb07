//! The C ABI from C: builds `libseqforge.so` (`cargo build -p seqforge-capi`, same target
//! directory and profile as this test), compiles `examples/c/translate.c` with the system C
//! compiler against `include/seqforge.h`, runs it on the test fixture's model and checks that
//! it prints what `seqforge generate` prints for the same lines (plain output, and n-best texts
//! and scores against the `D-` lines); on a tiny language model, checks that it continues
//! prompts as `TranslatorPool::complete` does (greedy and seeded sampling, the same twice) and
//! that each task's call on a model of the other task fails naming the model's task; then runs
//! it under valgrind, which must find no invalid reads or writes and no definite or indirect
//! leaks.
//!
//! The Rust-level tests of the C functions' error paths and of concurrent use are in
//! `capi/tests/ffi.rs` (the `seqforge-capi` crate, where the `capi` feature is always on).
#![cfg(feature = "onnx")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use common::fixture;
use seqforge_exporter::testing::TinyCausalLm;
use seqforge_runtime::onnx::RuntimeOptions;
use seqforge_runtime::pool::{PoolConfig, TranslatorPool, parse_options};

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo puts this build's artifacts: `CARGO_TARGET_DIR` when set, else three levels
/// above this test binary (`<target>/<profile>/deps/capi-<hash>`), and the profile's name.
fn target_dir() -> Result<(PathBuf, String)> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).context("test binary path")?;
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).context("profile")?.to_owned();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir.parent().context("target directory")?.to_path_buf(),
    };
    Ok((target, profile))
}

/// Builds libseqforge.so and libseqforge.a once per test process and compiles translate.c
/// against each: `(dynamically linked, statically linked)` executables.
fn translate_exes() -> Result<(PathBuf, PathBuf)> {
    static EXE: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    EXE.get_or_init(|| build_example().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_example() -> Result<(PathBuf, PathBuf)> {
    let (target, profile) = target_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace()).args(["build", "-p", "seqforge-capi", "--target-dir"]);
    build.arg(&target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let out = build.output().context("running cargo build -p seqforge-capi")?;
    ensure!(
        out.status.success(),
        "cargo build -p seqforge-capi failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib_dir = target.join(&profile);
    for lib in ["libseqforge.so", "libseqforge.a"] {
        ensure!(lib_dir.join(lib).is_file(), "no {lib} in {lib_dir:?}");
    }
    let shared = lib_dir.join("examples-c-translate");
    compile(
        &shared,
        &[
            format!("-L{}", lib_dir.display()),
            "-lseqforge".into(),
            format!("-Wl,-rpath,{}", lib_dir.display()),
        ],
    )?;
    let static_exe = lib_dir.join("examples-c-translate-static");
    let archive = lib_dir.join("libseqforge.a").display().to_string();
    compile(&static_exe, &[archive, "-lpthread".into(), "-ldl".into(), "-lm".into()])?;
    Ok((shared, static_exe))
}

/// Compiles examples/c/translate.c into `exe` with the system C compiler, warnings as errors.
/// The compiler writes a file of this process's own and it is renamed into place: the tests
/// run as parallel processes (nextest), and executing a file another process is still writing
/// fails with "Text file busy".
fn compile(exe: &Path, link: &[String]) -> Result<()> {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let mut partial = exe.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    let partial = PathBuf::from(partial);
    let out = Command::new(cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-o"])
        .arg(&partial)
        .arg(workspace().join("examples/c/translate.c"))
        .arg(format!("-I{}", workspace().join("runtime/include").display()))
        .args(link)
        .output()
        .context("running the C compiler (cc)")?;
    ensure!(
        out.status.success(),
        "compiling examples/c/translate.c into {exe:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, exe).with_context(|| format!("renaming {partial:?} to {exe:?}"))?;
    Ok(())
}

/// Runs `program args` with `stdin` on standard input.
fn run(program: &mut Command, stdin: &[u8]) -> Result<Output> {
    let mut child = program
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program:?}"))?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Input lines: plain words, an empty line, a decomposed accent (NFC by the tokenizer),
/// non-Latin text, a CRLF line end.
const INPUT: &str =
    "hola mundo\n\nel gato negro\ne\u{301}l\n\u{65e5}\u{672c} y ñandú\nadios amigos\r\n";

/// `seqforge generate`'s fast settings, and the same as C search options.
const GENERATE: [&str; 6] = ["--beam", "3", "--max-len-b", "8", "--threads", "1"];
const SEARCH: &str = r#"{"beam": 3, "max_len_b": 8}"#;

#[test]
fn c_example_prints_what_seqforge_generate_prints() -> Result<()> {
    let f = fixture()?;
    let (exe, static_exe) = translate_exes()?;
    let input = f.root.join("in.txt");
    std::fs::write(&input, INPUT)?;
    let generate = |extra: &[&str]| -> Result<String> {
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_seqforge"))
                .arg("generate")
                .arg(&f.model)
                .arg("--input")
                .arg(&input)
                .args(GENERATE)
                .args(extra),
            b"",
        )?;
        ensure!(out.status.success(), "seqforge generate failed: {}", text(&out.stderr));
        Ok(text(&out.stdout))
    };

    // Plain output: identical, line for line.
    let expected = generate(&["--output-format", "plain"])?;
    let out = run(
        Command::new(&exe).args(["--search", SEARCH, "--threads", "1"]).arg(&f.model),
        INPUT.as_bytes(),
    )?;
    ensure!(out.status.success(), "translate.c failed: {}", text(&out.stderr));
    let got = text(&out.stdout);
    ensure!(expected.lines().count() == 6, "{expected:?}");
    ensure!(got == expected, "C example:\n{got}\nseqforge generate:\n{expected}");
    // The same program linked with libseqforge.a.
    let out = run(
        Command::new(&static_exe).args(["--search", SEARCH, "--threads", "1"]).arg(&f.model),
        INPUT.as_bytes(),
    )?;
    ensure!(out.status.success(), "static translate.c failed: {}", text(&out.stderr));
    ensure!(text(&out.stdout) == expected, "static C example:\n{}", text(&out.stdout));

    // n-best: the same texts in the same order as the D- lines, scores in base e (fairseq
    // prints base 2).
    let fairseq = generate(&["--nbest", "2"])?;
    let out = run(
        Command::new(&exe)
            .args(["--nbest", "2", "--search", SEARCH, "--threads", "1"])
            .arg(&f.model),
        INPUT.as_bytes(),
    )?;
    ensure!(out.status.success(), "translate.c --nbest failed: {}", text(&out.stderr));
    let got = text(&out.stdout);
    let mut compared = 0;
    for line in 0..6 {
        let d: Vec<(f64, &str)> = fairseq
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("D-{line}\t")))
            .map(|rest| {
                let (score, text) = rest.split_once('\t').context("D line")?;
                Ok((score.parse::<f64>()?, text))
            })
            .collect::<Result<_>>()?;
        let c: Vec<(f64, &str)> = got
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{line}\t")))
            .map(|rest| {
                let mut fields = rest.splitn(3, '\t');
                let (_rank, score, text) = (fields.next(), fields.next(), fields.next());
                Ok((score.context("score")?.parse::<f64>()?, text.context("text")?))
            })
            .collect::<Result<_>>()?;
        // An empty line has no hypotheses in the C API; fairseq prints one empty D line.
        if line == 1 {
            ensure!(c.is_empty() && d.len() == 1 && d[0].1.is_empty(), "{c:?} vs {d:?}");
            continue;
        }
        ensure!(c.len() == 2 && d.len() == 2, "line {line}: {c:?} vs {d:?}\n{got}\n{fairseq}");
        for ((cs, ct), (ds, dt)) in c.iter().zip(&d) {
            ensure!(ct == dt, "line {line}: {ct:?} vs {dt:?}");
            let base2 = cs / std::f64::consts::LN_2;
            ensure!((base2 - ds).abs() < 1e-3, "line {line}: score {base2} vs {ds}");
            compared += 1;
        }
    }
    ensure!(compared == 10, "compared {compared} hypotheses");

    // No input lines: success, no output. A bad model directory: exit 1 with its path.
    let out = run(Command::new(&exe).arg(&f.model), b"")?;
    ensure!(out.status.success() && out.stdout.is_empty(), "{}", text(&out.stderr));
    let missing = f.root.join("no-such-model");
    let out = run(Command::new(&exe).arg(&missing), b"hola\n")?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(err.contains("seqforge_translator_create (status 6)"), "{err}");
    ensure!(err.contains(&missing.display().to_string()), "{err}");
    // Bad search options: the message names the field.
    let out = run(Command::new(&exe).args(["--search", r#"{"beam": -1}"#]).arg(&f.model), b"a\n")?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1) && err.contains("(status 4)"), "{err}");
    ensure!(err.contains("`beam`"), "{err}");
    Ok(())
}

/// The tiny causal language model's directory (no tokenizer: prompts are dictionary words
/// `w5 w9 …`), under `root`.
fn lm_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("lm");
    TinyCausalLm::new().write(&dir)?;
    Ok(dir)
}

/// Prompts: three lengths and an empty one (unconditional generation).
const PROMPTS: &str = "w5 w9\n\nw12 w13 w14\nw6 w7\n";
/// Greedy, and seeded sampling (two samples per prompt) with top-k, no-repeat n-grams and a
/// minimum length.
const GREEDY: &str = r#"{"strategy": {"kind": "greedy"}, "beam": 1, "max_len_b": 5}"#;
const SAMPLING: &str = r#"{"beam": 2, "max_len_b": 6, "min_len": 2,
    "no_repeat_ngram_size": 2, "strategy": {"kind": "sampling", "top_k": 5, "seed": 3}}"#;

#[test]
fn c_example_completes_prompts_as_the_pool_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let lm = lm_dir(tmp.path())?;
    let (exe, static_exe) = translate_exes()?;
    let pool = TranslatorPool::open(PoolConfig {
        runtime: RuntimeOptions { threads: 1, ..RuntimeOptions::default() },
        ..PoolConfig::new(&lm)
    })?;
    let prompts: Vec<&str> = PROMPTS.lines().collect();
    let complete = |search: &str| -> Result<Vec<Vec<(f32, String)>>> {
        let options = parse_options(search, pool.default_options())?;
        Ok(pool
            .complete(&prompts, &options)?
            .into_iter()
            .map(|t| t.hypotheses.into_iter().map(|h| (h.score, h.text)).collect())
            .collect())
    };
    let c = |exe: &Path, args: &[&str]| -> Result<String> {
        let out = run(
            Command::new(exe).args(args).args(["--threads", "1"]).arg(&lm),
            PROMPTS.as_bytes(),
        )?;
        ensure!(out.status.success(), "translate.c {args:?} failed: {}", text(&out.stderr));
        Ok(text(&out.stdout))
    };

    // Greedy: the best continuation of each prompt, line for line (the model's task picks
    // seqforge_complete), dynamically and statically linked.
    let want: Vec<String> = complete(GREEDY)?
        .into_iter()
        .map(|hyps| hyps.into_iter().next().map(|(_, t)| t).context("a continuation"))
        .collect::<Result<_>>()?;
    ensure!(want.len() == 4 && want.iter().all(|t| !t.is_empty()), "{want:?}");
    let want = want.iter().map(|t| format!("{t}\n")).collect::<String>();
    ensure!(
        c(&exe, &["--search", GREEDY])? == want,
        "C greedy:\n{}\npool:\n{want}",
        c(&exe, &["--search", GREEDY])?
    );
    ensure!(c(&static_exe, &["--search", GREEDY])? == want, "static C greedy");

    // Seeded sampling: the same samples twice, and the pool's, scores included.
    let first = c(&exe, &["--search", SAMPLING, "--nbest", "2"])?;
    let second = c(&exe, &["--search", SAMPLING, "--nbest", "2"])?;
    ensure!(first == second, "one seed, two samples:\n{first}\n{second}");
    // (translate.c's `--nbest 2` puts `"nbest": 2` first into the search options.)
    let pool_sampled = complete(&SAMPLING.replacen('{', r#"{"nbest": 2, "#, 1))?;
    let mut lines = first.lines();
    for (i, hyps) in pool_sampled.iter().enumerate() {
        ensure!(hyps.len() == 2, "prompt {i}: {hyps:?}");
        for (k, (score, want)) in hyps.iter().enumerate() {
            let line = lines.next().context("fewer lines than hypotheses")?;
            let mut fields = line.splitn(4, '\t');
            let (l, r, s, t) = (fields.next(), fields.next(), fields.next(), fields.next());
            ensure!(l == Some(&*i.to_string()) && r == Some(&*k.to_string()), "{line:?}");
            ensure!(t == Some(want.as_str()), "prompt {i} rank {k}: {line:?} vs {want:?}");
            let s: f32 = s.context("score")?.parse()?;
            ensure!((s - score).abs() < 1e-5, "prompt {i} rank {k}: score {s} vs {score}");
        }
    }
    ensure!(lines.next().is_none(), "more lines than hypotheses:\n{first}");
    Ok(())
}

#[test]
fn c_example_calling_the_other_tasks_function_fails_naming_the_task() -> Result<()> {
    let f = fixture()?;
    let lm = lm_dir(&f.root)?;
    let (exe, _) = translate_exes()?;
    // seqforge_translate on a language model.
    let out = run(Command::new(&exe).args(["--call", "translate"]).arg(&lm), b"w5 w9\n")?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1) && out.stdout.is_empty(), "{out:?}");
    ensure!(err.contains("seqforge_translate (status 10)"), "{err}");
    ensure!(
        err.contains("a language_modeling model") && err.contains("seqforge_complete"),
        "{err}"
    );
    // seqforge_complete on a translation model.
    let out = run(Command::new(&exe).args(["--call", "complete"]).arg(&f.model), b"hola\n")?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1) && out.stdout.is_empty(), "{out:?}");
    ensure!(err.contains("seqforge_complete (status 10)"), "{err}");
    ensure!(err.contains("a translation model") && err.contains("seqforge_translate"), "{err}");
    // Each with its own task's call succeeds.
    let out =
        run(Command::new(&exe).args(["--call", "complete", "--search", GREEDY]).arg(&lm), b"w5\n")?;
    ensure!(out.status.success() && text(&out.stdout).lines().count() == 1, "{out:?}");
    Ok(())
}

#[test]
fn c_example_is_clean_under_valgrind() -> Result<()> {
    let Ok(valgrind) = which("valgrind") else {
        bail!(
            "valgrind is not installed: `cargo xtask setup` installs it (as root, with apt-get), \
             else `sudo apt-get install valgrind`"
        );
    };
    let f = fixture()?;
    let (exe, _) = translate_exes()?;
    let suppressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/capi.supp");
    let memcheck_on = |model: &Path, args: &[&str], stdin: &str| -> Result<Output> {
        run(
            Command::new(&valgrind)
                .args([
                    "--leak-check=full",
                    "--error-exitcode=99",
                    "--errors-for-leak-kinds=definite,indirect",
                    "--show-leak-kinds=definite,indirect",
                ])
                .arg(format!("--suppressions={}", suppressions.display()))
                .arg(&exe)
                .args(args)
                .arg(model),
            stdin.as_bytes(),
        )
    };
    let memcheck = |args: &[&str], stdin: &str| memcheck_on(&f.model, args, stdin);
    // A translation (n-best, an empty line among the inputs).
    let out = memcheck(
        &["--nbest", "2", "--search", SEARCH, "--threads", "1"],
        "hola mundo\n\nel gato\n",
    )?;
    let err = text(&out.stderr);
    ensure!(
        out.status.code() == Some(0),
        "valgrind reports errors (exit {:?}):\n{err}",
        out.status
    );
    ensure!(err.contains("ERROR SUMMARY: 0 errors"), "{err}");
    ensure!(text(&out.stdout).lines().count() == 4, "{}", text(&out.stdout));
    // A failing call (bad search options) frees everything too: exit 1, not valgrind's 99.
    let out = memcheck(&["--search", r#"{"beam": "wide"}"#, "--threads", "1"], "hola\n")?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}:\n{err}", out.status);
    ensure!(err.contains("`beam`") && err.contains("ERROR SUMMARY: 0 errors"), "{err}");
    // Sampled completions on a language model, and a wrong-task call on it.
    let lm = lm_dir(&f.root)?;
    let out = memcheck_on(&lm, &["--nbest", "2", "--search", SAMPLING, "--threads", "1"], PROMPTS)?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(0), "valgrind, completion (exit {:?}):\n{err}", out.status);
    ensure!(err.contains("ERROR SUMMARY: 0 errors"), "{err}");
    ensure!(text(&out.stdout).lines().count() == 8, "{}", text(&out.stdout));
    let out = memcheck_on(&lm, &["--call", "translate", "--threads", "1"], "w5\n")?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}:\n{err}", out.status);
    ensure!(err.contains("(status 10)") && err.contains("ERROR SUMMARY: 0 errors"), "{err}");
    Ok(())
}

/// The path of `program` on `PATH`.
fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").context("no PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not on PATH"))
}
