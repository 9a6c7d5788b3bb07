//! No-repeat n-gram blocking (fairseq's `--no-repeat-ngram-size`, `NGramRepeatBlock`).
//!
//! Semantics are those of fairseq's CUDA kernel (`ngram_repeat_block_cuda_kernel.cu`), which
//! are also fairseq 0.10's: the history is the decoder input so far, *including* the leading
//! EOS at position 0; if the last `n - 1` tokens occurred earlier followed by token `t`, then
//! `t` is forbidden. (fairseq 0.12.2's CPU fallback compares against the padded end of its token
//! buffer instead and so never blocks anything — fairseq issue #4709; we do not copy that.)

/// Sets to `-inf` the log-probability of every token that would repeat an n-gram of size `n`.
/// `history` is the row's decoder input so far (`step + 1` tokens, the first being EOS).
pub fn block_repeated_ngrams(n: usize, history: &[u32], lprobs: &mut [f32]) {
    if n == 0 || history.len() + 1 < n {
        return;
    }
    // The last n - 1 tokens start here; earlier n-grams start at 0 .. check_start.
    let check_start = history.len() + 1 - n;
    let tail = &history[check_start..];
    for start in 0..check_start {
        if history[start..start + n - 1] == *tail {
            let banned = history[start + n - 1] as usize;
            if let Some(lp) = lprobs.get_mut(banned) {
                *lp = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fairseq `TestRepeatNgramBlocking.test_finds_repetitive_tokens`: tokens [[2,2,2,2],
    /// [3,3,3,3]], step 3, n = 2 bans 2 in the first row and 3 in the second.
    #[test]
    fn search_ngram_finds_repetitive_tokens() {
        let mut first = vec![0.0f32; 4];
        block_repeated_ngrams(2, &[2, 2, 2, 2], &mut first);
        assert_eq!(first, [0.0, 0.0, f32::NEG_INFINITY, 0.0]);
        let mut second = vec![0.0f32; 4];
        block_repeated_ngrams(2, &[3, 3, 3, 3], &mut second);
        assert_eq!(second, [0.0, 0.0, 0.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn search_ngram_trigrams_and_short_histories() {
        let inf = f32::NEG_INFINITY;
        // history e a b c a b: the bigram (a b) was followed by c.
        let (e, a, b, c) = (2u32, 4u32, 5u32, 6u32);
        let mut lp = vec![0.0f32; 8];
        block_repeated_ngrams(3, &[e, a, b, c, a, b], &mut lp);
        assert_eq!(lp, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, inf, 0.0]);
        // too short to contain an earlier n-gram
        let mut lp = vec![0.0f32; 8];
        block_repeated_ngrams(3, &[e, a], &mut lp);
        assert!(lp.iter().all(|&v| v == 0.0));
        // n = 1 forbids every token seen, the leading EOS included (as fairseq's kernel)
        let mut lp = vec![0.0f32; 8];
        block_repeated_ngrams(1, &[e, a], &mut lp);
        assert_eq!(lp, [0.0, 0.0, inf, 0.0, inf, 0.0, 0.0, 0.0]);
    }
}
