//! The same search over the same checkpoint, through the trainer's libtorch `TorchDecoder` and
//! through the runtime's `OnnxDecoder` on its export: beam 5 (and diverse beam, sampling,
//! greedy) must give identical hypotheses (tokens equal, scores within 1e-4) on a batch of
//! sentences of different lengths; the ONNX results must not depend on the batch a sentence is
//! in; greedy must equal beam 1; and the decoder's cache handling (in-graph reorder, rebuilding
//! the cross-attention inputs only when rows change sentence) must match libtorch step by step.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, ensure};
use seqforge_exporter::{ExportOptions, export};
use seqforge_runtime::decoding::IncrementalDecoder;
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, Strategy, generate};
use seqforge_schemas::contract::Dtype;
use seqforge_trainer::models::TorchDecoder;
use seqforge_trainer::models::transformer::{Transformer, TransformerConfig};
use tch::{Device, nn};

mod common;
use common::{same_hypotheses as same, sources, write_dict};

const VOCAB: usize = 32;

/// A briefly trained model, its checkpoint and its FP32 export.
struct Fixture {
    _dir: tempfile::TempDir,
    _vs: nn::VarStore,
    model: Transformer,
    model_dir: PathBuf,
    /// The same checkpoint exported with `--dtype fp16`.
    fp16_dir: PathBuf,
}

fn fixture(seed: i64) -> Result<Fixture> {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = TransformerConfig::from_preset("transformer_tiny")?.with_vocab(VOCAB, VOCAB);
    let model = Transformer::new(&vs.root(), &config)?;
    common::train_copy_task(&vs, &model, 60, 3e-3, VOCAB)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    write_dict(&data.join("dict.de.txt"), VOCAB, "w", |i| 1000 - i)?;
    write_dict(&data.join("dict.en.txt"), VOCAB, "w", |i| 1000 - i)?;
    let checkpoint = dir.path().join("checkpoint_last");
    common::save_checkpoint(&checkpoint, &model, "transformer_tiny", &data, 1, 60)?;
    let model_dir = dir.path().join("model");
    export(&ExportOptions::new(&checkpoint, &data, &model_dir))?;
    let fp16_dir = dir.path().join("model-fp16");
    export(&ExportOptions::new(&checkpoint, &data, &fp16_dir).with_dtype(Dtype::Fp16))?;
    Ok(Fixture { _dir: dir, _vs: vs, model, model_dir, fp16_dir })
}

fn onnx(f: &Fixture) -> Result<OnnxDecoder> {
    onnx_with(f, false)
}

/// `io_binding`: run the steps through the I/O binding the GPU path uses.
fn onnx_with(f: &Fixture, io_binding: bool) -> Result<OnnxDecoder> {
    let options = RuntimeOptions { threads: 1, io_binding, ..RuntimeOptions::default() };
    Ok(OnnxDecoder::new(Arc::new(ModelDir::open(&f.model_dir, &options)?))?)
}

#[test]
fn beam_search_over_onnx_equals_beam_search_over_libtorch() -> Result<()> {
    let f = fixture(11)?;
    let mut ort = onnx(&f)?;
    let _guard = tch::no_grad_guard();
    let cases = [
        ("beam 5", GenerationOptions { beam: 5, nbest: 5, max_len_b: 16, ..Default::default() }),
        (
            "diverse beam",
            GenerationOptions {
                beam: 4,
                nbest: 4,
                max_len_b: 12,
                strategy: Strategy::DiverseBeam { groups: 2, strength: 0.5 },
                ..Default::default()
            },
        ),
        (
            "sampling",
            GenerationOptions {
                beam: 3,
                nbest: 3,
                max_len_b: 12,
                strategy: Strategy::Sampling {
                    top_k: Some(5),
                    top_p: None,
                    temperature: 0.8,
                    seed: 3,
                },
                ..Default::default()
            },
        ),
        (
            "lenpen + no-repeat",
            GenerationOptions {
                beam: 5,
                lenpen: 0.6,
                no_repeat_ngram_size: 2,
                max_len_a: 1.2,
                max_len_b: 3,
                ..Default::default()
            },
        ),
    ];
    let mut bound = onnx_with(&f, true)?;
    for (what, options) in cases {
        let torch = generate(&mut TorchDecoder::new(&f.model), &sources(), &options)?;
        let onnx = generate(&mut ort, &sources(), &options)?;
        let worst = same(what, &torch, &onnx, 1e-4)?;
        let n: usize = torch.iter().map(Vec::len).sum();
        println!("{what}: {n} hypotheses identical, max score difference {worst:.2e}");
        // The I/O-binding path (what CUDA and TensorRT run) gives the very same results.
        same(
            &format!("{what} (io binding)"),
            &onnx,
            &generate(&mut bound, &sources(), &options)?,
            0.0,
        )?;
    }
    Ok(())
}

#[test]
fn onnx_results_do_not_depend_on_the_batch_and_greedy_is_beam_one() -> Result<()> {
    let f = fixture(12)?;
    let mut ort = onnx(&f)?;
    let beam = GenerationOptions { beam: 5, nbest: 2, max_len_b: 16, ..Default::default() };
    let batched = generate(&mut ort, &sources(), &beam)?;
    for (i, s) in sources().into_iter().enumerate() {
        let alone = generate(&mut ort, &[s], &beam)?;
        same(&format!("sentence {i} alone vs batched"), &alone, &batched[i..=i], 1e-5)?;
    }
    // A different batch composition: reversed, with a duplicate.
    let mut shuffled = sources();
    shuffled.reverse();
    shuffled.push(sources()[2].clone());
    let again = generate(&mut ort, &shuffled, &beam)?;
    let n = sources().len();
    for i in 0..n {
        same(&format!("sentence {i} reshuffled"), &again[n - 1 - i..n - i], &batched[i..=i], 1e-5)?;
    }
    same("duplicate", &again[n..], &batched[2..3], 1e-5)?;

    let greedy = GenerationOptions {
        strategy: Strategy::Greedy,
        beam: 7,
        max_len_b: 16,
        ..Default::default()
    };
    let beam1 = GenerationOptions { beam: 1, max_len_b: 16, ..Default::default() };
    same(
        "greedy vs beam 1",
        &generate(&mut ort, &sources(), &greedy)?,
        &generate(&mut ort, &sources(), &beam1)?,
        0.0,
    )?;
    Ok(())
}

/// Drives both decoders by hand: expansion to 3 rows per sentence, in-sentence permutations
/// (no rebuild of the cross-attention inputs), pruning a sentence (one rebuild), two reorders
/// in a row (composed), and compares every step's log-probabilities.
#[test]
fn decoder_state_follows_reorders_like_libtorch() -> Result<()> {
    let f = fixture(13)?;
    let mut ort = onnx(&f)?;
    let _guard = tch::no_grad_guard();
    let mut torch = TorchDecoder::new(&f.model);
    let srcs = vec![sources()[0].clone(), sources()[2].clone(), sources()[1].clone()];
    let enc_o = ort.encode(&srcs)?;
    let enc_t = torch.encode(&srcs)?;
    let mut so = ort.init_state(&enc_o, 1)?;
    let mut st = torch.init_state(&enc_t, 1)?;
    let compare = |a: &seqforge_runtime::decoding::LogProbs,
                   b: &seqforge_runtime::decoding::LogProbs,
                   step: usize|
     -> Result<f32> {
        ensure!(a.rows == b.rows && a.vocab == b.vocab, "step {step}: shapes differ");
        let mut worst = 0f32;
        for (x, y) in a.data.iter().zip(&b.data) {
            worst = worst.max((x - y).abs());
        }
        ensure!(worst < 1e-4, "step {step}: log-probs differ by {worst:e}");
        Ok(worst)
    };
    let mut tokens = vec![2u32; 3];
    // (reorder before this step, tokens) per step.
    let plan: Vec<Vec<usize>> = vec![
        vec![0, 0, 0, 1, 1, 1, 2, 2, 2], // expand to 3 rows per sentence
        vec![2, 0, 1, 3, 3, 5, 6, 8, 7], // in-sentence reorders only
        vec![0, 1, 2, 6, 7, 8],          // prune sentence 1
        vec![1, 1, 0, 5, 3, 4],          // in-sentence again
    ];
    let mut regathers = vec![so.regathers()];
    let mut worst = 0f32;
    for (step, order) in plan.iter().enumerate() {
        let lo = ort.step(&tokens, &mut so)?;
        let lt = torch.step(&tokens, &mut st)?;
        worst = worst.max(compare(&lo, &lt, step)?);
        ort.reorder(&mut so, order)?;
        torch.reorder(&mut st, order)?;
        tokens = order.iter().map(|&r| 4 + ((r * 7 + step * 3) % (VOCAB - 4)) as u32).collect();
        regathers.push(so.regathers());
        ensure!(ort.rows(&so) == order.len(), "rows {} after reorder", ort.rows(&so));
    }
    // Two reorders before one step compose.
    ort.reorder(&mut so, &[2, 1, 0, 3, 4, 5])?;
    ort.reorder(&mut so, &[1, 1, 2, 4, 5, 3])?;
    torch.reorder(&mut st, &[2, 1, 0, 3, 4, 5])?;
    torch.reorder(&mut st, &[1, 1, 2, 4, 5, 3])?;
    worst = worst.max(compare(&ort.step(&tokens, &mut so)?, &torch.step(&tokens, &mut st)?, 9)?);
    // Built at init_state, then rebuilt only by the step after the expansion (step 1) and the
    // step after the pruning (step 3): the counter moves when a step runs after a mapping
    // change, never for in-sentence reorders.
    let after = so.regathers();
    ensure!(
        regathers == vec![1, 1, 2, 2, 3] && after == 3,
        "cross-attention inputs rebuilt at the wrong times: {regathers:?} then {after}"
    );
    ensure!(so.position() == 5, "position {}", so.position());
    // Thirty more steps, each after an in-sentence rotation: the export's in-place cache grows
    // past its first capacity (reordered on the host every step) and keeps agreeing.
    ensure!(so.capacity() > 0, "the default fp32 export has no in-place cache");
    let first_capacity = so.capacity();
    for step in 10..40 {
        let order: Vec<usize> = (0..6).map(|r| r / 3 * 3 + (r + 1) % 3).collect();
        ort.reorder(&mut so, &order)?;
        torch.reorder(&mut st, &order)?;
        tokens = (0..6).map(|r| 4 + ((r * 5 + step * 11) % (VOCAB - 4)) as u32).collect();
        worst =
            worst.max(compare(&ort.step(&tokens, &mut so)?, &torch.step(&tokens, &mut st)?, step)?);
    }
    ensure!(
        so.capacity() > first_capacity && so.capacity() >= so.position(),
        "capacity {} (first {first_capacity}) at position {}",
        so.capacity(),
        so.position()
    );
    println!(
        "step-by-step log-probs within {worst:.2e} over {} steps; cross inputs built {after} \
         times; in-place capacity {first_capacity} → {}",
        so.position(),
        so.capacity()
    );
    Ok(())
}

/// The runtime's text pipeline turns raw lines into exactly the ids the trainer's
/// `preprocess --tokenizer` wrote (byte-level BPE learned by `learn-bpe`, joined dictionary,
/// unknown pieces → `<unk>`), and decodes them back to the NFC text.
#[test]
fn text_pipeline_gives_the_ids_preprocess_wrote() -> Result<()> {
    use seqforge_runtime::text::{Overlong, TextPipeline};
    use seqforge_schemas::contract::{SpecialIds, Vocabulary};
    use seqforge_trainer::bpe::Bpe;
    use seqforge_trainer::data::PreprocessArgs;
    use seqforge_trainer::data::indexed::IndexedDataset;

    let dir = tempfile::tempdir()?;
    let p = |name: &str| dir.path().join(name);
    let es = [
        "En el principio creó Dios los cielos y la tierra.",
        "Y la tierra estaba desordenada y vacía,  y las tinieblas\testaban sobre la faz del abismo.",
        "Y dijo Dios: Sea la luz: y fué la luz.",
        "e\u{301}l dijo: «¿Quién?» — ¡nadie!",
        "  espacios   al principio y al final  ",
        "separador\u{1c}raro y\u{a0}no-break",
    ];
    let en = [
        "In the beginning God created the heaven and the earth.",
        "And the earth was without form, and void; and darkness was upon the face of the deep.",
        "And God said, Let there be light: and there was light.",
        "He said: Who? Nobody!",
        "spaces at the start and the end",
        "odd separator and no-break",
    ];
    // Valid has pieces the dictionary never saw (→ <unk>).
    let valid_es = ["Luz 💡 y ünïcödé nuevos", "la tierra"];
    let valid_en = ["Light and new", "the earth"];
    std::fs::write(p("train.es"), es.join("\n") + "\n")?;
    std::fs::write(p("train.en"), en.join("\n") + "\n")?;
    std::fs::write(p("valid.es"), valid_es.join("\n") + "\n")?;
    std::fs::write(p("valid.en"), valid_en.join("\n") + "\n")?;
    let bpe = Bpe::train(&[p("train.es"), p("train.en")], 300, 2)?;
    bpe.save(&p("tokenizer.json"))?;
    let bin = p("bin");
    seqforge_trainer::data::preprocess::run(&PreprocessArgs {
        source_lang: Some("es".into()),
        target_lang: Some("en".into()),
        trainpref: Some(p("train").to_string_lossy().into_owned()),
        validpref: Some(p("valid").to_string_lossy().into_owned()),
        destdir: bin.clone(),
        joined_dictionary: true,
        tokenizer: Some(p("tokenizer.json")),
        ..PreprocessArgs::default()
    })?;
    let src = Vocabulary::load(&bin.join("dict.es.txt"))?;
    let tgt = Vocabulary::load(&bin.join("dict.en.txt"))?;
    let text =
        TextPipeline::new(src, tgt, Some(&p("tokenizer.json")), SpecialIds::default(), 1024)?;
    let mut unknown = 0;
    for (split, lines) in [("train", &es[..]), ("valid", &valid_es[..])] {
        let written = IndexedDataset::open(bin.join(format!("{split}.es-en.es")))?;
        ensure!(written.len() == lines.len(), "{split}: {} lines written", written.len());
        for (i, line) in lines.iter().enumerate() {
            let ours = text.encode_line(line, split, i + 1, Overlong::Error)?;
            let theirs = written.get(i)?;
            ensure!(
                ours.ids == theirs,
                "{split}:{}: {:?} vs preprocess {:?}",
                i + 1,
                ours.ids,
                theirs
            );
            unknown += ours.unknown;
            if ours.unknown == 0 {
                let nfc = line.replace("e\u{301}", "\u{e9}");
                let back = text.source_text(&ours.ids)?;
                ensure!(back == nfc, "{split}:{}: decodes to {back:?}", i + 1);
            }
        }
    }
    ensure!(unknown > 0, "the valid split should contain unknown pieces");
    Ok(())
}

/// The FP16 export runs through the same decoder (fp16 cache and cross-attention inputs): every
/// step's log-probabilities stay within 2e-2 of libtorch's fp32 ones through expansion, beam
/// reorders and pruning, and beam search over it runs to the end.
#[test]
fn fp16_exports_decode_close_to_libtorch() -> Result<()> {
    let f = fixture(14)?;
    let options = RuntimeOptions { threads: 1, ..RuntimeOptions::default() };
    let model = Arc::new(ModelDir::open(&f.fp16_dir, &options)?);
    ensure!(model.contract().dtype == Dtype::Fp16, "not an fp16 export");
    let mut ort = OnnxDecoder::new(model)?;
    let _guard = tch::no_grad_guard();
    let mut torch = TorchDecoder::new(&f.model);
    let srcs = vec![sources()[4].clone(), sources()[1].clone()];
    let (eo, et) = (ort.encode(&srcs)?, torch.encode(&srcs)?);
    let (mut so, mut st) = (ort.init_state(&eo, 1)?, torch.init_state(&et, 1)?);
    let plan: Vec<Vec<usize>> =
        vec![vec![0, 0, 1, 1], vec![1, 0, 3, 2], vec![0, 1], vec![1, 1], vec![0, 1]];
    let mut tokens = vec![2u32; 2];
    let mut worst = 0f32;
    for (step, order) in plan.iter().enumerate() {
        let (a, b) = (ort.step(&tokens, &mut so)?, torch.step(&tokens, &mut st)?);
        ensure!(a.rows == b.rows && a.data.len() == b.data.len(), "step {step}: shapes");
        for (x, y) in a.data.iter().zip(&b.data) {
            ensure!(x.is_finite(), "step {step}: non-finite log-prob");
            worst = worst.max((x - y).abs());
        }
        ort.reorder(&mut so, order)?;
        torch.reorder(&mut st, order)?;
        tokens = order.iter().map(|&r| 4 + ((r * 5 + step * 11) % (VOCAB - 4)) as u32).collect();
    }
    ensure!(worst < 2e-2, "fp16 log-probs differ from fp32 libtorch by {worst}");
    let beam = GenerationOptions { beam: 5, nbest: 5, max_len_b: 12, ..Default::default() };
    let hyps = generate(&mut ort, &sources(), &beam)?;
    ensure!(hyps.iter().all(|h| h.len() == 5), "fp16 beam search: {hyps:?}");
    println!("fp16 export: step log-probs within {worst:.2e} of libtorch fp32");
    Ok(())
}
