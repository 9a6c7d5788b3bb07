//! BLEU's tokenizers, as sacreBLEU 2.6.0's `sacrebleu/tokenizers/` defines them.
//!
//! The regular expressions of `tokenizer_re.py` (used by `13a` and `zh`) and
//! `tokenizer_intl.py` all match one or two characters of fixed classes, so `re.sub`'s
//! left-to-right, non-overlapping replacement is reproduced by a scan over the characters
//! ([`sub_pairs`]) instead of a regex engine; the character classes come from Python
//! (`unicode_tables.rs`).

use std::fmt;
use std::str::FromStr;

use super::Error;
use super::text::{is_chinese, is_number, is_punctuation, is_space, is_symbol, strip};

/// A BLEU tokenizer, named as sacreBLEU's `--tokenize` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Tokenizer {
    /// `13a`: mteval-v13a's tokenization (the default).
    #[default]
    Mteval13a,
    /// `intl`: mteval-v14's international tokenization on Unicode punctuation and symbols.
    Intl,
    /// `none`: no tokenization, split on whitespace only.
    None,
    /// `zh`: every Chinese character is a token; the rest as `13a`.
    Zh,
    /// `char`: every character is a token.
    Char,
}

impl Tokenizer {
    /// Every tokenizer, in the order the CLI lists them.
    pub const ALL: [Tokenizer; 5] =
        [Tokenizer::Mteval13a, Tokenizer::Intl, Tokenizer::None, Tokenizer::Zh, Tokenizer::Char];

    /// The name in signatures and on the command line (`13a`, `intl`, `none`, `zh`, `char`).
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Mteval13a => "13a",
            Tokenizer::Intl => "intl",
            Tokenizer::None => "none",
            Tokenizer::Zh => "zh",
            Tokenizer::Char => "char",
        }
    }

    /// Tokenizes one line (already lowercased and right-stripped by the caller, as sacreBLEU's
    /// `BLEU._preprocess_segment` does); the tokens are separated by single spaces.
    pub fn tokenize(self, line: &str) -> String {
        match self {
            Tokenizer::Mteval13a => tokenize_13a(line),
            Tokenizer::Intl => tokenize_intl(line),
            Tokenizer::None => line.to_owned(),
            Tokenizer::Zh => tokenize_zh(line),
            Tokenizer::Char => {
                let mut out = String::with_capacity(line.len() * 2);
                for (i, c) in line.chars().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push(c);
                }
                out
            }
        }
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tokenizer {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Tokenizer::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| Error::UnknownTokenizer {
            name: s.to_owned(),
            known: Tokenizer::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// `re.sub` of a two-character pattern `(A)(B)`: left to right, non-overlapping; `replace`
/// writes the replacement of a match.
fn sub_pairs(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    replace: impl Fn(&mut Vec<char>, char, char),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if i + 1 < chars.len() && first(c) && second(chars[i + 1]) {
            replace(&mut out, c, chars[i + 1]);
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `re.sub` of a one-character pattern `(A)` by `' \1 '`.
fn pad_chars(chars: &[char], class: impl Fn(char) -> bool) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    for &c in chars {
        if class(c) {
            out.extend([' ', c, ' ']);
        } else {
            out.push(c);
        }
    }
    out
}

/// `' '.join(line.split())` over characters.
fn join_words(chars: &[char]) -> String {
    let mut out = String::with_capacity(chars.len());
    let mut pending_space = false;
    for &c in chars {
        if is_space(c) {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

fn space_both(out: &mut Vec<char>, a: char, b: char) {
    out.extend([a, ' ', b, ' ']);
}

fn space_before_both(out: &mut Vec<char>, a: char, b: char) {
    out.extend([' ', a, ' ', b]);
}

/// `tokenizer_re.TokenizerRegexp`: the language-dependent part of mteval-v13a.
fn regexp_post(chars: &[char]) -> String {
    // [\{-\~\[-\` -\&\(-\+\:-\@\/]
    let class =
        |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let step1 = pad_chars(chars, class);
    let digit = |c: char| c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> \1 \2
    let step2 = sub_pairs(&step1, |c| !digit(c), period_comma, space_both);
    // ([\.,])([^0-9]) -> ' \1 \2'
    let step3 = sub_pairs(&step2, period_comma, |c| !digit(c), space_before_both);
    // ([0-9])(-) -> '\1 \2 '
    let step4 = sub_pairs(&step3, digit, |c| c == '-', space_both);
    join_words(&step4)
}

/// `tokenizer_13a.Tokenizer13a`.
fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut chars = Vec::with_capacity(line.len() + 2);
    chars.push(' ');
    chars.extend(line.chars());
    chars.push(' ');
    regexp_post(&chars)
}

/// `tokenizer_intl.TokenizerV14International`.
fn tokenize_intl(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    // (\P{N})(\p{P}) -> '\1 \2 '
    let step1 = sub_pairs(&chars, |c| !is_number(c), is_punctuation, space_both);
    // (\p{P})(\P{N}) -> ' \1 \2'
    let step2 = sub_pairs(&step1, is_punctuation, |c| !is_number(c), space_before_both);
    // (\p{S}) -> ' \1 '
    let step3 = pad_chars(&step2, is_symbol);
    join_words(&step3)
}

/// `tokenizer_zh.TokenizerZh`.
fn tokenize_zh(line: &str) -> String {
    let line = strip(line);
    let mut chars = Vec::with_capacity(line.len() + 8);
    for c in line.chars() {
        if is_chinese(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    regexp_post(&chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings printed by sacreBLEU 2.6.0's tokenizers (Python).
    #[test]
    fn thirteen_a_numbers_and_entities() {
        let t = Tokenizer::Mteval13a;
        assert_eq!(t.tokenize("It costs 1,000.50 $ - yes."), "It costs 1,000.50 $ - yes .");
        assert_eq!(t.tokenize("a&amp;b &quot;x&quot; 3-4 e.g.,"), "a & b \" x \" 3 - 4 e . g . ,");
        assert_eq!(t.tokenize("<skipped>end 2."), "end 2 .");
    }

    #[test]
    fn zh_and_intl() {
        assert_eq!(Tokenizer::Zh.tokenize("我爱北京 2.5"), "我 爱 北 京 2.5");
        assert_eq!(Tokenizer::Intl.tokenize("«Hallo», 1.5€ 2019."), "« Hallo » , 1.5 € 2019.");
        assert_eq!(Tokenizer::Char.tokenize("ab c"), "a b   c");
    }

    #[test]
    fn names_round_trip() {
        for t in Tokenizer::ALL {
            assert_eq!(t.name().parse::<Tokenizer>().ok(), Some(t));
        }
        assert!("13b".parse::<Tokenizer>().is_err());
    }
}
