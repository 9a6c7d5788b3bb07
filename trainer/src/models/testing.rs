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
