//! OSIS markup → clean plain text.
//!
//! What the SWORD Bible modules contain (counted on engKJV2006eb and spaRV1909eb): `<w>`
//! (Strong's lemmas and morphology in attributes), `<transChange>`, `<divineName>`, `<q
//! who="Jesus">`, `<seg>`, `<foreign>`, `<note>` (with `<reference>` inside), `<title>`,
//! `<milestone/>`, `<div/>`, `<chapter/>`, `<lg/>`, `<l/>`, `<lb/>`, plus stray `\nd`
//! markers (a `<divineName>` start tag lost in conversion) and the pilcrow `¶` in the KJV.
//!
//! Rules:
//! - `<note>…</note>` is dropped with its content; `<title>…</title>` too, except canonical
//!   titles (`canonical="true"`: the Psalm superscriptions, which are scripture text and
//!   which RV1909 keeps inside verse 1) when [`CleanOptions::keep_canonical_titles`] is set.
//! - Tags never glue words and never split them: inline elements (`w`, `transChange`,
//!   `divineName`, `q`, `seg`, `foreign`, `hi`, …) are removed without a trace, because in
//!   these modules they can sit inside a word (`tear</w>s`, `repartiéron<transChange>lo`);
//!   but where an end tag is directly followed by a start tag (`de</transChange><w>toda`)
//!   and around every other element (milestones, divisions, line breaks, notes, titles),
//!   a *soft space* is inserted. A soft space becomes a real space only between two
//!   non-space characters, and not before closing punctuation (`, . ; : ! ? ) ] » ’ ”`) or
//!   after opening punctuation (`¡ ¿ ( [ « ‘ “`).
//! - Entities (`&amp; &lt; &gt; &quot; &apos;`, decimal and hex) are decoded; `\nd`-style
//!   USFM leftovers and `¶` are removed; whitespace is collapsed and trimmed; the result is
//!   NFC.
//!
//! # Paragraph mode
//!
//! With [`CleanOptions::paragraphs`] (used by the English LM corpus), block-level markup
//! ends a paragraph instead of inserting a soft space, and paragraphs come out separated by
//! `\n`: `<div>` of any type except `x-milestone` (`x-p`, `introduction`, `book`, …),
//! `<p>`, `<lb type="x-p"/>`, `<lg>`, `<list>`, `<item>`, `<table>`, `<row>`, `<chapter>`,
//! a dropped `<title>`, and the KJV's `¶`. Table cells and poetry lines (`<cell>`, `<l>`)
//! stay soft spaces. A break before the first or after the last text is kept as a leading
//! or trailing `\n`, so a caller that cleans entry by entry and joins the results with a
//! space knows where paragraphs started and ended.

use unicode_normalization::UnicodeNormalization;

/// Options of [`clean_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanOptions {
    /// Keep the content of `<title canonical="true">` (Psalm superscriptions).
    pub keep_canonical_titles: bool,
    /// Separate paragraphs with `\n` (see the module docs).
    pub paragraphs: bool,
}

impl Default for CleanOptions {
    fn default() -> Self {
        Self { keep_canonical_titles: true, paragraphs: false }
    }
}

impl CleanOptions {
    /// The defaults with paragraph mode on.
    pub fn paragraphs() -> Self {
        Self { paragraphs: true, ..Self::default() }
    }
}

/// Elements that are removed without inserting a separator (they may sit inside words).
const INLINE: &[&str] = &[
    "w",
    "transChange",
    "divineName",
    "q",
    "seg",
    "foreign",
    "hi",
    "name",
    "abbr",
    "catchWord",
    "rdg",
    "reference",
    "date",
    "index",
];

/// Soft space marker used internally (never present in cleaned input).
const SOFT: char = '\u{1}';
/// Paragraph break marker used internally (paragraph mode).
const PARA: char = '\u{2}';

const CLOSING_PUNCT: &[char] = &[',', '.', ';', ':', '!', '?', ')', ']', '»', '’', '”'];
const OPENING_PUNCT: &[char] = &['¡', '¿', '(', '[', '«', '‘', '“'];

/// Cleans one entry's OSIS markup with the default options.
pub fn clean(osis: &str) -> String {
    clean_with(osis, CleanOptions::default())
}

/// A parsed tag.
struct Tag<'a> {
    name: &'a str,
    attrs: &'a str,
    end: bool,
    empty: bool,
}

fn parse_tag(inner: &str) -> Tag<'_> {
    let (end, rest) = match inner.strip_prefix('/') {
        Some(r) => (true, r),
        None => (false, inner),
    };
    let (empty, rest) = match rest.strip_suffix('/') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start();
    let split = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    let (name, attrs) = rest.split_at(split);
    Tag { name, attrs, end, empty }
}

/// Whether an element ends a paragraph in paragraph mode.
fn is_block(tag: &Tag<'_>) -> bool {
    match tag.name {
        "p" | "lg" | "list" | "item" | "table" | "row" | "chapter" | "title" | "head" => true,
        "div" => !tag.attrs.contains("x-milestone"),
        "lb" => tag.attrs.contains("x-p"),
        _ => false,
    }
}

/// Cleans one entry's OSIS markup (see the module docs for the rules).
pub fn clean_with(osis: &str, options: CleanOptions) -> String {
    let para = options.paragraphs;
    let sep = |tag: &Tag<'_>| if para && is_block(tag) { PARA } else { SOFT };
    let mut buf = String::with_capacity(osis.len());
    // Name and depth of the element being skipped (note, title) with its content.
    let mut skipping: Option<(&str, usize)> = None;
    // True right after an end tag (no text since).
    let mut after_end_tag = false;
    let mut rest = osis;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skipping.is_none() {
                push_text(&mut buf, rest, para);
            }
            break;
        };
        let (text, tail) = rest.split_at(lt);
        if skipping.is_none() && !text.is_empty() {
            push_text(&mut buf, text, para);
            after_end_tag = false;
        }
        let Some(gt) = tail.find('>') else {
            // An unterminated tag: drop the rest.
            break;
        };
        let tag = parse_tag(&tail[1..gt]);
        rest = &tail[gt + 1..];
        if tag.name.starts_with('!') || tag.name.starts_with('?') {
            continue;
        }
        if let Some((name, depth)) = skipping.as_mut() {
            if tag.name == *name && !tag.empty {
                if tag.end {
                    *depth -= 1;
                    if *depth == 0 {
                        skipping = None;
                        buf.push(sep(&tag));
                        after_end_tag = true;
                    }
                } else {
                    *depth += 1;
                }
            }
            continue;
        }
        let skip = match tag.name {
            "note" => true,
            "title" => {
                !(options.keep_canonical_titles
                    && (tag.attrs.contains("canonical=\"true\"")
                        || tag.attrs.contains("canonical='true'")))
            }
            _ => false,
        };
        if skip && !tag.end {
            if !tag.empty {
                skipping = Some((tag.name, 1));
            }
            buf.push(sep(&tag));
            continue;
        }
        if INLINE.contains(&tag.name) {
            if !tag.end && after_end_tag {
                buf.push(SOFT);
            }
        } else {
            buf.push(sep(&tag));
        }
        after_end_tag = tag.end;
    }
    finish(&buf, para).nfc().collect()
}

/// Appends text: decodes entities, removes `\nd`-style markers and `¶` (a paragraph break
/// when `para`).
fn push_text(buf: &mut String, text: &str, para: bool) {
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '&' => {
                let tail = &text[i..];
                if let Some((decoded, len)) = decode_entity(tail) {
                    buf.push(decoded);
                    // Skip the rest of the entity (its first char was consumed).
                    while chars.peek().is_some_and(|&(j, _)| j < i + len) {
                        chars.next();
                    }
                } else {
                    buf.push('&');
                }
            }
            '\\' => {
                // A USFM marker such as `\nd`, `\nd*`, `\add`: letters then an optional `*`.
                let mut any = false;
                while chars.peek().is_some_and(|&(_, d)| d.is_ascii_alphanumeric()) {
                    chars.next();
                    any = true;
                }
                if any {
                    if chars.peek().is_some_and(|&(_, d)| d == '*') {
                        chars.next();
                    }
                    buf.push(SOFT);
                } else {
                    buf.push('\\');
                }
            }
            '¶' => buf.push(if para { PARA } else { SOFT }),
            SOFT => buf.push(' '),
            c if c.is_control() => buf.push(' '),
            c => buf.push(c),
        }
    }
}

/// Decodes an entity at the start of `s`; returns the character and the entity's length.
fn decode_entity(s: &str) -> Option<(char, usize)> {
    let semi = s.find(';').filter(|&i| i <= 12)?;
    let body = &s[1..semi];
    let c = match body {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        _ => {
            let num = body.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((c, semi + 1))
}

/// Resolves soft spaces and paragraph breaks, collapses whitespace, trims. With `para`, a
/// break before the first or after the last text becomes a leading or trailing `\n`.
fn finish(buf: &str, para: bool) -> String {
    #[derive(PartialEq, PartialOrd)]
    enum Pending {
        None,
        Soft,
        Hard,
        Para,
    }
    let mut out = String::with_capacity(buf.len());
    let mut pending = Pending::None;
    for c in buf.chars() {
        if c == SOFT {
            if pending == Pending::None {
                pending = Pending::Soft;
            }
        } else if c == PARA {
            pending = Pending::Para;
        } else if c.is_whitespace() {
            if pending < Pending::Hard {
                pending = Pending::Hard;
            }
        } else {
            let at_start = out.is_empty() || out == "\n";
            let space = match pending {
                Pending::None => false,
                Pending::Hard => !at_start,
                Pending::Para => {
                    if para && out != "\n" {
                        out.push('\n');
                    }
                    false
                }
                Pending::Soft => {
                    !at_start
                        && !CLOSING_PUNCT.contains(&c)
                        && !out.ends_with(|p: char| OPENING_PUNCT.contains(&p))
                }
            };
            if space {
                out.push(' ');
            }
            pending = Pending::None;
            out.push(c);
        }
    }
    if para && pending == Pending::Para && out != "\n" {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kjv_gen_1_1() {
        let s = "In the <w lemma=\"strong:H7225\">beginning</w> <w lemma=\"strong:H0430\">God</w> \
                 <w lemma=\"strong:H1254\">created</w> the <w lemma=\"strong:H8064\">heaven</w> \
                 <w lemma=\"strong:H0853\">and</w> the <w lemma=\"strong:H0776\">earth</w>. ";
        assert_eq!(clean(s), "In the beginning God created the heaven and the earth.");
    }

    #[test]
    fn notes_and_paragraph_markers() {
        // KJV Gen 2:3 (shortened), with a footnote and a paragraph end milestone.
        let s = "<w lemma=\"strong:H4399\">work</w> which <w lemma=\"strong:H0430\">God</w> \
                 <w lemma=\"strong:H1254\">created</w> and <w lemma=\"strong:H6213\">made</w>.\
                 <note placement=\"foot\"><reference type=\"annotateRef\">2.3 </reference>\
                 created…: Heb. created to make</note>  <div eID=\"gen12\" type=\"x-p\"/>";
        assert_eq!(clean(s), "work which God created and made.");
    }

    #[test]
    fn tags_inside_words_do_not_split_them() {
        // KJV Luke 7:38 and 13:14, Heb 4:13 fragments.
        let s = "<w lemma=\"strong:G4228\">feet</w> <w lemma=\"strong:G1144\">with tear</w>s, \
                 a sabbath <w lemma=\"strong:G4521\">day</w>’<w lemma=\"strong:G2192\">s</w> \
                 <w lemma=\"strong:G2596\">in</w>asmuch";
        assert_eq!(clean(s), "feet with tears, a sabbath day’s inasmuch");
        // RV1909: transChange glued to the verb on purpose.
        let s = "y repartiéron<transChange type=\"added\">lo</transChange> \
                 <w lemma=\"strong:H2505\">entre</w>";
        assert_eq!(clean(s), "y repartiéronlo entre");
    }

    #[test]
    fn adjacent_elements_do_not_glue_words() {
        // RV1909: an end tag directly followed by a start tag separates words.
        let s = "<transChange type=\"added\">habitantes de</transChange><w lemma=\"strong:H3605\">\
                 toda</w> <w lemma=\"strong:H0776\">la tierra</w>";
        assert_eq!(clean(s), "habitantes de toda la tierra");
        let s = "<w lemma=\"strong:H5921\">su misericordia</w><transChange type=\"added\">es\
                 </transChange><w lemma=\"strong:H5769\">eterna</w>.";
        assert_eq!(clean(s), "su misericordia es eterna.");
        // But not before punctuation, nor after opening punctuation.
        let s = "the <divineName><w lemma=\"strong:H3068\">LORD</w></divineName>, ¡<w>OH</w> \
                 <w>Jehová</w>! ¿<transChange>Qué</transChange><w>es</w>?";
        assert_eq!(clean(s), "the LORD, ¡OH Jehová! ¿Qué es?");
    }

    #[test]
    fn stray_nd_markers_and_pilcrows() {
        // KJV Exod 6:3 fragment: `\nd` stands for a lost <divineName> start tag.
        let s = "but by my <w lemma=\"strong:H8034\">name</w> \\nd <w lemma=\"strong:H3068\">\
                 JEHOVAH</w></divineName> was I not";
        assert_eq!(clean(s), "but by my name JEHOVAH was I not");
        assert_eq!(clean("¶ Now the \\nd*LORD had"), "Now the LORD had");
        assert_eq!(clean("a \\ b"), "a \\ b");
    }

    #[test]
    fn titles() {
        // KJV Ps 3:1: canonical superscription kept, structural markup dropped.
        let s = "<div type=\"x-milestone\" subType=\"x-preverse\" sID=\"pv2099\"/><title \
                 canonical=\"true\" type=\"psalm\">A <w lemma=\"strong:H4210\">Psalm</w> of \
                 <w lemma=\"strong:H1732\">David</w>.</title> <lg sID=\"gen2600\"/> <l level=\"1\" \
                 sID=\"gen2601\"/> <div type=\"x-milestone\" subType=\"x-preverse\" \
                 eID=\"pv2099\"/><divineName><w lemma=\"strong:H3068\">LORD</w></divineName>, how \
                 are they <w lemma=\"strong:H7231\">increased</w>! <l eID=\"gen2601\" level=\"1\"/>";
        assert_eq!(clean(s), "A Psalm of David. LORD, how are they increased!");
        let drop_all = CleanOptions { keep_canonical_titles: false, ..CleanOptions::default() };
        assert_eq!(clean_with(s, drop_all), "LORD, how are they increased!");
        // Ps 119 acrostic headings are not canonical: dropped.
        let s = "<title><foreign>א ALEPH.</foreign></title> <lg sID=\"gen4634\"/> <l level=\"1\" \
                 sID=\"gen4635\"/> Blessed <transChange type=\"added\">are</transChange> the";
        assert_eq!(clean(s), "Blessed are the");
        // A book heading entry cleans to nothing but milestones' attributes never leak.
        let s = "<div canonical=\"true\" osisID=\"Gen\" sID=\"gen2\" type=\"book\"/> <milestone \
                 n=\"Genesis\" type=\"x-usfm-h\"/> <title level=\"1\" type=\"main\">The First \
                 Book of Moses, called Genesis</title> <div sID=\"gen3\" type=\"x-p\"/> ";
        assert_eq!(clean(s), "");
    }

    #[test]
    fn line_breaks_separate_words() {
        assert_eq!(clean("one<lb type=\"x-p\"/>two<l eID=\"x\"/>three"), "one two three");
        assert_eq!(clean("one<lb/>, two"), "one, two");
    }

    #[test]
    fn entities_and_whitespace() {
        assert_eq!(clean("a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos;"), "a & b <c> \"d\" 'e'");
        assert_eq!(clean("&#233;l &#xE9;l &bogus; &"), "él él &bogus; &");
        assert_eq!(clean("  a \n\t b  "), "a b");
        // NFC: e + combining acute becomes é.
        assert_eq!(clean("Jehove\u{301}"), "Jehov\u{e9}");
    }

    #[test]
    fn paragraph_mode_on_real_snippets() {
        let p = CleanOptions::paragraphs();
        // MHCC Gen 1:1 (shortened): introduction, outline table, bold verse label, comment.
        let s = "<div type=\"x-milestone\" subType=\"x-preverse\" sID=\"pv1\"/><title \
                 type=\"x-ms\">Genesis</title> <div sID=\"gen3\" type=\"introduction\"/> <div \
                 sID=\"gen4\" type=\"x-p\"/> Genesis is a name taken from the Greek. <div \
                 eID=\"gen4\" type=\"x-p\"/> <table> <row><cell>God creates heaven and \
                 earth.</cell><cell>(1-2)</cell></row> </table> <table> <row><cell>The creation \
                 of light.</cell><cell>(3-5)</cell></row> </table> <div sID=\"gen15\" \
                 type=\"x-p\"/> <div type=\"x-milestone\" subType=\"x-preverse\" \
                 eID=\"pv1\"/><hi type=\"bold\">Verses 1-2</hi> <div eID=\"gen15\" type=\"x-p\"/> \
                 <div sID=\"gen17\" type=\"x-p\"/> The first verse of the Bible.";
        assert_eq!(
            clean_with(s, p),
            "\nGenesis is a name taken from the Greek.\nGod creates heaven and earth. (1-2)\n\
             The creation of light. (3-5)\nVerses 1-2\nThe first verse of the Bible."
        );
        // The same without paragraph mode: one line, as before.
        assert!(!clean(s).contains('\n'));
        // Scofield Gen 1:2: the commented phrase, then a list with references.
        let s = "<hi type=\"bold\">day</hi><div eID=\"gen11\" type=\"x-p\"/> <div sID=\"gen12\" \
                 type=\"x-p\"/> The word \"day\" is used in three ways:<div eID=\"gen12\" \
                 type=\"x-p\"/> <list> <item type=\"x-indent-1\">(1) that part of the solar day \
                 <reference osisRef=\"ge 1:5 ge 1:14\">Genesis 1:5</reference>;</item></list>";
        assert_eq!(
            clean_with(s, p),
            "day\nThe word \"day\" is used in three ways:\n(1) that part of the solar day \
             Genesis 1:5;\n"
        );
        // WEB Gen 1:2-3: a paragraph ends after verse 2; verse 3 starts one; <w> glued.
        let s = "The</w> earth</w> was</w> formless</w>. <div eID=\"gen25\" type=\"x-p\"/>";
        assert_eq!(clean_with(s, p), "The earth was formless.\n");
        let s = "<div type=\"x-milestone\" subType=\"x-preverse\" sID=\"pv1\"/><div sID=\"gen26\" \
                 type=\"x-p\"/><div type=\"x-milestone\" subType=\"x-preverse\" \
                 eID=\"pv1\"/>God</w> said</w>, “Let</w> there</w> be</w> light</w>,”";
        assert_eq!(clean_with(s, p), "\nGod said, “Let there be light,”");
        // KJV: the pilcrow opens a paragraph; poetry lines stay in one.
        assert_eq!(clean_with("¶ And God said", p), "\nAnd God said");
        assert_eq!(clean_with("one<l eID=\"a\"/>two<lg eID=\"b\"/>", p), "one two\n");
        // A markup-only entry that ends a paragraph still says so.
        assert_eq!(clean_with("<div eID=\"gen34\" type=\"x-p\"/>", p), "\n");
        assert_eq!(clean_with("<chapter osisID=\"Gen.1\"/> ", p), "\n");
        // Notes never break paragraphs.
        assert_eq!(clean_with("a<note>x</note> b", p), "a b");
    }

    #[test]
    fn malformed_markup_does_not_panic() {
        assert_eq!(clean("a <w"), "a");
        assert_eq!(clean("<note>never closed"), "");
        assert_eq!(clean("x</w>y"), "xy");
        assert_eq!(clean("<note><note>a</note>b</note>c"), "c");
        assert_eq!(clean("é&"), "é&");
        assert_eq!(clean("&#xFFFFFFFF; &#;"), "&#xFFFFFFFF; &#;");
    }
}
