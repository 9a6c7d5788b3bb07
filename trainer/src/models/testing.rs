//! Test inputs shared by the families' unit tests.

/// A deterministic token stream (xorshift) for test inputs.
pub(crate) struct Tokens(pub(crate) u64);

impl Tokens {
    /// The next token id, never one of the four specials.
    pub(crate) fn next(&mut self, vocab: usize) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // Skip the specials (0..4).
        (4 + self.0 % (vocab as u64 - 4)) as u32
    }

    /// `len - 1` tokens then EOS (2).
    pub(crate) fn sentence(&mut self, len: usize, vocab: usize) -> Vec<u32> {
        let mut s: Vec<u32> = (0..len - 1).map(|_| self.next(vocab)).collect();
        s.push(2);
        s
    }
}

use std::collections::BTreeMap;

use seqforge_runtime::decoding::{IncrementalDecoder, LogProbs};
use seqforge_runtime::search::{GenerationOptions, generate};
use tch::nn::{OptimizerConfig, VarStore};
use tch::{Kind, Tensor};

use crate::models::TorchDecoder;
use crate::train::model::Model;

/// Test results with any error.
pub(crate) type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// EOS and padding of the test dictionaries.
pub(crate) const EOS: u32 = 2;
pub(crate) const PAD: i64 = 1;
/// Outputs compared with fairseq, or cached with uncached, must agree to this.
pub(crate) const TOL: f64 = 1e-5;

/// Perturbs every variable of `vs` away from its initial value (normal noise, σ 0.2).
pub(crate) fn perturb(vs: &VarStore) -> Res<()> {
    let _guard = tch::no_grad_guard();
    for (_, mut t) in vs.variables() {
        let noise = t.f_randn_like()?.f_mul_scalar(0.2)?;
        let _ = t.f_add_(&noise)?;
    }
    Ok(())
}

/// The largest absolute difference of two tensors.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Res<f64> {
    Ok(a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?)
}

/// The largest absolute difference of two slices of the same length.
pub(crate) fn max_abs_diff_slices(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max)
}

/// Pads sentences into a `[batch, len]` tensor, on the left (sources) or right (targets).
pub(crate) fn padded(rows: &[Vec<u32>], left: bool) -> Res<Tensor> {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut data = Vec::new();
    for r in rows {
        let pads = std::iter::repeat_n(PAD, len - r.len());
        let ids = r.iter().map(|&t| i64::from(t));
        if left {
            data.extend(pads.chain(ids));
        } else {
            data.extend(ids.chain(pads));
        }
    }
    Ok(Tensor::f_from_slice(&data)?.f_reshape([rows.len() as i64, len as i64])?)
}

/// The lengths of `rows` as an `Int64 [batch]` tensor.
pub(crate) fn lengths(rows: &[Vec<u32>]) -> Res<Tensor> {
    Ok(Tensor::f_from_slice(&rows.iter().map(|s| s.len() as i64).collect::<Vec<_>>())?)
}

/// Log-probabilities `[rows, steps, vocab]` of the full model on `fed` (right-padded).
pub(crate) fn full_lprobs(
    model: &dyn Model,
    sources: &[Vec<u32>],
    fed: &[Vec<u32>],
) -> Res<Tensor> {
    let (src, lengths, prev) = (padded(sources, true)?, lengths(sources)?, padded(fed, false)?);
    let logits = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
    Ok(model.get_normalized_probs(&logits, true)?)
}

/// A loaded fairseq parity fixture (see the families' `testdata/make_fixture.py`): the config
/// and state-dict keys of its header, and every tensor.
pub(crate) struct FairseqFixture {
    pub(crate) path: std::path::PathBuf,
    pub(crate) config: serde_json::Value,
    pub(crate) keys: Vec<String>,
    pub(crate) tensors: BTreeMap<String, Tensor>,
}

impl FairseqFixture {
    /// `src/models/{family}/testdata/fairseq_parity_{name}.safetensors`.
    pub(crate) fn load(family: &str, name: &str) -> Res<Self> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("src/models/{family}/testdata"))
            .join(format!("fairseq_parity_{name}.safetensors"));
        let bytes = std::fs::read(&path)?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let meta = metadata.metadata().as_ref().ok_or("no metadata")?;
        let config = serde_json::from_str(meta.get("config").ok_or("no config")?)?;
        let keys = serde_json::from_str(meta.get("state_dict_keys").ok_or("no keys")?)?;
        let tensors = Tensor::read_safetensors(&path)?.into_iter().collect();
        Ok(Self { path, config, keys, tensors })
    }

    /// The tensor `name`.
    pub(crate) fn get(&self, name: &str) -> Res<&Tensor> {
        Ok(self.tensors.get(name).ok_or_else(|| format!("{}: no {name}", self.path.display()))?)
    }

    /// Checks that `model` lists fairseq's state-dict keys in fairseq's order and that `vs`
    /// holds one variable per stored parameter (`buffers` are not variables), then loads them.
    pub(crate) fn load_into(
        &self,
        vs: &mut VarStore,
        model: &dyn Model,
        buffers: &[&str],
    ) -> Res<()> {
        let ours: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
        assert_eq!(ours, self.keys, "{}", self.path.display());
        let stored = self
            .tensors
            .keys()
            .filter(|n| !n.starts_with("__") && !buffers.contains(&n.as_str()))
            .count();
        assert_eq!(stored, vs.variables().len(), "{}", self.path.display());
        vs.load(&self.path)?;
        Ok(())
    }

    /// fairseq's incremental decoding replayed through [`TorchDecoder`]: `__prev_output_tokens`
    /// fed step by step, rows reordered with `__reorder` before step `__reorder_step`; the
    /// largest difference from `__step_lprobs`.
    pub(crate) fn incremental_diff(&self, model: &dyn Model) -> Res<f64> {
        let step_model = model.step_model().ok_or("no step model")?;
        let (src, prev, want) = (
            self.get("__src_tokens")?,
            self.get("__prev_output_tokens")?,
            self.get("__step_lprobs")?,
        );
        let order: Vec<usize> =
            Vec::<i64>::try_from(self.get("__reorder")?)?.into_iter().map(|i| i as usize).collect();
        let reorder_step = self.get("__reorder_step")?.f_int64_value(&[0])?;
        let mut decoder = TorchDecoder::new(step_model);
        let sources: Vec<Vec<u32>> = (0..src.size()[0])
            .map(|i| {
                let row: Vec<i64> = Vec::try_from(src.f_select(0, i)?)?;
                Ok(row.into_iter().filter(|&t| t != PAD).map(|t| t as u32).collect())
            })
            .collect::<Res<_>>()?;
        let encoded = decoder.encode(&sources)?;
        let mut state = decoder.init_state(&encoded, 1)?;
        let mut worst = 0f64;
        for t in 0..prev.size()[1] {
            if t == reorder_step {
                decoder.reorder(&mut state, &order)?;
            }
            // Past a row's end fairseq feeds (and we compare) padding, as its forward pass does.
            let tokens: Vec<u32> =
                Vec::<i64>::try_from(prev.f_select(1, t)?)?.into_iter().map(|x| x as u32).collect();
            let lp = decoder.step(&tokens, &mut state)?;
            for row in 0..sources.len() {
                let w: Vec<f32> = Vec::try_from(want.f_select(0, row as i64)?.f_select(0, t)?)?;
                worst = worst.max(max_abs_diff_slices(lp.row(row), &w));
            }
        }
        Ok(worst)
    }
}

/// Incremental decoding of 12 random steps equals the full forward pass, and the final state
/// holds exactly the `declared` tensor names.
pub(crate) fn check_cached_equals_full(
    name: &str,
    model: &dyn Model,
    (src_vocab, tgt_vocab): (usize, usize),
    declared: std::collections::BTreeSet<String>,
    seed: u64,
) -> Res<()> {
    let step_model = model.step_model().ok_or("no step model")?;
    let mut rng = Tokens(seed);
    let sources =
        vec![rng.sentence(5, src_vocab), rng.sentence(9, src_vocab), rng.sentence(2, src_vocab)];
    let mut decoder = TorchDecoder::new(step_model);
    let encoded = decoder.encode(&sources)?;
    let mut state = decoder.init_state(&encoded, 1)?;
    let mut fed: Vec<Vec<u32>> = vec![Vec::new(); 3];
    let mut cached: Vec<LogProbs> = Vec::new();
    for _ in 0..12 {
        let tokens: Vec<u32> = if fed[0].is_empty() {
            vec![EOS; 3]
        } else {
            (0..3).map(|_| rng.next(tgt_vocab)).collect()
        };
        for (f, &t) in fed.iter_mut().zip(&tokens) {
            f.push(t);
        }
        cached.push(decoder.step(&tokens, &mut state)?);
    }
    let names: std::collections::BTreeSet<String> = state.tensors().keys().cloned().collect();
    assert_eq!(names, declared, "{name}");
    let full = full_lprobs(model, &sources, &fed)?;
    let mut worst = 0f64;
    for (t, step) in cached.iter().enumerate() {
        let want: Vec<f32> = Vec::try_from(full.f_select(1, t as i64)?.f_reshape([-1])?)?;
        worst = worst.max(max_abs_diff_slices(&step.data, &want));
    }
    eprintln!("cached vs full, {name}: max |diff| = {worst:e}");
    assert!(worst <= TOL, "{name}: {worst}");
    Ok(())
}

/// A sentence decodes the same alone and in a batch, incrementally and teacher-forced, and
/// left- and right-padded sources give the same outputs.
pub(crate) fn check_batching_and_padding(
    name: &str,
    model: &dyn Model,
    (src_vocab, tgt_vocab): (usize, usize),
    seed: u64,
) -> Res<()> {
    let step_model = model.step_model().ok_or("no step model")?;
    let mut rng = Tokens(seed);
    let sentence = rng.sentence(6, src_vocab);
    // Unsorted lengths.
    let batch = vec![rng.sentence(3, src_vocab), sentence.clone(), rng.sentence(13, src_vocab)];
    let mut decoder = TorchDecoder::new(step_model);
    let alone = decoder.encode(std::slice::from_ref(&sentence))?;
    let together = decoder.encode(&batch)?;
    let mut state_alone = decoder.init_state(&alone, 1)?;
    let mut state_batch = decoder.init_state(&together, 1)?;
    let (mut worst, mut token, mut history) = (0f64, EOS, Vec::new());
    for _ in 0..15 {
        let a = decoder.step(&[token], &mut state_alone)?;
        let b =
            decoder.step(&[rng.next(tgt_vocab), token, rng.next(tgt_vocab)], &mut state_batch)?;
        worst = worst.max(max_abs_diff_slices(a.row(0), b.row(1)));
        history.push(token);
        token = rng.next(tgt_vocab);
    }
    eprintln!("alone vs batched (incremental), {name}: {worst:e}");
    assert!(worst <= TOL, "{name}: {worst}");

    // Teacher forcing, right-padded targets of different lengths.
    let short = history[..7].to_vec();
    let targets = [history[..3].to_vec(), short.clone(), history.clone()];
    let batched = full_lprobs(model, &batch, &targets)?;
    let single = full_lprobs(model, std::slice::from_ref(&sentence), &[short])?;
    let diff = max_abs_diff(&batched.f_select(0, 1)?.f_narrow(0, 0, 7)?, &single.f_select(0, 0)?)?;
    eprintln!("alone vs batched (teacher forcing), {name}: {diff:e}");
    assert!(diff <= TOL, "{name}: {diff}");
    // Right-padded sources (what the ONNX runtime feeds) are taken as they are.
    let (src, lengths, prev) = (padded(&batch, false)?, lengths(&batch)?, padded(&targets, false)?);
    let right = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
    let diff = max_abs_diff(&model.get_normalized_probs(&right, true)?, &batched)?;
    assert!(diff <= TOL, "{name}: left vs right source padding: {diff}");
    Ok(())
}

/// Beam 4 over three sentences: every hypothesis's positional scores equal the full model's,
/// and bad inputs (empty, out of vocabulary, longer than `max_source`) are errors.
pub(crate) fn check_beam_search(model: &dyn Model, too_long: usize) -> Res<()> {
    let step_model = model.step_model().ok_or("no step model")?;
    let sources = vec![vec![5, 9, 7, 11, EOS], vec![13, 6, EOS], vec![8, 8, 19, 4, 17, 10, EOS]];
    let options = GenerationOptions { beam: 4, nbest: 4, max_len_b: 10, ..Default::default() };
    let results = generate(&mut TorchDecoder::new(step_model), &sources, &options)?;
    assert_eq!(results.len(), 3);
    let mut worst = 0f64;
    for (source, hypotheses) in sources.iter().zip(&results) {
        assert_eq!(hypotheses.len(), 4);
        for h in hypotheses {
            assert_eq!(h.tokens.last(), Some(&EOS));
            let mut fed = vec![EOS];
            fed.extend_from_slice(&h.tokens[..h.tokens.len() - 1]);
            let full = full_lprobs(model, std::slice::from_ref(source), &[fed])?;
            for (t, (&token, &score)) in h.tokens.iter().zip(&h.positional_scores).enumerate() {
                let want = full.f_double_value(&[0, t as i64, i64::from(token)])?;
                worst = worst.max((f64::from(score) - want).abs());
            }
        }
    }
    eprintln!("beam positional scores vs full model: {worst:e}");
    assert!(worst <= 1e-4, "{worst}");
    let mut decoder = TorchDecoder::new(step_model);
    assert!(decoder.encode(&[vec![]]).is_err());
    assert!(decoder.encode(&[vec![1000, EOS]]).is_err());
    assert!(decoder.encode(&[vec![5; too_long]]).is_err());
    let none = decoder.encode(&[])?;
    let mut empty = decoder.init_state(&none, 4)?;
    assert_eq!(decoder.step(&[], &mut empty)?.rows, 0);
    Ok(())
}

/// Dropout changes outputs only when training.
pub(crate) fn check_dropout_only_in_train_mode(model: &dyn Model) -> Res<()> {
    let sources = [vec![5, 6, 7, EOS], vec![8, EOS]];
    let targets = [vec![EOS, 9, 10], vec![EOS, 11]];
    let run = |train| {
        tch::no_grad(|| -> Res<Tensor> {
            Ok(model.forward(
                &padded(&sources, true)?,
                &lengths(&sources)?,
                &padded(&targets, false)?,
                train,
            )?)
        })
    };
    assert_eq!(max_abs_diff(&run(false)?, &run(false)?)?, 0.0);
    assert!(max_abs_diff(&run(true)?, &run(true)?)? > 1e-4);
    assert!(max_abs_diff(&run(true)?, &run(false)?)? > 1e-4);
    Ok(())
}

/// Cross-entropy of `targets` (right-padded, padding ignored) given the sources.
pub(crate) fn loss(
    model: &dyn Model,
    sources: &[Vec<u32>],
    targets: &[Vec<u32>],
    train: bool,
) -> Res<Tensor> {
    let prev: Vec<Vec<u32>> = targets
        .iter()
        .map(|t| std::iter::once(EOS).chain(t[..t.len() - 1].iter().copied()).collect())
        .collect();
    let logits = model.forward(
        &padded(sources, true)?,
        &lengths(sources)?,
        &padded(&prev, false)?,
        train,
    )?;
    let lprobs = model.get_normalized_probs(&logits, true)?;
    let vocab = lprobs.size()[2];
    Ok(lprobs.f_reshape([-1, vocab])?.f_nll_loss(
        &padded(targets, false)?.f_reshape([-1])?,
        None::<Tensor>,
        tch::Reduction::Mean,
        PAD,
    )?)
}

/// 30 Adam steps on reversing four sources lower the loss by more than 30%.
pub(crate) fn check_training_lowers_the_loss(vs: &VarStore, model: &dyn Model) -> Res<()> {
    let mut rng = Tokens(11);
    let sources: Vec<Vec<u32>> = [6, 4, 8, 3].iter().map(|&n| rng.sentence(n, 30)).collect();
    // Targets: each source reversed (EOS last), a learnable mapping.
    let targets: Vec<Vec<u32>> = sources
        .iter()
        .map(|s| s[..s.len() - 1].iter().rev().copied().chain([EOS]).collect())
        .collect();
    let before = tch::no_grad(|| loss(model, &sources, &targets, false))?.f_double_value(&[])?;
    let mut opt = tch::nn::Adam::default().build(vs, 1e-2)?;
    for _ in 0..30 {
        let l = loss(model, &sources, &targets, true)?;
        opt.backward_step(&l);
    }
    let after = tch::no_grad(|| loss(model, &sources, &targets, false))?.f_double_value(&[])?;
    eprintln!("training loss {before} → {after}");
    assert!(after < before * 0.7, "{before} → {after}");
    Ok(())
}

/// Trains a step in bf16 and fp16 copies (`build` makes the model on a var store of that kind)
/// of the fp32 model in `vs32`: gradients of `weight` in the kind, eval loss near fp32's,
/// incremental decoding finite with its state tensor `model_kind` in the kind and `mask` bool.
pub(crate) fn check_16_bit_kinds(
    vs32: &VarStore,
    model32: &dyn Model,
    build: &dyn Fn(&VarStore) -> Res<Box<dyn Model>>,
    weight: &str,
    (model_kind, mask): (&str, &str),
) -> Res<()> {
    let sources = [vec![5, 6, 7, EOS], vec![8, EOS]];
    let targets = [vec![9, 10, EOS], vec![11, EOS]];
    let want = tch::no_grad(|| loss(model32, &sources, &targets, false))?.f_double_value(&[])?;
    for kind in [Kind::BFloat16, Kind::Half] {
        let mut vs = VarStore::new(tch::Device::Cpu);
        vs.set_kind(kind);
        let model = build(&vs)?;
        vs.copy(vs32)?;
        let l = loss(model.as_ref(), &sources, &targets, true)?;
        l.backward();
        let grad = vs.variables().remove(weight).ok_or("no weight")?.grad();
        assert_eq!(grad.kind(), kind);
        assert!(grad.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])? > 0.0);
        let got =
            tch::no_grad(|| loss(model.as_ref(), &sources, &targets, false))?.f_double_value(&[])?;
        assert!((got - want).abs() < 0.05, "{kind:?}: {got} vs {want}");
        // Incremental decoding keeps the model's kind in its state and returns fp32.
        let mut decoder = TorchDecoder::new(model.step_model().ok_or("no step model")?);
        let encoded = decoder.encode(&sources)?;
        let mut state = decoder.init_state(&encoded, 2)?;
        let lp = decoder.step(&[EOS; 4], &mut state)?;
        assert!(lp.data.iter().all(|x| x.is_finite()));
        assert_eq!(state.get(model_kind)?.kind(), kind);
        assert_eq!(state.get(mask)?.kind(), Kind::Bool);
    }
    Ok(())
}
