//! Python's number formatting and sacreBLEU's `Score.format` (`sacrebleu/metrics/base.py`).

use std::fmt::Write as _;

/// Python's `f"{x:.{precision}f}"`: the exact binary value rounded half to even, as Rust's
/// fixed-precision formatting also does.
pub(crate) fn py_fixed(x: f64, precision: usize) -> String {
    format!("{x:.precision$}")
}

/// Python's `repr(x)` for a float: the shortest digits that round-trip, in positional notation
/// for `1e-4 <= |x| < 1e16` (always with a `.`), in scientific notation otherwise (`1e-05`).
pub(crate) fn py_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".to_owned() } else { "-Infinity".to_owned() };
    }
    let a = x.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let s = format!("{x}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        // Rust: `1.234e-5`; Python: `1.234e-05`, `1e+16`.
        let s = format!("{x:e}");
        match s.split_once('e') {
            Some((mantissa, exp)) => {
                let (sign, digits) = match exp.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', exp),
                };
                format!("{mantissa}e{sign}{digits:0>2}")
            }
            None => s,
        }
    }
}

/// A JSON string literal as Python's `json.dumps(…, ensure_ascii=False)` writes it.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// sacreBLEU's `Score.format(width, score_only, signature, is_json)` for a score without
/// confidence intervals; `verbose` is the score's `_verbose` part (empty for chrF).
pub(crate) fn format_score(
    name: &str,
    score: f64,
    verbose: &str,
    width: usize,
    score_only: bool,
    signature: &str,
    json: bool,
) -> String {
    let sc = py_fixed(score, width);
    if score_only {
        return sc;
    }
    if json {
        // json.dumps(d, indent=1, ensure_ascii=False), keys in insertion order.
        let rounded: f64 = sc.parse().unwrap_or(score);
        let mut fields: Vec<(String, String)> = vec![
            ("name".into(), json_string(name)),
            ("score".into(), py_repr(rounded)),
            ("signature".into(), json_string(signature)),
        ];
        if !verbose.is_empty() {
            fields.push(("verbose_score".into(), json_string(verbose)));
        }
        for param in signature.split('|').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once(':').unwrap_or((param, ""));
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = json_string(value),
                None => fields.push((key.to_owned(), json_string(value))),
            }
        }
        let body: Vec<String> =
            fields.iter().map(|(k, v)| format!(" {}: {v}", json_string(k))).collect();
        return format!("{{\n{}\n}}", body.join(",\n"));
    }
    let mut full =
        if signature.is_empty() { name.to_owned() } else { format!("{name}|{signature}") };
    full.push_str(" = ");
    full.push_str(&sc);
    if !verbose.is_empty() {
        full.push(' ');
        full.push_str(verbose);
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rounds_like_python() {
        // Python: f"{x:.2f}", f"{x:.1f}", f"{x:.0f}".
        let cases = [
            (0.125, "0.12", "0.1", "0"),
            (0.375, "0.38", "0.4", "0"),
            (2.5, "2.50", "2.5", "2"),
            (1.5, "1.50", "1.5", "2"),
            (29.445, "29.45", "29.4", "29"),
            (0.05, "0.05", "0.1", "0"),
        ];
        for (x, two, one, zero) in cases {
            assert_eq!((py_fixed(x, 2).as_str(), py_fixed(x, 1).as_str()), (two, one), "{x}");
            assert_eq!(py_fixed(x, 0), zero, "{x}");
        }
    }

    #[test]
    fn repr_like_python() {
        assert_eq!(py_repr(29.4), "29.4");
        assert_eq!(py_repr(100.0), "100.0");
        assert_eq!(py_repr(0.0), "0.0");
        assert_eq!(py_repr(1.234e-5), "1.234e-05");
        assert_eq!(py_repr(1e-5), "1e-05");
        assert_eq!(py_repr(0.0001), "0.0001");
        assert_eq!(py_repr(1e16), "1e+16");
    }

    #[test]
    fn json_strings_escape_like_python() {
        assert_eq!(json_string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
