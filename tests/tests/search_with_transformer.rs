//! The shared search over the trainer's libtorch Transformer (through `IncrementalDecoder`):
//! every hypothesis' positional scores equal the teacher-forced log-probabilities of the full
//! (uncached) model, so search, cache and model agree; a batch decodes like its sentences alone.

use anyhow::{Result, ensure};
use seqforge_runtime::search::{GenerationOptions, Strategy, generate};
use seqforge_trainer::models::TorchDecoder;
use seqforge_trainer::models::transformer::{Transformer, TransformerConfig};
use tch::{Device, Kind, Tensor, nn};

const VOCAB: usize = 24;

fn model(vs: &nn::VarStore) -> Result<Transformer> {
    let config = TransformerConfig::from_preset("transformer_tiny")?.with_vocab(VOCAB, VOCAB);
    Ok(Transformer::new(&vs.root(), &config)?)
}

fn sources() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 7, 11, 2], vec![13, 6, 2], vec![8, 8, 19, 4, 17, 10, 2]]
}

/// Log-probabilities of `tokens` given `source` from one full forward pass.
fn teacher_forced(model: &Transformer, source: &[u32], tokens: &[u32]) -> Result<Vec<f32>> {
    let to_tensor = |ids: &[u32]| -> Result<Tensor> {
        let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        Ok(Tensor::from_slice(&ids).f_unsqueeze(0)?)
    };
    let src = to_tensor(source)?;
    let lengths = Tensor::from_slice(&[source.len() as i64]);
    let mut prev = vec![2u32];
    prev.extend_from_slice(&tokens[..tokens.len() - 1]);
    let prev = to_tensor(&prev)?;
    let logits = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
    let lprobs = model.get_normalized_probs(&logits, true)?;
    let picked = lprobs.f_gather(2, &to_tensor(tokens)?.f_unsqueeze(2)?, false)?;
    Ok(Vec::<f32>::try_from(picked.f_flatten(0, -1)?.f_to_kind(Kind::Float)?)?)
}

#[test]
fn beam_hypotheses_score_like_the_full_model() -> Result<()> {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = model(&vs)?;
    let options = GenerationOptions { beam: 5, nbest: 5, max_len_b: 12, ..Default::default() };
    let results = generate(&mut TorchDecoder::new(&model), &sources(), &options)?;
    ensure!(results.len() == 3, "{} results", results.len());
    let mut worst = 0f32;
    for (source, hypotheses) in sources().iter().zip(&results) {
        ensure!(hypotheses.len() == 5, "{} hypotheses", hypotheses.len());
        ensure!(hypotheses.windows(2).all(|w| w[0].score >= w[1].score), "not sorted by score");
        for hypothesis in hypotheses {
            ensure!(hypothesis.tokens.last() == Some(&2), "hypothesis does not end with EOS");
            let expected = teacher_forced(&model, source, &hypothesis.tokens)?;
            for (a, b) in hypothesis.positional_scores.iter().zip(&expected) {
                worst = worst.max((a - b).abs());
            }
            let mean = expected.iter().sum::<f32>() / expected.len() as f32;
            ensure!((hypothesis.score - mean).abs() < 1e-4, "score {} vs {mean}", hypothesis.score);
        }
    }
    ensure!(worst < 1e-4, "incremental vs full log-probs differ by {worst}");
    println!("beam 5 over the libtorch Transformer: max positional score diff {worst:.2e}");
    Ok(())
}

#[test]
fn a_batch_decodes_like_its_sentences_alone() -> Result<()> {
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = model(&vs)?;
    for strategy in [Strategy::Beam, Strategy::Greedy] {
        let beam = if matches!(strategy, Strategy::Greedy) { 1 } else { 4 };
        let options =
            GenerationOptions { beam, nbest: 1, max_len_b: 20, strategy, ..Default::default() };
        let batched = generate(&mut TorchDecoder::new(&model), &sources(), &options)?;
        for (i, source) in sources().into_iter().enumerate() {
            let alone = generate(&mut TorchDecoder::new(&model), &[source], &options)?;
            let (a, b) = (&alone[0][0], &batched[i][0]);
            ensure!(a.tokens == b.tokens, "sentence {i}: {:?} vs {:?}", a.tokens, b.tokens);
            ensure!((a.score - b.score).abs() < 1e-5, "sentence {i}: {} vs {}", a.score, b.score);
        }
    }
    Ok(())
}
