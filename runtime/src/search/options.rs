//! Generation options: fairseq's `fairseq-generate` search flags as a plain, serializable struct.
//!
//! Defaults are fairseq 0.12.2's (`--beam 5 --nbest 1 --max-len-a 0 --max-len-b 200 --min-len 1
//! --lenpen 1 --unkpen 0`). Parsing command lines is someone else's business: this struct has no
//! clap dependency, a CLI can map its flags onto it.

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Which search to run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Beam search (fairseq's `BeamSearch`).
    #[default]
    Beam,
    /// Diverse beam search with a Hamming diversity penalty (fairseq's `DiverseBeamSearch`,
    /// `--diverse-beam-groups`, `--diverse-beam-strength`).
    DiverseBeam {
        /// Number of groups the beam is split into (`beam % groups == 0`).
        groups: usize,
        /// Penalty per time a token was picked by an earlier group at the same step
        /// (fairseq's default is 0.5).
        #[serde(default = "default_diverse_beam_strength")]
        strength: f64,
    },
    /// Beam search with diverse siblings (fairseq's `DiverseSiblingsSearch`, `--diversity-rate`):
    /// the r-th best continuation of a hypothesis is penalized by `r × rate`.
    DiverseSiblings {
        /// Penalty per sibling rank (0 is plain beam search).
        rate: f64,
    },
    /// Sampling (fairseq's `Sampling`, `--sampling`): `beam` samples per sentence.
    Sampling {
        /// Sample among the `top_k` most likely tokens (`--sampling-topk`); `None` = all.
        #[serde(default)]
        top_k: Option<usize>,
        /// Sample among the smallest set of tokens whose probability mass exceeds `top_p`
        /// (nucleus sampling, `--sampling-topp`); `None` = off. Exclusive with `top_k`.
        #[serde(default)]
        top_p: Option<f64>,
        /// Softmax temperature (`--temperature`): >1 flatter, <1 sharper.
        #[serde(default = "default_temperature")]
        temperature: f64,
        /// Seed of the random generator: equal seeds give equal samples.
        #[serde(default)]
        seed: u64,
    },
    /// Greedy decoding: beam search with a beam of 1 (the `beam` option is ignored).
    Greedy,
}

fn default_diverse_beam_strength() -> f64 {
    0.5
}

fn default_temperature() -> f64 {
    1.0
}

/// Options of one generation run (fairseq's generation flags).
///
/// With serde (e.g. JSON): `{"beam": 5, "lenpen": 0.6, "strategy": {"kind": "diverse_beam",
/// "groups": 5}}`; missing fields take fairseq's defaults, unknown fields are errors. Strategy
/// kinds: `beam`, `diverse_beam`, `diverse_siblings`, `sampling`, `greedy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationOptions {
    /// Beam size (`--beam`); for sampling, the number of samples per sentence.
    pub beam: usize,
    /// Hypotheses returned per sentence (`--nbest`), at most `beam`.
    pub nbest: usize,
    /// Maximum length is `max_len_a × source length + max_len_b` (`--max-len-a`); the source
    /// length counts every source token including the final EOS, as fairseq's `src_len` does.
    pub max_len_a: f64,
    /// See `max_len_a` (`--max-len-b`).
    pub max_len_b: usize,
    /// Minimum length, EOS excluded (`--min-len`): EOS is forbidden before it.
    pub min_len: usize,
    /// Length penalty (`--lenpen`): scores are `sum(logprob) / len^lenpen`; <1 favours shorter,
    /// >1 longer hypotheses.
    pub lenpen: f64,
    /// Unknown-word penalty (`--unkpen`), subtracted from `<unk>`'s log-probability.
    pub unkpen: f64,
    /// Divide scores by `len^lenpen` (fairseq's default; `--unnormalized` turns it off).
    pub normalize_scores: bool,
    /// Forbid repeating any n-gram of this size (`--no-repeat-ngram-size`; 0 = off).
    pub no_repeat_ngram_size: usize,
    /// How many tokens of each given target prefix to force (`--prefix-size`); 0 forces the
    /// whole prefix. Only used by [`generate_with_prefixes`](super::generate_with_prefixes).
    pub prefix_size: usize,
    /// Limit each output to its source's length, EOS and padding excluded (`--match-source-len`).
    pub match_source_len: bool,
    /// The search strategy.
    pub strategy: Strategy,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            beam: 5,
            nbest: 1,
            max_len_a: 0.0,
            max_len_b: 200,
            min_len: 1,
            lenpen: 1.0,
            unkpen: 0.0,
            normalize_scores: true,
            no_repeat_ngram_size: 0,
            prefix_size: 0,
            match_source_len: false,
            strategy: Strategy::Beam,
        }
    }
}

/// Another name for [`GenerationOptions`].
pub type SearchConfig = GenerationOptions;

impl GenerationOptions {
    /// These options with every output forced to `len` tokens plus EOS (`min_len = max_len_b =
    /// len`, `max_len_a = 0`), so that the work does not depend on the weights (benchmarks).
    pub fn with_forced_length(mut self, len: usize) -> Self {
        self.min_len = len;
        self.max_len_a = 0.0;
        self.max_len_b = len;
        self
    }

    /// Checks that the options make sense together; [`generate`](super::generate) calls it.
    pub fn validate(&self) -> Result<()> {
        let finite = |option: &'static str, value: f64| {
            if value.is_finite() {
                Ok(())
            } else {
                Err(Error::invalid(option, format!("{value} is not a finite number")))
            }
        };
        finite("max_len_a", self.max_len_a)?;
        if self.max_len_a < 0.0 {
            return Err(Error::invalid("max_len_a", format!("{} is negative", self.max_len_a)));
        }
        finite("lenpen", self.lenpen)?;
        finite("unkpen", self.unkpen)?;
        if self.nbest == 0 {
            return Err(Error::invalid("nbest", "must be at least 1"));
        }
        if !matches!(self.strategy, Strategy::Greedy) && self.beam == 0 {
            return Err(Error::invalid("beam", "must be at least 1"));
        }
        let beam = if matches!(self.strategy, Strategy::Greedy) { 1 } else { self.beam };
        if self.nbest > beam {
            return Err(Error::NbestExceedsBeam { nbest: self.nbest, beam });
        }
        match self.strategy {
            Strategy::Beam | Strategy::Greedy => {}
            Strategy::DiverseBeam { groups, strength } => {
                if groups == 0 {
                    return Err(Error::invalid("strategy.groups", "must be at least 1"));
                }
                if !self.beam.is_multiple_of(groups) {
                    return Err(Error::BeamNotDivisibleByGroups { beam: self.beam, groups });
                }
                finite("strategy.strength", strength)?;
            }
            Strategy::DiverseSiblings { rate } => finite("strategy.rate", rate)?,
            Strategy::Sampling { top_k, top_p, temperature, .. } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(Error::invalid(
                        "strategy.temperature",
                        format!("{temperature} must be a finite number greater than 0"),
                    ));
                }
                if top_k == Some(0) {
                    return Err(Error::invalid("strategy.top_k", "must be at least 1 (or unset)"));
                }
                if let Some(p) = top_p {
                    if !(p > 0.0 && p <= 1.0) {
                        return Err(Error::invalid(
                            "strategy.top_p",
                            format!("{p} must be in (0, 1] (or unset)"),
                        ));
                    }
                    if top_k.is_some() {
                        return Err(Error::invalid(
                            "strategy.top_p",
                            "top_k and top_p are exclusive (fairseq silently uses top_p): set one",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The beam size a search over `vocab` tokens uses: 1 for greedy search, otherwise `beam`
    /// capped at `vocab - 1` (padding is never chosen), as in fairseq.
    pub fn effective_beam(&self, vocab: usize) -> usize {
        match self.strategy {
            Strategy::Greedy => 1,
            _ => self.beam.min(vocab.saturating_sub(1)).max(1),
        }
    }
}
