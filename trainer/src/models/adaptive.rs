//! fairseq's adaptive input (`fairseq/modules/adaptive_input.py`, Baevski & Auli, 2019,
//! "Adaptive Input Representations for Neural Language Modeling") and adaptive softmax
//! (`fairseq/modules/adaptive_softmax.py`, Grave et al., 2017, "Efficient softmax approximation
//! for GPUs"), with fairseq's parameter names, initialisation and tying.
//!
//! The vocabulary is cut into bands ([`Band`]: ids `start..end`, frequent words first). The
//! adaptive input embeds band `i` at width `dim_i` and projects it to the model width
//! (`embeddings.{i}.0.weight` `[size_i, dim_i]`, `embeddings.{i}.1.weight` `[out, dim_i]`). The
//! adaptive softmax scores band 0's words and one "cluster" id per tail band in its head
//! (`head` of width `cutoff[0] + tails`), then each tail band's words given its cluster
//! (`tail.{i}.0` projects down, dropout, `tail.{i}.2` scores); a word's log-probability in a
//! tail is its cluster's head log-probability plus its in-band log-probability.
//!
//! With `tie_adaptive_weights` the head's word scores and each tail's output are the adaptive
//! input's embeddings (`head.word_proj.weight`, `tail.{i}.2.weight`), and with
//! `tie_adaptive_proj` each tail's projection is the adaptive input's projection transposed
//! (`tail.{i}.0.weight`): the state dict lists those names as aliases of the embedding's.
//!
//! Deviation: fairseq computes the bands of an input or a target with boolean indexing; the
//! adaptive input here computes every band for every token and keeps each token's own with a
//! `where` (same values and gradients, static shapes).

use seqforge_schemas::arch::transformer_lm::Band;
use tch::{Kind, Reduction, Tensor};

use crate::models::nn::{Scope, dropout, to_i64, xavier_weight};
use crate::models::transformer::nn::embedding_weight;
use crate::models::{Error, Result};

/// One band of the adaptive input: `[first id, one past the last)` and its two weights.
struct InputBand {
    start: i64,
    end: i64,
    /// `embeddings.{i}.0.weight`: `[size, dim]`.
    embedding: Tensor,
    /// `embeddings.{i}.1.weight`: `[output_dim, dim]`.
    projection: Tensor,
    /// The fairseq names of the two weights (what a tied adaptive softmax aliases).
    names: (String, String),
}

/// fairseq's `AdaptiveInput`: token ids → `[…, output_dim]` through per-band embeddings and
/// projections.
pub struct AdaptiveInput {
    bands: Vec<InputBand>,
    padding_idx: i64,
}

impl std::fmt::Debug for AdaptiveInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bands: Vec<(i64, i64)> = self.bands.iter().map(|b| (b.start, b.end)).collect();
        f.debug_struct("AdaptiveInput").field("bands", &bands).finish_non_exhaustive()
    }
}

impl AdaptiveInput {
    /// Creates `scope._float_tensor` (fairseq's buffer) and `scope.embeddings.{i}.{0,1}.weight`
    /// for `bands` (from `TransformerLmConfig::input_bands`). As fairseq: embeddings normal with
    /// std `dim^-0.5` and row `padding_idx` of *every* band zeroed at initialisation (only band
    /// 0 treats it as padding), projections xavier-uniform without bias.
    pub(crate) fn new(
        scope: &Scope<'_, '_>,
        bands: &[Band],
        padding_idx: i64,
        output_dim: i64,
    ) -> Result<Self> {
        if bands.is_empty() {
            return Err(Error::Config("adaptive input needs at least one band".into()));
        }
        scope.buffer("_float_tensor", Tensor::f_zeros([1], (scope.kind(), scope.device()))?);
        let embeddings = scope.sub("embeddings");
        let bands = bands
            .iter()
            .enumerate()
            .map(|(i, band)| {
                let (size, dim) =
                    (to_i64(band.size(), "band size")?, to_i64(band.dim, "band dim")?);
                let seq = embeddings.sub(i);
                let pad_row = (padding_idx < size).then_some(padding_idx);
                let embedding = embedding_weight(&seq.sub(0), size, dim, pad_row)?;
                let projection = xavier_weight(&seq.sub(1), dim, output_dim)?;
                Ok(InputBand {
                    start: to_i64(band.start, "cutoff")?,
                    end: to_i64(band.end, "cutoff")?,
                    embedding,
                    projection,
                    names: (seq.sub(0).name_of("weight"), seq.sub(1).name_of("weight")),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { bands, padding_idx })
    }

    /// Band `band`'s `(embedding, projection)` weights and their fairseq names (fairseq's
    /// `weights_for_band`).
    fn weights_for_band(&self, band: usize) -> Result<&InputBand> {
        self.bands
            .get(band)
            .ok_or_else(|| Error::Config(format!("the adaptive input has no band {band}")))
    }

    /// Embeds `tokens` (`Int64 [...]`) → `[..., output_dim]`.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut result: Option<Tensor> = None;
        for (i, band) in self.bands.iter().enumerate() {
            let mask = tokens.f_ge(band.start)?.f_logical_and(&tokens.f_lt(band.end)?)?;
            let ids = tokens.f_sub_scalar(band.start)?.f_clamp(0, band.end - band.start - 1)?;
            // Only band 0's embedding has a padding index (no gradient on that row).
            let pad = if i == 0 { self.padding_idx } else { -1 };
            let x = Tensor::f_embedding(&band.embedding, &ids, pad, false, false)?
                .f_linear(&band.projection, None::<&Tensor>)?;
            result = Some(match result {
                None => x,
                Some(prev) => x.f_where_self(&mask.f_unsqueeze(-1)?, &prev)?,
            });
        }
        result.ok_or_else(|| Error::Config("adaptive input without bands".into()))
    }
}

/// How a tail band's input projection is stored.
enum TailProjection {
    /// `tail.{i}.0.weight` `[dim, input_dim]` (`nn.Linear`).
    Own(Tensor),
    /// The adaptive input's projection `[input_dim, dim]`, applied transposed (fairseq's
    /// `TiedLinear(…, transpose=True)`).
    TiedTransposed(Tensor),
}

/// One tail band: ids `start..end`, projection, then `out` `[size, dim]`.
struct Tail {
    start: i64,
    end: i64,
    projection: TailProjection,
    out: Tensor,
}

/// The head: band 0's word scores and one score per tail cluster.
enum Head {
    /// `head.weight` `[cutoff[0] + tails, input_dim]`.
    Own(Tensor),
    /// fairseq's `TiedHeadModule`: the adaptive input's band-0 embedding as word scores
    /// (`head.word_proj.weight`) and `head.class_proj.weight` `[tails, input_dim]`.
    Tied { words: Tensor, class_proj: Tensor },
}

/// fairseq's `AdaptiveSoftmax` over `[…, input_dim]` features.
pub struct AdaptiveSoftmax {
    vocab: i64,
    /// End of band 0 (`cutoff[0]`).
    head_words: i64,
    head: Head,
    tails: Vec<Tail>,
    dropout: f64,
}

impl std::fmt::Debug for AdaptiveSoftmax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveSoftmax")
            .field("vocab", &self.vocab)
            .field("head_words", &self.head_words)
            .field("tails", &self.tails.len())
            .finish_non_exhaustive()
    }
}

impl AdaptiveSoftmax {
    /// Creates `scope.version` (fairseq's buffer, 1), the head and the tails for `bands` (from
    /// `TransformerLmConfig::softmax_bands`) over features of width `input_dim`, tied to
    /// `tied_input` when given (`tie_adaptive_weights`; its projections too with `tie_proj`).
    /// Own weights are xavier-uniform without bias, as fairseq's `init_weights`.
    pub(crate) fn new(
        scope: &Scope<'_, '_>,
        bands: &[Band],
        input_dim: i64,
        dropout: f64,
        tied_input: Option<&AdaptiveInput>,
        tie_proj: bool,
    ) -> Result<Self> {
        let (Some(first), Some(last)) = (bands.first(), bands.last()) else {
            return Err(Error::Config("adaptive softmax needs at least one band".into()));
        };
        let head_words = to_i64(first.end, "cutoff")?;
        let vocab = to_i64(last.end, "vocab_size")?;
        let n_tails = to_i64(bands.len() - 1, "number of tails")?;
        scope.buffer("version", Tensor::f_from_slice(&[1i64])?.f_to_device(scope.device())?);
        let head_scope = scope.sub("head");
        let head = match tied_input {
            Some(input) => {
                let band = input.weights_for_band(0)?;
                head_scope
                    .buffer("_float_tensor", Tensor::f_zeros([1], (scope.kind(), scope.device()))?);
                head_scope.sub("word_proj").alias("weight", &band.names.0);
                let class_proj = xavier_weight(&head_scope.sub("class_proj"), input_dim, n_tails)?;
                Head::Tied { words: band.embedding.shallow_clone(), class_proj }
            }
            None => Head::Own(xavier_weight(&head_scope, input_dim, head_words + n_tails)?),
        };
        let tail_scope = scope.sub("tail");
        let tails = bands[1..]
            .iter()
            .enumerate()
            .map(|(i, band)| {
                let seq = tail_scope.sub(i);
                let (start, end) = (to_i64(band.start, "cutoff")?, to_i64(band.end, "cutoff")?);
                let (projection, out) = match tied_input {
                    Some(input) => {
                        let tied = input.weights_for_band(i + 1)?;
                        let projection = if tie_proj {
                            seq.sub(0).alias("weight", &tied.names.1);
                            TailProjection::TiedTransposed(tied.projection.shallow_clone())
                        } else {
                            let size = tied.projection.size();
                            TailProjection::Own(xavier_weight(&seq.sub(0), size[0], size[1])?)
                        };
                        seq.sub(2).alias("weight", &tied.names.0);
                        (projection, tied.embedding.shallow_clone())
                    }
                    None => {
                        let dim = to_i64(band.dim, "tail dim")?;
                        let projection =
                            TailProjection::Own(xavier_weight(&seq.sub(0), input_dim, dim)?);
                        (projection, xavier_weight(&seq.sub(2), dim, end - start)?)
                    }
                };
                Ok(Tail { start, end, projection, out })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { vocab, head_words, head, tails, dropout })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> i64 {
        self.vocab
    }

    /// Head scores `[rows, cutoff[0] + tails]` of `x` `[rows, input_dim]`.
    fn head_logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.head {
            Head::Own(w) => x.f_linear(w, None::<&Tensor>)?,
            Head::Tied { words, class_proj } => {
                x.f_linear(&Tensor::f_cat(&[words, class_proj], 0)?, None::<&Tensor>)?
            }
        })
    }

    /// Tail `i`'s in-band scores `[rows, size]` of `x`; dropout between the two projections
    /// only when `train`.
    fn tail_logits(&self, tail: &Tail, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = match &tail.projection {
            TailProjection::Own(w) => x.f_linear(w, None::<&Tensor>)?,
            TailProjection::TiedTransposed(w) => x.f_matmul(w)?,
        };
        Ok(dropout(h, self.dropout, train)?.f_linear(&tail.out, None::<&Tensor>)?)
    }

    /// fairseq's `get_log_prob` without a target: fp32 log-probabilities over the whole
    /// vocabulary `[..., vocab]` of `features` `[..., input_dim]` (eval mode: no dropout).
    pub fn log_prob(&self, features: &Tensor) -> Result<Tensor> {
        let size = features.size();
        let Some((&dim, lead)) = size.split_last() else {
            return Err(Error::Input("adaptive softmax features must have a feature axis".into()));
        };
        let x = features.f_reshape([-1, dim])?;
        let head = self.head_logits(&x)?.f_log_softmax(-1, Kind::Float)?;
        let mut parts = vec![head.f_narrow(1, 0, self.head_words)?];
        for (i, tail) in self.tails.iter().enumerate() {
            let prior = head.f_narrow(1, self.head_words + i as i64, 1)?;
            let lp = self.tail_logits(tail, &x, false)?.f_log_softmax(-1, Kind::Float)?;
            parts.push(lp.f_add(&prior)?);
        }
        let mut shape = lead.to_vec();
        shape.push(self.vocab);
        Ok(Tensor::f_cat(&parts, 1)?.f_reshape(shape)?)
    }

    /// fairseq's `adaptive_loss` for `features` `[B, T, input_dim]` and `target` `[B, T]`: the
    /// summed (fp32) cross-entropy of the head over band-0 words and cluster ids, plus each
    /// tail's over its own words, every part ignoring targets equal to `pad` (fairseq passes
    /// `ignore_index=padding_idx` to every cluster, in-band ids included). Dropout on the
    /// features and inside the tails only when `train`.
    pub fn loss(
        &self,
        features: &Tensor,
        target: &Tensor,
        pad: i64,
        train: bool,
    ) -> Result<Tensor> {
        let dim = features.size().last().copied().unwrap_or(0);
        let x = dropout(features.f_reshape([-1, dim])?, self.dropout, train)?;
        let t = target.f_reshape([-1])?;
        if t.size()[0] != x.size()[0] {
            return Err(Error::Input(format!(
                "adaptive softmax: features {:?} do not match target {:?}",
                features.size(),
                target.size()
            )));
        }
        let ce = |logits: Tensor, target: &Tensor| -> Result<Tensor> {
            Ok(logits.f_to_kind(Kind::Float)?.f_cross_entropy_loss(
                target,
                None::<Tensor>,
                Reduction::Sum,
                pad,
                0.0,
            )?)
        };
        let mut head_target = t.shallow_clone();
        let mut masks = Vec::with_capacity(self.tails.len());
        for (i, tail) in self.tails.iter().enumerate() {
            let mask = t.f_ge(tail.start)?.f_logical_and(&t.f_lt(tail.end)?)?;
            head_target = head_target.f_masked_fill(&mask, self.head_words + i as i64)?;
            masks.push(mask);
        }
        let mut loss = ce(self.head_logits(&x)?, &head_target)?;
        for (tail, mask) in self.tails.iter().zip(&masks) {
            let rows = mask.f_nonzero()?.f_reshape([-1])?;
            if rows.size()[0] == 0 {
                continue;
            }
            let logits = self.tail_logits(tail, &x.f_index_select(0, &rows)?, train)?;
            let in_band = t.f_index_select(0, &rows)?.f_sub_scalar(tail.start)?;
            loss = loss.f_add(&ce(logits, &in_band)?)?;
        }
        Ok(loss)
    }
}
