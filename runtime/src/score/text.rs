//! Python's string operations as sacreBLEU uses them: `str.split()`, `str.strip()`,
//! `str.rstrip()`, `str.lower()`, with CPython 3.11's character tables (see
//! `unicode_tables.rs`, generated from Python, so the result does not depend on the Unicode
//! version of the Rust standard library).

use super::unicode_tables::{
    CASE_IGNORABLE, CASED, CHINESE, LOWER_MULTI, LOWER_SINGLE, NUMBER, PUNCTUATION, SYMBOL,
    WHITESPACE,
};

/// Whether `c` lies in one of the sorted, disjoint inclusive `ranges`.
pub(crate) fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    let c = c as u32;
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Python's `str.isspace()` for one character.
#[inline]
pub(crate) fn is_space(c: char) -> bool {
    if c.is_ascii() {
        matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f')
    } else {
        in_ranges(c, WHITESPACE)
    }
}

/// `\p{N}` of the `regex` module.
#[inline]
pub(crate) fn is_number(c: char) -> bool {
    if c.is_ascii() { c.is_ascii_digit() } else { in_ranges(c, NUMBER) }
}

/// `\p{P}` of the `regex` module.
#[inline]
pub(crate) fn is_punctuation(c: char) -> bool {
    in_ranges(c, PUNCTUATION)
}

/// `\p{S}` of the `regex` module.
#[inline]
pub(crate) fn is_symbol(c: char) -> bool {
    in_ranges(c, SYMBOL)
}

/// sacreBLEU's `TokenizerZh._is_chinese_char`.
#[inline]
pub(crate) fn is_chinese(c: char) -> bool {
    !c.is_ascii() && in_ranges(c, CHINESE)
}

/// Python's `str.split()` with no argument: runs of whitespace separate, none are kept.
pub(crate) fn split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|t| !t.is_empty())
}

/// Python's `str.rstrip()`.
pub(crate) fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_space)
}

/// Python's `str.strip()`.
pub(crate) fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `str.lower()`, including the Final_Sigma rule for U+03A3.
pub(crate) fn lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if c == '\u{3a3}' {
            out.push(if final_sigma(&chars, i) { '\u{3c2}' } else { '\u{3c3}' });
        } else if let Ok(k) = LOWER_SINGLE.binary_search_by_key(&(c as u32), |&(from, _)| from) {
            // The table holds only valid scalar values (generated from Python's chr()).
            out.push(char::from_u32(LOWER_SINGLE[k].1).unwrap_or(c));
        } else if let Ok(k) = LOWER_MULTI.binary_search_by_key(&(c as u32), |&(from, _)| from) {
            out.push_str(LOWER_MULTI[k].1);
        } else {
            out.push(c);
        }
    }
    out
}

/// CPython's `handle_capital_sigma`: `\p{cased}\p{case-ignorable}*Σ!(\p{case-ignorable}*\p{cased})`.
fn final_sigma(chars: &[char], i: usize) -> bool {
    let ignorable = |c: char| in_ranges(c, CASE_IGNORABLE);
    let cased = |c: char| in_ranges(c, CASED);
    let before = chars[..i].iter().rev().find(|&&c| !ignorable(c));
    let mut final_sigma = matches!(before, Some(&c) if cased(c));
    if final_sigma {
        let after = chars[i + 1..].iter().find(|&&c| !ignorable(c));
        final_sigma = match after {
            None => true,
            Some(&c) => !cased(c),
        };
    }
    final_sigma
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators_but_not_zero_width_space() {
        let words: Vec<&str> = split_whitespace(" a\x1cb\u{85}c\u{3000}d\u{200b}e ").collect();
        assert_eq!(words, ["a", "b", "c", "d\u{200b}e"]);
        assert_eq!(rstrip("x \u{a0}\n"), "x");
        assert_eq!(strip("\u{2028} x \t"), "x");
    }

    #[test]
    fn lower_matches_python() {
        // Expected values printed by CPython 3.11's str.lower().
        assert_eq!(lower("ÀB İ"), "àb i\u{307}");
        assert_eq!(lower("ΟΔΟΣ ΣΑ Σ"), "οδος σα σ");
        assert_eq!(lower("AΣ.A"), "aσ.a");
        assert_eq!(lower("AΣ A"), "aς a");
        assert_eq!(lower("AΣ'A"), "aσ'a");
    }
}
