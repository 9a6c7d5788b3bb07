//! Decoder-only language models on ONNX Runtime, end to end with real graphs: the exporter's
//! [`TinyCausalLm`] (a prefill and a step graph that agree) written as a v4 model directory,
//! driven through [`OnnxDecoder`] and the search, scored by `eval-lm`'s code, and served by the
//! pool; checked against the model's host reference.
#![cfg(feature = "onnx")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use seqforge_exporter::testing::TinyCausalLm;
use seqforge_runtime::Error;
use seqforge_runtime::decoding::IncrementalDecoder;
use seqforge_runtime::lm::{EvalLmOptions, evaluate, samples_of_items};
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, Strategy, generate};

const EOS: u32 = 2;

/// The tiny model's directory, written once per test binary run.
fn model_dir(name: &str) -> Result<(TinyCausalLm, PathBuf)> {
    let lm = TinyCausalLm::new();
    let dir =
        std::env::temp_dir().join(format!("seqforge-lm-test-{}", std::process::id())).join(name);
    lm.write(&dir)?;
    Ok((lm, dir))
}

fn decoder(dir: &Path) -> Result<OnnxDecoder> {
    let options = RuntimeOptions { threads: 1, ..RuntimeOptions::default() };
    Ok(OnnxDecoder::new(Arc::new(ModelDir::open(dir, &options)?))?)
}

fn close(a: &[f32], b: &[f64], what: &str) -> Result<()> {
    ensure!(a.len() == b.len(), "{what}: {} vs {} values", a.len(), b.len());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        ensure!((f64::from(x) - y).abs() < 1e-4, "{what}: token {i}: {x} vs {y}");
    }
    Ok(())
}

#[test]
fn prefill_then_steps_equal_steps_from_position_zero() -> Result<()> {
    let (lm, dir) = model_dir("steps")?;
    let mut d = decoder(&dir)?;
    let prompt = [5u32, 9, 7];
    let continuation = [11u32, 4, 20];
    let mut all = vec![EOS];
    all.extend(prompt);
    all.extend(continuation);
    let reference = lm.reference_log_probs(&all);

    // Prefill over [eos, 5, 9, 7], then the step graph from position 4.
    let source: Vec<u32> = prompt.iter().copied().chain([EOS]).collect();
    let encoded = d.encode(&[source.clone(), source])?;
    ensure!(encoded.prompt_len() == Some(4), "{:?}", encoded.prompt_len());
    let mut state = d.init_state(&encoded, 1)?;
    ensure!(d.step_top(&[EOS, EOS], &mut state, 3)?.is_none(), "the first step is the prefill's");
    let first = d.step(&[EOS, EOS], &mut state)?;
    close(first.row(0), &reference[3], "prefill row 0")?;
    close(first.row(1), &reference[3], "prefill row 1")?;
    ensure!(state.position() == 4, "position {}", state.position());
    // Reorder (expand sentence 0 to two rows, drop sentence 1) before the first graph step.
    d.reorder(&mut state, &[0, 0])?;
    for (k, &tok) in continuation.iter().enumerate() {
        let lp = d.step(&[tok, tok], &mut state)?;
        close(lp.row(0), &reference[4 + k], &format!("after prefill, step {k}"))?;
        close(lp.row(1), &reference[4 + k], &format!("after prefill, step {k}, row 1"))?;
    }

    // An empty prompt: the prefill consumes EOS alone, every later token goes through steps.
    let encoded = d.encode(&[vec![EOS]])?;
    let mut state = d.init_state(&encoded, 1)?;
    close(d.step(&[EOS], &mut state)?.row(0), &reference[0], "unconditional")?;
    for (k, &tok) in all[1..].iter().enumerate() {
        let lp = d.step(&[tok], &mut state)?;
        close(lp.row(0), &reference[k + 1], &format!("from position 0, step {k}"))?;
    }
    Ok(())
}

#[test]
fn prompts_of_one_batch_must_have_one_length_and_fit() -> Result<()> {
    let (_, dir) = model_dir("lengths")?;
    let mut d = decoder(&dir)?;
    match d.encode(&[vec![5, 6, EOS], vec![5, EOS]]) {
        Err(Error::PromptLengths { first: 2, other: 1 }) => {}
        other => bail!("expected PromptLengths, got {other:?}"),
    }
    let long: Vec<u32> = std::iter::repeat_n(5, 32).chain([EOS]).collect();
    match d.encode(&[long]) {
        Err(Error::PromptTooLong { tokens: 33, max: 32, .. }) => {}
        other => bail!("expected PromptTooLong, got {other:?}"),
    }
    // A long prompt leaves few positions: the continuation stops at the model's last one.
    let prompt: Vec<u32> = std::iter::repeat_n(6, 28).chain([EOS]).collect();
    ensure!(d.max_target_positions_for(&prompt) == 4, "{}", d.max_target_positions_for(&prompt));
    let options = GenerationOptions { beam: 2, max_len_b: 50, ..GenerationOptions::default() };
    let hyps = generate(&mut d, &[prompt], &options)?;
    for h in &hyps[0] {
        // Outputs at positions 28..=31: three tokens and EOS at most.
        ensure!(h.tokens.len() <= 32 - 29 + 1, "{:?} runs past the positions", h.tokens);
    }
    Ok(())
}

/// fairseq's greedy search on the host reference: argmax without `<s>`/`<pad>`, EOS allowed
/// from `min_len` on, EOS forced at `max_len`.
fn reference_greedy(lm: &TinyCausalLm, prompt: &[u32], max_len: usize) -> Vec<u32> {
    let mut seq: Vec<u32> = std::iter::once(EOS).chain(prompt.iter().copied()).collect();
    let mut out = Vec::new();
    loop {
        let lp = lm.reference_log_probs(&seq);
        let last = &lp[seq.len() - 1];
        let step = out.len();
        let best = (0..lm.vocab as u32)
            .filter(|&t| t != 0 && t != 1 && (t != EOS || step >= 1))
            .max_by(|&a, &b| last[a as usize].total_cmp(&last[b as usize]).then(b.cmp(&a)))
            .unwrap_or(EOS);
        let best = if step >= max_len { EOS } else { best };
        out.push(best);
        if best == EOS {
            return out;
        }
        seq.push(best);
    }
}

#[test]
fn greedy_beam_and_sampling_generate_continuations() -> Result<()> {
    let (lm, dir) = model_dir("search")?;
    let mut d = decoder(&dir)?;
    let prompts = [vec![5u32, 9, EOS], vec![12, 13, EOS], vec![EOS]];
    let greedy = GenerationOptions {
        strategy: Strategy::Greedy,
        beam: 1,
        max_len_b: 6,
        ..GenerationOptions::default()
    };
    for p in &prompts {
        let hyps = generate(&mut d, std::slice::from_ref(p), &greedy)?;
        let want = reference_greedy(&lm, &p[..p.len() - 1], 6);
        ensure!(hyps[0][0].tokens == want, "prompt {p:?}: {:?} vs {want:?}", hyps[0][0].tokens);
    }
    // Two prompts of one length in one batch give what each gives alone.
    let both = generate(&mut d, &prompts[..2], &greedy)?;
    for (i, p) in prompts[..2].iter().enumerate() {
        let alone = generate(&mut d, std::slice::from_ref(p), &greedy)?;
        ensure!(both[i][0].tokens == alone[0][0].tokens, "batched prompt {i}");
    }

    let beam =
        GenerationOptions { beam: 4, nbest: 3, max_len_b: 6, ..GenerationOptions::default() };
    let hyps = generate(&mut d, &prompts[..1], &beam)?;
    ensure!(hyps[0].len() == 3, "{hyps:?}");
    ensure!(hyps[0].windows(2).all(|w| w[0].score >= w[1].score), "n-best order");
    // Each hypothesis' positional scores are the model's log-probabilities of its tokens.
    for h in &hyps[0] {
        let mut seq = vec![EOS, 5, 9];
        for (k, &tok) in h.tokens.iter().enumerate() {
            let lp = lm.reference_log_probs(&seq);
            let want = lp[seq.len() - 1][tok as usize];
            ensure!((f64::from(h.positional_scores[k]) - want).abs() < 1e-4, "{h:?} at {k}");
            seq.push(tok);
        }
    }

    let sampling = |seed| GenerationOptions {
        beam: 3,
        nbest: 3,
        max_len_b: 8,
        strategy: Strategy::Sampling { top_k: None, top_p: Some(0.9), temperature: 0.8, seed },
        ..GenerationOptions::default()
    };
    let a = generate(&mut d, &prompts[..2], &sampling(7))?;
    let b = generate(&mut d, &prompts[..2], &sampling(7))?;
    ensure!(a == b, "equal seeds, equal samples");
    ensure!(a.iter().all(|h| h.len() == 3), "{a:?}");
    ensure!(
        a.iter().flatten().all(|h| h.tokens.iter().all(|&t| t > 1 && (t as usize) < lm.vocab)),
        "{a:?}"
    );
    Ok(())
}

#[test]
fn eval_lm_perplexity_equals_a_direct_computation() -> Result<()> {
    let (lm, dir) = model_dir("eval")?;
    let mut d = decoder(&dir)?;
    let items: Vec<Vec<u32>> =
        vec![vec![5, 6, 7, EOS], vec![8, 9, 10, 11, 12, EOS], vec![EOS], vec![13, 4, EOS]];
    for (context_window, max_sentences) in [(0, Some(2)), (4, Some(1)), (0, None)] {
        let options = EvalLmOptions {
            tokens_per_sample: 8,
            context_window,
            max_sentences,
            ..EvalLmOptions::default()
        };
        let samples = samples_of_items(&items, &options, EOS, 1)?;
        let report = evaluate(&mut d, &samples, &options, 1, &|t| format!("w{t}"), |_| {})?;
        // Direct: every sample's input through the host reference.
        let (mut sum, mut count) = (0f64, 0u64);
        for s in &samples {
            let lp = lm.reference_log_probs(&s.input);
            for (t, &tok) in s.target.iter().enumerate() {
                if tok != 1 {
                    sum += lp[t][tok as usize];
                    count += 1;
                }
            }
        }
        let loss = -sum / count as f64 / std::f64::consts::LN_2;
        ensure!(report.count == count, "{} vs {count} tokens", report.count);
        ensure!(
            (report.loss - loss).abs() < 1e-5,
            "context {context_window}: {} vs {loss}",
            report.loss
        );
        let ppl = 2f64.powf(loss);
        ensure!((report.perplexity - ppl).abs() < 1e-5 * ppl, "{report:?} vs {ppl}");
    }
    Ok(())
}

#[test]
fn a_translation_call_on_a_language_model_names_the_task() -> Result<()> {
    let (_, dir) = model_dir("task")?;
    let model = ModelDir::open(&dir, &RuntimeOptions::default())?;
    let e = model
        .require_task(seqforge_schemas::contract::Task::Translation, "`seqforge translate`")
        .err()
        .context("an LM is not a translation model")?
        .to_string();
    ensure!(e.contains("language_modeling") && e.contains("translation"), "{e}");
    Ok(())
}

#[test]
fn the_pool_completes_prompts_grouped_by_length() -> Result<()> {
    use seqforge_runtime::pool::{PoolConfig, TranslatorPool};
    let (lm, dir) = model_dir("pool")?;
    let config = PoolConfig {
        runtime: RuntimeOptions { threads: 1, ..RuntimeOptions::default() },
        ..PoolConfig::new(&dir)
    };
    let pool = TranslatorPool::open(config)?;
    let greedy = GenerationOptions {
        strategy: Strategy::Greedy,
        beam: 1,
        max_len_b: 5,
        ..GenerationOptions::default()
    };
    // Three lengths (and an unconditional prompt) in one call, answered in input order.
    let prompts = ["w5 w9", "", "w12 w13 w14", "w6 w7"];
    let out = pool.complete(&prompts, &greedy)?;
    ensure!(out.len() == 4, "{out:?}");
    for (p, got) in prompts.iter().zip(&out) {
        let ids: Vec<u32> = p
            .split_whitespace()
            .map(|w| w.trim_start_matches('w').parse::<u32>())
            .collect::<Result<_, _>>()?;
        let want = reference_greedy(&lm, &ids, 5);
        let h = got.hypotheses.first().context("a continuation")?;
        ensure!(h.tokens == want, "{p:?}: {:?} vs {want:?}", h.tokens);
        let text: Vec<String> = want
            .iter()
            .filter(|&&t| t != EOS)
            .map(|&t| if t == 3 { "<unk>".into() } else { format!("w{t}") })
            .collect();
        ensure!(h.text == text.join(" "), "{p:?}: {:?}", h.text);
    }
    match pool.translate(&["w5"], &greedy) {
        Err(e @ Error::TaskMismatch { .. }) => {
            ensure!(e.to_string().contains("language_modeling"), "{e}")
        }
        other => bail!("expected TaskMismatch, got {other:?}"),
    }
    // Too long a prompt: an error, or its last tokens with truncation.
    let long = vec!["w5"; 40].join(" ");
    ensure!(matches!(pool.complete(&[&long], &greedy), Err(Error::TextTooLong { .. })), "");
    let truncating =
        TranslatorPool::open(PoolConfig { truncate_source: true, ..PoolConfig::new(&dir) })?;
    let line = truncating.encode_text(&format!("w9 {long} w7"))?;
    ensure!(line.truncated && line.ids.len() == 31, "{line:?}");
    ensure!(line.ids[line.ids.len() - 2] == 7, "the prompt's end is kept: {line:?}");
    Ok(())
}

/// Runs the `seqforge` binary, returning (success, stdout, stderr).
fn seqforge(args: &[&str], stdin: &str) -> Result<(bool, String, String)> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqforge"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn cli_generates_and_evaluates_a_language_model() -> Result<()> {
    let (_, dir) = model_dir("cli")?;
    let model = dir.to_str().context("utf-8 path")?;
    let input = dir.join("prompts.txt");
    std::fs::write(&input, "w5 w9\n\nw12 w13 w14\n")?;
    let input = input.to_str().context("utf-8 path")?;
    let (ok, out, err) = seqforge(
        &[
            "generate",
            model,
            "-i",
            input,
            "--greedy",
            "--max-len-b",
            "4",
            "--output-format",
            "plain",
        ],
        "",
    )?;
    ensure!(ok, "{err}");
    ensure!(out.lines().count() == 3 && out.lines().all(|l| !l.is_empty()), "{out}");
    let (ok, out2, err) = seqforge(
        &["interactive", model, "--greedy", "--max-len-b", "4"],
        "w5 w9\n\nw12 w13 w14\n",
    )?;
    ensure!(ok && out2 == out, "{out2} vs {out}: {err}");
    let (ok, sampled, err) = seqforge(
        &[
            "generate",
            model,
            "-i",
            input,
            "--sampling",
            "--sampling-topk",
            "5",
            "--seed",
            "3",
            "--beam",
            "2",
            "--nbest",
            "2",
            "--no-repeat-ngram-size",
            "2",
            "--min-len",
            "2",
        ],
        "",
    )?;
    ensure!(ok && sampled.lines().filter(|l| l.starts_with("H-")).count() == 6, "{sampled}{err}");

    let (ok, out, err) = seqforge(&["eval-lm", model, "-i", input, "--json"], "")?;
    ensure!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    ensure!(v["report"]["tokens"] == 8 && v["report"]["perplexity"].as_f64() > Some(1.0), "{v}");
    let (ok, out, err) = seqforge(&["eval-lm", model, "-i", input, "--context-window", "4"], "")?;
    ensure!(ok && out.contains("Loss (base 2): ") && out.contains("tokens/s"), "{out}{err}");
    Ok(())
}

#[cfg(feature = "serve")]
#[test]
fn the_server_completes_prompts_and_refuses_translation() -> Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    let (_, dir) = model_dir("serve")?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqforge"))
        .args(["serve", dir.to_str().context("utf-8")?, "--host", "127.0.0.1", "--port", "0"])
        .args(["--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let result = (|| -> Result<()> {
        let addr = line.trim().strip_prefix("listening on ").context(line.clone())?;
        let post = |path: &str, body: &str| -> Result<(u16, serde_json::Value)> {
            let mut s = std::net::TcpStream::connect(addr)?;
            write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
                 application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            let (head, body) = raw.split_once("\r\n\r\n").context("no headers")?;
            let status = head.split(' ').nth(1).context("status")?.parse()?;
            Ok((status, serde_json::from_str(body)?))
        };
        let body = r#"{"prompts": ["w5 w9", "", "w6"], "options": {"strategy": {"kind": "greedy"}, "beam": 1, "max_len_b": 4}}"#;
        let (status, v) = post("/v1/complete", body)?;
        ensure!(status == 200, "{v}");
        let completions = v["completions"].as_array().context("completions")?;
        ensure!(completions.len() == 3, "{v}");
        ensure!(completions.iter().all(|c| c["hypotheses"][0]["text"].is_string()), "{v}");
        let (status, v) = post("/v1/translate", r#"{"texts": ["w5"]}"#)?;
        ensure!(status == 400 && v["error"]["code"] == "wrong_task", "{status} {v}");
        ensure!(v["error"]["message"].as_str().unwrap_or("").contains("language_modeling"), "{v}");
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
