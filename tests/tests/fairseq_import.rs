//! From fairseq to seqforge: real fairseq 0.12.2 checkpoints (`tests/fixtures/fairseq_import/`,
//! made by its `make_fixtures.py`) are imported with `import-fairseq`, exported with the
//! export-time parity check (`seqforge-train export`: the ONNX graphs against the imported
//! weights in libtorch), and decoded with beam 5 over ONNX Runtime on the test split: every
//! hypothesis must be fairseq-generate's (same symbols) with the same score within 1e-4 (base
//! 2, as fairseq prints it) and the same positional scores within the 4 decimals fairseq
//! prints. Covers post-/pre-norm, shared/tied/separate embeddings, sinusoidal/learned
//! positions, layernorm_embedding, gelu, no_scale_embedding, the base architecture's derived
//! defaults, fp16 training and fp16-stored weights, EMA weights, the legacy torch.save format,
//! the LSTM and ConvS2S families; and `seqforge-export` taking a `.pt` directly. Language
//! models (`transformer_lm_gpt2_tiny` with tied embeddings; `transformer_lm` with adaptive input
//! and an adaptive softmax tied to it) are compared with fairseq-eval-lm's word probabilities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use seqforge_exporter::BuildOptions;
use seqforge_runtime::indexed::{IndexedDataset, split_prefix};
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, generate};
use seqforge_schemas::contract::Dtype;
use seqforge_trainer::data::Dictionary;
use seqforge_trainer::export_check::{self, ExportArgs};
use seqforge_trainer::import_fairseq::{self, ImportFairseqArgs};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// fairseq-generate's hypothesis of one sentence.
#[derive(Debug)]
struct Expected {
    symbols: String,
    score: f64,
    positional: Vec<f64>,
}

/// The H- and P- lines of a `*.generate.txt`, by sentence id.
fn expected(path: &Path) -> Result<BTreeMap<usize, Expected>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = BTreeMap::new();
    let mut positional = BTreeMap::new();
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(tag), Some(a)) = (cols.next(), cols.next()) else { continue };
        if let Some(id) = tag.strip_prefix("H-") {
            let symbols = cols.next().unwrap_or_default().to_string();
            out.insert(id.parse()?, Expected { symbols, score: a.parse()?, positional: vec![] });
        } else if let Some(id) = tag.strip_prefix("P-") {
            let p = a.split(' ').map(str::parse).collect::<Result<Vec<f64>, _>>()?;
            positional.insert(id.parse::<usize>()?, p);
        }
    }
    for (id, p) in positional {
        if let Some(e) = out.get_mut(&id) {
            e.positional = p;
        }
    }
    Ok(out)
}

/// Imports `name.pt`, exports it with the parity check, decodes the test split with beam 5 and
/// compares with `expected_name.generate.txt`; returns the largest score difference.
fn import_and_compare(name: &str, data: &str, use_ema: bool, expected_name: &str) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let data = fixtures().join("fairseq").join(data);
    let checkpoint = dir.path().join("checkpoint");
    import_fairseq::run(&ImportFairseqArgs {
        checkpoint: fixtures().join("fairseq_import").join(format!("{name}.pt")),
        data: data.clone(),
        out: checkpoint.clone(),
        use_ema,
        source_lang: None,
        target_lang: None,
        force: false,
    })
    .with_context(|| format!("import {name}"))?;
    let model_dir = dir.path().join("model");
    let report = export_check::run(&ExportArgs {
        checkpoint,
        data: data.clone(),
        out: model_dir.clone(),
        build: BuildOptions { dtype: Dtype::Fp32, kv_cache: None },
        tokenizer: None,
        force: false,
        check_samples: 8,
        check_subset: "valid".into(),
        check_steps: 12,
        tolerance: None,
    })
    .with_context(|| format!("export {name}"))?;
    ensure!(
        report.identical_hypotheses.0 == report.identical_hypotheses.1,
        "{name}: libtorch and ONNX disagree on {} of {} hypotheses",
        report.identical_hypotheses.1 - report.identical_hypotheses.0,
        report.identical_hypotheses.1
    );

    decode_and_compare(name, &model_dir, &data, expected_name)
}

/// Decodes the test split of `data` with beam 5 on the model directory `model_dir` (ONNX
/// Runtime) and compares with `expected_name.generate.txt`; returns the largest score
/// difference.
fn decode_and_compare(
    name: &str,
    model_dir: &Path,
    data: &Path,
    expected_name: &str,
) -> Result<f64> {
    let sources =
        IndexedDataset::open(&split_prefix(data, "test", "en", "de", "en"))?.read_all()?;
    let tgt = Dictionary::load(data.join("dict.de.txt"))?;
    let model = Arc::new(ModelDir::open(model_dir, &RuntimeOptions::default())?);
    let mut decoder = OnnxDecoder::new(model)?;
    let options = GenerationOptions { beam: 5, ..Default::default() };
    let results = generate(&mut decoder, &sources, &options)?;
    let expected =
        expected(&fixtures().join("fairseq_import").join(format!("{expected_name}.generate.txt")))?;
    ensure!(
        expected.len() == sources.len(),
        "{name}: {} expected of {}",
        expected.len(),
        sources.len()
    );
    let mut worst = 0f64;
    for (id, e) in &expected {
        let best = results.get(*id).and_then(|h| h.first()).context("no hypothesis")?;
        let body = &best.tokens[..best.tokens.len().saturating_sub(1)];
        let symbols: Vec<&str> = body
            .iter()
            .map(|&t| tgt.symbols().get(t as usize).map_or("?", String::as_str))
            .collect();
        ensure!(
            symbols.join(" ") == e.symbols,
            "{name} sentence {id}: seqforge {:?}, fairseq {:?}",
            symbols.join(" "),
            e.symbols
        );
        let score = f64::from(best.score) / std::f64::consts::LN_2;
        worst = worst.max((score - e.score).abs());
        ensure!(
            (score - e.score).abs() < 1e-4,
            "{name} sentence {id}: score {score} vs {}",
            e.score
        );
        ensure!(best.positional_scores.len() == e.positional.len(), "{name} {id}: lengths");
        for (a, b) in best.positional_scores.iter().zip(&e.positional) {
            let a = f64::from(*a) / std::f64::consts::LN_2;
            ensure!((a - b).abs() < 1e-4 + 5e-5, "{name} {id}: positional {a} vs {b}");
        }
    }
    println!("{name}: {} sentences identical, max |score diff| {worst:.2e}", expected.len());
    Ok(worst)
}

#[test]
fn post_norm_shared_embeddings() -> Result<()> {
    import_and_compare("postnorm_shared", "joined", false, "postnorm_shared").map(drop)
}

#[test]
fn pre_norm_learned_positions_layernorm_embedding() -> Result<()> {
    import_and_compare("prenorm_learned", "separate", false, "prenorm_learned").map(drop)
}

#[test]
fn base_architecture_unscaled_tied() -> Result<()> {
    import_and_compare("noscale_tied", "separate", false, "noscale_tied").map(drop)
}

#[test]
fn fp16_trained_and_fp16_stored() -> Result<()> {
    import_and_compare("fp16", "separate", false, "fp16")?;
    import_and_compare("fp16_half", "separate", false, "fp16").map(drop)
}

#[test]
fn ema_weights() -> Result<()> {
    import_and_compare("ema", "joined", true, "ema").map(drop)
}

#[test]
fn legacy_torch_format() -> Result<()> {
    import_and_compare("legacy", "joined", false, "postnorm_shared").map(drop)
}

#[test]
fn lstm() -> Result<()> {
    import_and_compare("lstm", "separate", false, "lstm").map(drop)
}

#[test]
fn fconv() -> Result<()> {
    import_and_compare("fconv", "separate", false, "fconv").map(drop)
}

#[test]
fn fairseq_checkpoints_export_directly() -> Result<()> {
    for (name, data) in [
        ("postnorm_shared", "joined"),
        ("prenorm_learned", "separate"),
        ("lstm", "separate"),
        ("fconv", "separate"),
    ] {
        let dir = tempfile::tempdir()?;
        let data = fixtures().join("fairseq").join(data);
        let model_dir = dir.path().join("model");
        let pt = fixtures().join("fairseq_import").join(format!("{name}.pt"));
        seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(&pt, &data, &model_dir))
            .with_context(|| format!("export {name}.pt"))?;
        decode_and_compare(name, &model_dir, &data, name)?;
    }
    // A dictionary that does not fit the embeddings is refused, naming it.
    let dir = tempfile::tempdir()?;
    let pt = fixtures().join("fairseq_import").join("postnorm_shared.pt");
    let e = seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(
        &pt,
        fixtures().join("fairseq").join("separate"),
        dir.path().join("model"),
    ))
    .err()
    .context("accepted a dictionary of another size")?;
    ensure!(e.to_string().contains("dict.en.txt"), "{e}");
    ensure!(!dir.path().join("model").exists());
    Ok(())
}

/// fairseq-eval-lm's output (`*.eval_lm.txt`): each sample's words with their natural-log
/// probabilities (6 decimals), by sample id, and the base-2 loss (4 decimals).
type EvalLmLines = (BTreeMap<usize, Vec<(String, f64)>>, f64);

fn expected_eval_lm(path: &Path) -> Result<EvalLmLines> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut words = BTreeMap::new();
    let mut loss = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Loss (base 2): ") {
            loss = Some(rest.split(',').next().unwrap_or_default().trim().parse::<f64>()?);
            continue;
        }
        let Some((id, rest)) = line.split_once(' ') else { continue };
        let mut probs = Vec::new();
        for item in rest.split('\t') {
            let (word, value) = item.rsplit_once(" [").context("no [value]")?;
            probs.push((word.to_string(), value.trim_end_matches(']').parse::<f64>()?));
        }
        words.insert(id.parse()?, probs);
    }
    Ok((words, loss.with_context(|| format!("{}: no loss line", path.display()))?))
}

/// `report`'s word probabilities and loss against fairseq-eval-lm's; the largest difference.
fn compare_eval_lm(
    what: &str,
    report: &seqforge_runtime::lm::EvalLmReport,
    expected: &EvalLmLines,
) -> Result<f64> {
    let (words, loss) = expected;
    ensure!(
        report.word_probs.len() == words.len(),
        "{what}: {} samples scored, fairseq {}",
        report.word_probs.len(),
        words.len()
    );
    let mut worst = 0f64;
    for (id, got) in &report.word_probs {
        let want = words.get(id).with_context(|| format!("{what}: fairseq has no sample {id}"))?;
        ensure!(
            got.len() == want.len(),
            "{what} sample {id}: {} words vs {}",
            got.len(),
            want.len()
        );
        for ((w, p), (fw, fp)) in got.iter().zip(want) {
            ensure!(w == fw, "{what} sample {id}: word {w:?} vs fairseq {fw:?}");
            let d = (f64::from(*p) - fp).abs();
            worst = worst.max(d);
            // fairseq prints 6 decimals.
            ensure!(d < 1e-5, "{what} sample {id} {w}: {p} vs fairseq {fp}");
        }
    }
    ensure!((report.loss - loss).abs() < 1e-4, "{what}: loss {} vs fairseq {loss}", report.loss);
    println!("{what}: {} samples, max |word log-prob diff| {worst:.1e}", words.len());
    Ok(worst)
}

/// A fairseq language model: imported, evaluated on libtorch (`seqforge-train eval-lm`),
/// exported with the parity check and evaluated on ONNX Runtime, and exported straight from
/// the `.pt` and evaluated again; each must give fairseq-eval-lm's word probabilities (within
/// the 6 decimals it prints) and loss.
fn language_model(name: &str) -> Result<()> {
    use seqforge_runtime::lm::{EvalLmOptions, evaluate, samples_of_items};

    let dir = tempfile::tempdir()?;
    let data = fixtures().join("fairseq_import").join("lm-data");
    let expected =
        expected_eval_lm(&fixtures().join("fairseq_import").join(format!("{name}.eval_lm.txt")))?;
    let checkpoint = dir.path().join("checkpoint");
    let report = import_fairseq::run(&ImportFairseqArgs {
        checkpoint: fixtures().join("fairseq_import").join(format!("{name}.pt")),
        data: data.clone(),
        out: checkpoint.clone(),
        use_ema: false,
        source_lang: None,
        target_lang: None,
        force: false,
    })
    .with_context(|| format!("import {name}"))?;
    ensure!(report.family == "transformer_lm", "{name}: family {}", report.family);

    let libtorch = seqforge_trainer::eval_lm::run(
        &seqforge_trainer::eval_lm::EvalLmArgs {
            data: data.clone(),
            path: checkpoint.clone(),
            gen_subset: "test".into(),
            context_window: 0,
            tokens_per_sample: None,
            sample_break_mode: None,
            batch_size: Some(1),
            max_tokens: 36_000,
            remove_bpe: None,
            output_word_probs: true,
            output_word_stats: false,
            cpu: true,
            threads: Some(1),
        },
        |_, _| {},
    )
    .with_context(|| format!("eval-lm {name} on libtorch"))?;
    compare_eval_lm(&format!("{name} (libtorch)"), &libtorch.report, &expected)?;

    let model_dir = dir.path().join("model");
    export_check::run(&ExportArgs {
        checkpoint: checkpoint.clone(),
        data: data.clone(),
        out: model_dir.clone(),
        build: BuildOptions { dtype: Dtype::Fp32, kv_cache: None },
        tokenizer: None,
        force: false,
        check_samples: 4,
        check_subset: "valid".into(),
        check_steps: 8,
        tolerance: None,
    })
    .with_context(|| format!("export {name}"))?;
    // The same model exported straight from the `.pt` (no libtorch, no import step).
    let direct_dir = dir.path().join("model-direct");
    let pt = fixtures().join("fairseq_import").join(format!("{name}.pt"));
    seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(&pt, &data, &direct_dir))
        .with_context(|| format!("export {name}.pt directly"))?;
    let dict = Dictionary::load(data.join("dict.txt"))?;
    let items = IndexedDataset::open(&data.join("test"))?.read_all()?;
    let task = &libtorch.report;
    let options = EvalLmOptions {
        tokens_per_sample: 32,
        context_window: 0,
        break_mode: if name == "lm_adaptive" {
            seqforge_runtime::lm::BreakMode::Eos
        } else {
            seqforge_runtime::lm::BreakMode::None
        },
        max_sentences: Some(1),
        max_tokens: 36_000,
        word_pieces: Default::default(),
        output_word_probs: true,
        output_word_stats: false,
    };
    let samples = samples_of_items(&items, &options, dict.eos(), dict.pad())?;
    ensure!(samples.len() == task.samples, "{name}: {} samples vs {}", samples.len(), task.samples);
    let symbol = |t: u32| dict.symbols().get(t as usize).cloned().unwrap_or_default();
    for (what, dir) in [("ONNX", &model_dir), ("ONNX, exported from the .pt", &direct_dir)] {
        let model = Arc::new(ModelDir::open(dir, &RuntimeOptions::default())?);
        let mut scorer = OnnxDecoder::new(model)?;
        let onnx = evaluate(&mut scorer, &samples, &options, dict.pad(), &symbol, |_| {})?;
        compare_eval_lm(&format!("{name} ({what})"), &onnx, &expected)?;
    }
    continuations_match(name, &model_dir, &dict)
}

/// Beam-5 continuations of fairseq-interactive's prompts (`NAME.interactive.txt`) on the
/// exported model: the same tokens after the prompt, the same positional scores for them
/// (fairseq prints 4 decimals, base 2) and the same hypothesis score, which counts the prompt's
/// tokens in fairseq and in seqforge.
fn continuations_match(name: &str, model_dir: &Path, dict: &Dictionary) -> Result<()> {
    let path = fixtures().join("fairseq_import").join(format!("{name}.interactive.txt"));
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut prompts = BTreeMap::new();
    let mut hyps = BTreeMap::new();
    let mut positional = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        match cols.as_slice() {
            [tag, prompt] if tag.starts_with("S-") => {
                prompts.insert(tag[2..].parse::<usize>()?, prompt.to_string());
            }
            [tag, score, tokens] if tag.starts_with("H-") => {
                hyps.insert(
                    tag[2..].parse::<usize>()?,
                    (tokens.to_string(), score.parse::<f64>()?),
                );
            }
            [tag, scores] if tag.starts_with("P-") => {
                let p = scores.split(' ').map(str::parse).collect::<Result<Vec<f64>, _>>()?;
                positional.insert(tag[2..].parse::<usize>()?, p);
            }
            _ => {}
        }
    }
    ensure!(!prompts.is_empty() && prompts.len() == hyps.len(), "{}: S-/H- lines", path.display());
    let index = |w: &str| dict.symbols().iter().position(|s| s == w).unwrap_or(dict.unk() as usize);
    let sources: Vec<Vec<u32>> = prompts
        .values()
        .map(|p| {
            let mut ids: Vec<u32> = p.split_whitespace().map(|w| index(w) as u32).collect();
            ids.push(dict.eos());
            ids
        })
        .collect();
    let model = Arc::new(ModelDir::open(model_dir, &RuntimeOptions::default())?);
    let mut decoder = OnnxDecoder::new(model)?;
    let options = GenerationOptions { beam: 5, max_len_b: 20, ..Default::default() };
    for ((id, prompt), source) in prompts.iter().zip(&sources) {
        // One prompt per call: a batch of prompts must share a length.
        let result = generate(&mut decoder, std::slice::from_ref(source), &options)?;
        let best = result.first().and_then(|r| r.first()).context("no hypothesis")?;
        let words: Vec<&str> = best.tokens[..best.tokens.len().saturating_sub(1)]
            .iter()
            .map(|&t| dict.symbols().get(t as usize).map_or("?", String::as_str))
            .collect();
        let prompt_len = prompt.split_whitespace().count();
        let full = format!("{prompt} {}", words.join(" "));
        let (want_tokens, want_score) = &hyps[id];
        ensure!(
            full.trim() == want_tokens,
            "{name} prompt {prompt:?}: seqforge {full:?}, fairseq {want_tokens:?}"
        );
        // fairseq's score counts the prompt (base 2, as it prints it); so does seqforge's.
        let score = f64::from(best.score) / std::f64::consts::LN_2;
        ensure!(
            (score - want_score).abs() < 1e-4,
            "{name} {id}: score {score} vs fairseq {want_score}"
        );
        let want = &positional[id][prompt_len..];
        ensure!(best.positional_scores.len() == want.len(), "{name} {id}: positional lengths");
        for (a, b) in best.positional_scores.iter().zip(want) {
            let a = f64::from(*a) / std::f64::consts::LN_2;
            ensure!((a - b).abs() < 1e-4 + 5e-5, "{name} {id}: positional {a} vs fairseq {b}");
        }
    }
    println!("{name}: {} continuations identical to fairseq-interactive's", prompts.len());
    Ok(())
}

#[test]
fn language_model_gpt2_tiny_tied() -> Result<()> {
    language_model("lm_gpt2_tied")
}

#[test]
fn language_model_adaptive_input_and_softmax() -> Result<()> {
    language_model("lm_adaptive")
}
