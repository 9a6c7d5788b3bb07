//! Versifications (the SWORD `KJV` and `NRSVA` systems): books, verses per chapter, and the
//! layout of a SWORD verse index (`ot.bzv` / `nt.bzv`) with its heading entries.
//!
//! The verse counts are public-domain versification data (the same numbers as SWORD's
//! `canon.h` and `canon_nrsva.h`). KJV: 39 Old Testament books, 929 chapters, 23,145 verses;
//! 27 New Testament books, 260 chapters, 7,957 verses; 31,102 verses in all. NRSVA (used by
//! the World English Bible module) is the KJV plus 17 deuterocanonical books after Malachi
//! ([`NRSVA_DEUTEROCANON`], 183 chapters, 6,687 verses) and two New Testament verses more
//! (3 John 1:15, Revelation 12:18): OT 31,027 index entries, NT 8,248.
//!
//! # Index layout
//!
//! Each testament has its own verse index. Its entries are, in order:
//!
//! 1. entry 0: the module heading slot (empty in practice; present in *both* files),
//! 2. entry 1: the testament heading (for the modules here: an `x-importer` milestone),
//! 3. per book: one book heading entry, then per chapter one chapter heading entry followed by
//!    the chapter's verses.
//!
//! So OT = 2 + 39 + 929 + 23,145 = 24,115 entries and NT = 2 + 27 + 260 + 7,957 = 8,246
//! entries: 32,361 in all, of which 4 + 66 + 1,189 = 1,259 are headings.
//! [`Versification`] numbers the entries of both files globally: OT first, then NT.

use std::fmt;

/// One book of a versification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Book {
    /// OSIS book id, e.g. `Gen`.
    pub osis: &'static str,
    /// English name, e.g. `Genesis`.
    pub name: &'static str,
    /// Number of verses of each chapter (chapter 1 first).
    pub verses: &'static [u16],
}

/// Number of Old Testament books in [`KJV_BOOKS`] (the first 39).
pub const KJV_OT_BOOKS: usize = 39;

/// The 66 books of the KJV versification with their verses per chapter.
pub static KJV_BOOKS: [Book; 66] = [
    Book {
        osis: "Gen",
        name: "Genesis",
        verses: &[
            31, 25, 24, 26, 32, 22, 24, 22, 29, 32, 32, 20, 18, 24, 21, 16, 27, 33, 38, 18, 34, 24,
            20, 67, 34, 35, 46, 22, 35, 43, 55, 32, 20, 31, 29, 43, 36, 30, 23, 23, 57, 38, 34, 34,
            28, 34, 31, 22, 33, 26,
        ],
    },
    Book {
        osis: "Exod",
        name: "Exodus",
        verses: &[
            22, 25, 22, 31, 23, 30, 25, 32, 35, 29, 10, 51, 22, 31, 27, 36, 16, 27, 25, 26, 36, 31,
            33, 18, 40, 37, 21, 43, 46, 38, 18, 35, 23, 35, 35, 38, 29, 31, 43, 38,
        ],
    },
    Book {
        osis: "Lev",
        name: "Leviticus",
        verses: &[
            17, 16, 17, 35, 19, 30, 38, 36, 24, 20, 47, 8, 59, 57, 33, 34, 16, 30, 37, 27, 24, 33,
            44, 23, 55, 46, 34,
        ],
    },
    Book {
        osis: "Num",
        name: "Numbers",
        verses: &[
            54, 34, 51, 49, 31, 27, 89, 26, 23, 36, 35, 16, 33, 45, 41, 50, 13, 32, 22, 29, 35, 41,
            30, 25, 18, 65, 23, 31, 40, 16, 54, 42, 56, 29, 34, 13,
        ],
    },
    Book {
        osis: "Deut",
        name: "Deuteronomy",
        verses: &[
            46, 37, 29, 49, 33, 25, 26, 20, 29, 22, 32, 32, 18, 29, 23, 22, 20, 22, 21, 20, 23, 30,
            25, 22, 19, 19, 26, 68, 29, 20, 30, 52, 29, 12,
        ],
    },
    Book {
        osis: "Josh",
        name: "Joshua",
        verses: &[
            18, 24, 17, 24, 15, 27, 26, 35, 27, 43, 23, 24, 33, 15, 63, 10, 18, 28, 51, 9, 45, 34,
            16, 33,
        ],
    },
    Book {
        osis: "Judg",
        name: "Judges",
        verses: &[
            36, 23, 31, 24, 31, 40, 25, 35, 57, 18, 40, 15, 25, 20, 20, 31, 13, 31, 30, 48, 25,
        ],
    },
    Book { osis: "Ruth", name: "Ruth", verses: &[22, 23, 18, 22] },
    Book {
        osis: "1Sam",
        name: "1 Samuel",
        verses: &[
            28, 36, 21, 22, 12, 21, 17, 22, 27, 27, 15, 25, 23, 52, 35, 23, 58, 30, 24, 42, 15, 23,
            29, 22, 44, 25, 12, 25, 11, 31, 13,
        ],
    },
    Book {
        osis: "2Sam",
        name: "2 Samuel",
        verses: &[
            27, 32, 39, 12, 25, 23, 29, 18, 13, 19, 27, 31, 39, 33, 37, 23, 29, 33, 43, 26, 22, 51,
            39, 25,
        ],
    },
    Book {
        osis: "1Kgs",
        name: "1 Kings",
        verses: &[
            53, 46, 28, 34, 18, 38, 51, 66, 28, 29, 43, 33, 34, 31, 34, 34, 24, 46, 21, 43, 29, 53,
        ],
    },
    Book {
        osis: "2Kgs",
        name: "2 Kings",
        verses: &[
            18, 25, 27, 44, 27, 33, 20, 29, 37, 36, 21, 21, 25, 29, 38, 20, 41, 37, 37, 21, 26, 20,
            37, 20, 30,
        ],
    },
    Book {
        osis: "1Chr",
        name: "1 Chronicles",
        verses: &[
            54, 55, 24, 43, 26, 81, 40, 40, 44, 14, 47, 40, 14, 17, 29, 43, 27, 17, 19, 8, 30, 19,
            32, 31, 31, 32, 34, 21, 30,
        ],
    },
    Book {
        osis: "2Chr",
        name: "2 Chronicles",
        verses: &[
            17, 18, 17, 22, 14, 42, 22, 18, 31, 19, 23, 16, 22, 15, 19, 14, 19, 34, 11, 37, 20, 12,
            21, 27, 28, 23, 9, 27, 36, 27, 21, 33, 25, 33, 27, 23,
        ],
    },
    Book { osis: "Ezra", name: "Ezra", verses: &[11, 70, 13, 24, 17, 22, 28, 36, 15, 44] },
    Book {
        osis: "Neh",
        name: "Nehemiah",
        verses: &[11, 20, 32, 23, 19, 19, 73, 18, 38, 39, 36, 47, 31],
    },
    Book { osis: "Esth", name: "Esther", verses: &[22, 23, 15, 17, 14, 14, 10, 17, 32, 3] },
    Book {
        osis: "Job",
        name: "Job",
        verses: &[
            22, 13, 26, 21, 27, 30, 21, 22, 35, 22, 20, 25, 28, 22, 35, 22, 16, 21, 29, 29, 34, 30,
            17, 25, 6, 14, 23, 28, 25, 31, 40, 22, 33, 37, 16, 33, 24, 41, 30, 24, 34, 17,
        ],
    },
    Book {
        osis: "Ps",
        name: "Psalms",
        verses: &[
            6, 12, 8, 8, 12, 10, 17, 9, 20, 18, 7, 8, 6, 7, 5, 11, 15, 50, 14, 9, 13, 31, 6, 10,
            22, 12, 14, 9, 11, 12, 24, 11, 22, 22, 28, 12, 40, 22, 13, 17, 13, 11, 5, 26, 17, 11,
            9, 14, 20, 23, 19, 9, 6, 7, 23, 13, 11, 11, 17, 12, 8, 12, 11, 10, 13, 20, 7, 35, 36,
            5, 24, 20, 28, 23, 10, 12, 20, 72, 13, 19, 16, 8, 18, 12, 13, 17, 7, 18, 52, 17, 16,
            15, 5, 23, 11, 13, 12, 9, 9, 5, 8, 28, 22, 35, 45, 48, 43, 13, 31, 7, 10, 10, 9, 8, 18,
            19, 2, 29, 176, 7, 8, 9, 4, 8, 5, 6, 5, 6, 8, 8, 3, 18, 3, 3, 21, 26, 9, 8, 24, 13, 10,
            7, 12, 15, 21, 10, 20, 14, 9, 6,
        ],
    },
    Book {
        osis: "Prov",
        name: "Proverbs",
        verses: &[
            33, 22, 35, 27, 23, 35, 27, 36, 18, 32, 31, 28, 25, 35, 33, 33, 28, 24, 29, 30, 31, 29,
            35, 34, 28, 28, 27, 28, 27, 33, 31,
        ],
    },
    Book {
        osis: "Eccl",
        name: "Ecclesiastes",
        verses: &[18, 26, 22, 16, 20, 12, 29, 17, 18, 20, 10, 14],
    },
    Book { osis: "Song", name: "Song of Solomon", verses: &[17, 17, 11, 16, 16, 13, 13, 14] },
    Book {
        osis: "Isa",
        name: "Isaiah",
        verses: &[
            31, 22, 26, 6, 30, 13, 25, 22, 21, 34, 16, 6, 22, 32, 9, 14, 14, 7, 25, 6, 17, 25, 18,
            23, 12, 21, 13, 29, 24, 33, 9, 20, 24, 17, 10, 22, 38, 22, 8, 31, 29, 25, 28, 28, 25,
            13, 15, 22, 26, 11, 23, 15, 12, 17, 13, 12, 21, 14, 21, 22, 11, 12, 19, 12, 25, 24,
        ],
    },
    Book {
        osis: "Jer",
        name: "Jeremiah",
        verses: &[
            19, 37, 25, 31, 31, 30, 34, 22, 26, 25, 23, 17, 27, 22, 21, 21, 27, 23, 15, 18, 14, 30,
            40, 10, 38, 24, 22, 17, 32, 24, 40, 44, 26, 22, 19, 32, 21, 28, 18, 16, 18, 22, 13, 30,
            5, 28, 7, 47, 39, 46, 64, 34,
        ],
    },
    Book { osis: "Lam", name: "Lamentations", verses: &[22, 22, 66, 22, 22] },
    Book {
        osis: "Ezek",
        name: "Ezekiel",
        verses: &[
            28, 10, 27, 17, 17, 14, 27, 18, 11, 22, 25, 28, 23, 23, 8, 63, 24, 32, 14, 49, 32, 31,
            49, 27, 17, 21, 36, 26, 21, 26, 18, 32, 33, 31, 15, 38, 28, 23, 29, 49, 26, 20, 27, 31,
            25, 24, 23, 35,
        ],
    },
    Book { osis: "Dan", name: "Daniel", verses: &[21, 49, 30, 37, 31, 28, 28, 27, 27, 21, 45, 13] },
    Book {
        osis: "Hos",
        name: "Hosea",
        verses: &[11, 23, 5, 19, 15, 11, 16, 14, 17, 15, 12, 14, 16, 9],
    },
    Book { osis: "Joel", name: "Joel", verses: &[20, 32, 21] },
    Book { osis: "Amos", name: "Amos", verses: &[15, 16, 15, 13, 27, 14, 17, 14, 15] },
    Book { osis: "Obad", name: "Obadiah", verses: &[21] },
    Book { osis: "Jonah", name: "Jonah", verses: &[17, 10, 10, 11] },
    Book { osis: "Mic", name: "Micah", verses: &[16, 13, 12, 13, 15, 16, 20] },
    Book { osis: "Nah", name: "Nahum", verses: &[15, 13, 19] },
    Book { osis: "Hab", name: "Habakkuk", verses: &[17, 20, 19] },
    Book { osis: "Zeph", name: "Zephaniah", verses: &[18, 15, 20] },
    Book { osis: "Hag", name: "Haggai", verses: &[15, 23] },
    Book {
        osis: "Zech",
        name: "Zechariah",
        verses: &[21, 13, 10, 14, 11, 15, 14, 23, 17, 12, 17, 14, 9, 21],
    },
    Book { osis: "Mal", name: "Malachi", verses: &[14, 17, 18, 6] },
    Book {
        osis: "Matt",
        name: "Matthew",
        verses: &[
            25, 23, 17, 25, 48, 34, 29, 34, 38, 42, 30, 50, 58, 36, 39, 28, 27, 35, 30, 34, 46, 46,
            39, 51, 46, 75, 66, 20,
        ],
    },
    Book {
        osis: "Mark",
        name: "Mark",
        verses: &[45, 28, 35, 41, 43, 56, 37, 38, 50, 52, 33, 44, 37, 72, 47, 20],
    },
    Book {
        osis: "Luke",
        name: "Luke",
        verses: &[
            80, 52, 38, 44, 39, 49, 50, 56, 62, 42, 54, 59, 35, 35, 32, 31, 37, 43, 48, 47, 38, 71,
            56, 53,
        ],
    },
    Book {
        osis: "John",
        name: "John",
        verses: &[
            51, 25, 36, 54, 47, 71, 53, 59, 41, 42, 57, 50, 38, 31, 27, 33, 26, 40, 42, 31, 25,
        ],
    },
    Book {
        osis: "Acts",
        name: "Acts",
        verses: &[
            26, 47, 26, 37, 42, 15, 60, 40, 43, 48, 30, 25, 52, 28, 41, 40, 34, 28, 41, 38, 40, 30,
            35, 27, 27, 32, 44, 31,
        ],
    },
    Book {
        osis: "Rom",
        name: "Romans",
        verses: &[32, 29, 31, 25, 21, 23, 25, 39, 33, 21, 36, 21, 14, 23, 33, 27],
    },
    Book {
        osis: "1Cor",
        name: "1 Corinthians",
        verses: &[31, 16, 23, 21, 13, 20, 40, 13, 27, 33, 34, 31, 13, 40, 58, 24],
    },
    Book {
        osis: "2Cor",
        name: "2 Corinthians",
        verses: &[24, 17, 18, 18, 21, 18, 16, 24, 15, 18, 33, 21, 14],
    },
    Book { osis: "Gal", name: "Galatians", verses: &[24, 21, 29, 31, 26, 18] },
    Book { osis: "Eph", name: "Ephesians", verses: &[23, 22, 21, 32, 33, 24] },
    Book { osis: "Phil", name: "Philippians", verses: &[30, 30, 21, 23] },
    Book { osis: "Col", name: "Colossians", verses: &[29, 23, 25, 18] },
    Book { osis: "1Thess", name: "1 Thessalonians", verses: &[10, 20, 13, 18, 28] },
    Book { osis: "2Thess", name: "2 Thessalonians", verses: &[12, 17, 18] },
    Book { osis: "1Tim", name: "1 Timothy", verses: &[20, 15, 16, 16, 25, 21] },
    Book { osis: "2Tim", name: "2 Timothy", verses: &[18, 26, 17, 22] },
    Book { osis: "Titus", name: "Titus", verses: &[16, 15, 15] },
    Book { osis: "Phlm", name: "Philemon", verses: &[25] },
    Book {
        osis: "Heb",
        name: "Hebrews",
        verses: &[14, 18, 19, 16, 14, 20, 28, 13, 28, 39, 40, 29, 25],
    },
    Book { osis: "Jas", name: "James", verses: &[27, 26, 18, 17, 20] },
    Book { osis: "1Pet", name: "1 Peter", verses: &[25, 25, 22, 19, 14] },
    Book { osis: "2Pet", name: "2 Peter", verses: &[21, 22, 18] },
    Book { osis: "1John", name: "1 John", verses: &[10, 29, 24, 21, 21] },
    Book { osis: "2John", name: "2 John", verses: &[13] },
    Book { osis: "3John", name: "3 John", verses: &[14] },
    Book { osis: "Jude", name: "Jude", verses: &[25] },
    Book {
        osis: "Rev",
        name: "Revelation of John",
        verses: &[
            20, 29, 22, 11, 14, 17, 17, 13, 21, 11, 19, 17, 18, 20, 8, 21, 18, 24, 21, 15, 27, 21,
        ],
    },
];

/// The deuterocanonical books of the NRSVA versification, in its order (after Malachi).
pub static NRSVA_DEUTEROCANON: [Book; 17] = [
    Book {
        osis: "Tob",
        name: "Tobit",
        verses: &[22, 14, 17, 21, 22, 18, 16, 21, 6, 13, 18, 22, 17, 15],
    },
    Book {
        osis: "Jdt",
        name: "Judith",
        verses: &[16, 28, 10, 15, 24, 21, 32, 36, 14, 23, 23, 20, 20, 19, 14, 25],
    },
    Book {
        osis: "EsthGr",
        name: "Esther (Greek)",
        verses: &[22, 23, 15, 17, 14, 14, 10, 17, 32, 13, 12, 6, 18, 19, 16, 24],
    },
    Book {
        osis: "Wis",
        name: "Wisdom",
        verses: &[16, 24, 19, 20, 23, 25, 30, 21, 18, 21, 26, 27, 19, 31, 19, 29, 21, 25, 22],
    },
    Book {
        osis: "Sir",
        name: "Sirach",
        verses: &[
            30, 18, 31, 31, 15, 37, 36, 19, 18, 31, 34, 18, 26, 27, 20, 30, 32, 33, 30, 31, 28, 27,
            27, 34, 26, 29, 30, 26, 28, 25, 31, 24, 33, 31, 26, 31, 31, 34, 35, 30, 22, 25, 33, 23,
            26, 20, 25, 25, 16, 29, 30,
        ],
    },
    Book { osis: "Bar", name: "Baruch", verses: &[22, 35, 37, 37, 9, 73] },
    Book { osis: "PrAzar", name: "Prayer of Azariah", verses: &[68] },
    Book { osis: "Sus", name: "Susanna", verses: &[64] },
    Book { osis: "Bel", name: "Bel and the Dragon", verses: &[42] },
    Book {
        osis: "1Macc",
        name: "1 Maccabees",
        verses: &[64, 70, 60, 61, 68, 63, 50, 32, 73, 89, 74, 53, 53, 49, 41, 24],
    },
    Book {
        osis: "2Macc",
        name: "2 Maccabees",
        verses: &[36, 32, 40, 50, 27, 31, 42, 36, 29, 38, 38, 45, 26, 46, 39],
    },
    Book { osis: "1Esd", name: "1 Esdras", verses: &[58, 30, 24, 63, 73, 34, 15, 96, 55] },
    Book { osis: "PrMan", name: "Prayer of Manasses", verses: &[15] },
    Book { osis: "AddPs", name: "Additional Psalm", verses: &[7] },
    Book { osis: "3Macc", name: "3 Maccabees", verses: &[29, 33, 30, 21, 51, 41, 23] },
    Book {
        osis: "2Esd",
        name: "2 Esdras",
        verses: &[40, 48, 36, 52, 56, 59, 140, 63, 47, 59, 46, 51, 58, 48, 63, 78],
    },
    Book {
        osis: "4Macc",
        name: "4 Maccabees",
        verses: &[35, 24, 21, 26, 38, 35, 23, 29, 32, 21, 27, 19, 27, 20, 32, 25, 24, 24],
    },
];

/// NRSVA's 3 John: 15 verses (the KJV has 14).
const NRSVA_3JOHN: Book = Book { osis: "3John", name: "3 John", verses: &[15] };
/// NRSVA's Revelation: chapter 12 has 18 verses (the KJV has 17).
const NRSVA_REV: Book = Book {
    osis: "Rev",
    name: "Revelation of John",
    verses: &[
        20, 29, 22, 11, 14, 17, 17, 13, 21, 11, 19, 18, 18, 20, 8, 21, 18, 24, 21, 15, 27, 21,
    ],
};

/// A testament: each has its own verse index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Testament {
    /// The Old Testament (`ot.*` files).
    Old,
    /// The New Testament (`nt.*` files).
    New,
}

impl Testament {
    /// Both testaments, OT first.
    pub const ALL: [Testament; 2] = [Testament::Old, Testament::New];

    /// The file prefix used by SWORD: `ot` or `nt`.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Testament::Old => "ot",
            Testament::New => "nt",
        }
    }
}

/// A verse reference: book index into the versification's book list, 1-based chapter and
/// verse. Its `Display` (`Gen.1.1`) names the book by the KJV list; for another versification
/// use [`Versification::osis_ref`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerseRef {
    /// Index of the book in the versification (0 = Genesis for KJV).
    pub book: u8,
    /// Chapter, from 1.
    pub chapter: u16,
    /// Verse, from 1.
    pub verse: u16,
}

impl VerseRef {
    /// The OSIS id of this reference in the KJV versification, e.g. `Gen.1.1`.
    pub fn osis(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for VerseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let book = KJV_BOOKS.get(usize::from(self.book)).map_or("?", |b| b.osis);
        write!(f, "{book}.{}.{}", self.chapter, self.verse)
    }
}

/// What one entry of a verse index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Entry 0 of a testament's index: the module heading slot.
    ModuleHeading(Testament),
    /// Entry 1 of a testament's index: the testament heading.
    TestamentHeading(Testament),
    /// The entry before a book's first chapter (book index).
    BookHeading(u8),
    /// The entry before a chapter's first verse (book index, chapter).
    ChapterHeading(u8, u16),
    /// A verse.
    Verse(VerseRef),
}

impl EntryKind {
    /// Whether this entry is a heading (not a verse).
    pub fn is_heading(&self) -> bool {
        !matches!(self, EntryKind::Verse(_))
    }
}

/// One chapter: its book and number and the global entry index of its verse 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chapter {
    /// Book index.
    pub book: u8,
    /// Chapter number, from 1.
    pub chapter: u16,
    /// Global entry index of verse 1.
    pub first_verse: usize,
    /// Number of verses.
    pub verses: usize,
}

/// The entry layout of a SWORD module in a versification (see the module docs).
#[derive(Debug, Clone)]
pub struct Versification {
    name: &'static str,
    books: Vec<Book>,
    entries: Vec<EntryKind>,
    chapters: Vec<Chapter>,
    ot_len: usize,
}

impl Versification {
    /// The KJV versification.
    pub fn kjv() -> Self {
        Self::new("KJV", KJV_BOOKS.to_vec(), KJV_OT_BOOKS)
    }

    /// The NRSVA versification: the KJV's 39 OT books, the 17 of [`NRSVA_DEUTEROCANON`], then
    /// the 27 NT books with 3 John 1:15 and Revelation 12:18 added.
    pub fn nrsva() -> Self {
        let (ot, nt) = KJV_BOOKS.split_at(KJV_OT_BOOKS);
        let nt = nt.iter().map(|b| match b.osis {
            "3John" => NRSVA_3JOHN,
            "Rev" => NRSVA_REV,
            _ => *b,
        });
        let books: Vec<Book> =
            ot.iter().chain(NRSVA_DEUTEROCANON.iter()).copied().chain(nt).collect();
        Self::new("NRSVA", books, KJV_OT_BOOKS + NRSVA_DEUTEROCANON.len())
    }

    /// The versification a module's `Versification=` names (case-insensitive), if supported.
    pub fn by_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("KJV") {
            Some(Self::kjv())
        } else if name.eq_ignore_ascii_case("NRSVA") {
            Some(Self::nrsva())
        } else {
            None
        }
    }

    /// Builds the index layout of a book list whose first `ot_books` are the OT's.
    fn new(name: &'static str, books: Vec<Book>, ot_books: usize) -> Self {
        let mut entries = Vec::new();
        let mut chapters = Vec::new();
        let mut ot_len = 0;
        for testament in Testament::ALL {
            entries.push(EntryKind::ModuleHeading(testament));
            entries.push(EntryKind::TestamentHeading(testament));
            let range = match testament {
                Testament::Old => 0..ot_books.min(books.len()),
                Testament::New => ot_books.min(books.len())..books.len(),
            };
            for b in range {
                let Some(book) = books.get(b) else { continue };
                // At most 83 books: they fit in u8.
                let bi = b as u8;
                entries.push(EntryKind::BookHeading(bi));
                for (c, &n) in book.verses.iter().enumerate() {
                    let chapter = (c + 1) as u16;
                    entries.push(EntryKind::ChapterHeading(bi, chapter));
                    chapters.push(Chapter {
                        book: bi,
                        chapter,
                        first_verse: entries.len(),
                        verses: usize::from(n),
                    });
                    for v in 1..=n {
                        entries.push(EntryKind::Verse(VerseRef { book: bi, chapter, verse: v }));
                    }
                }
            }
            if testament == Testament::Old {
                ot_len = entries.len();
            }
        }
        Self { name, books, entries, chapters, ot_len }
    }

    /// The SWORD name of this versification (`KJV`, `NRSVA`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The books in index order; [`Chapter::book`] and [`VerseRef::book`] index this list.
    pub fn books(&self) -> &[Book] {
        &self.books
    }

    /// The OSIS id of a book index (`?` if out of range).
    pub fn book_osis(&self, book: u8) -> &'static str {
        self.books.get(usize::from(book)).map_or("?", |b| b.osis)
    }

    /// The OSIS id of a verse in this versification, e.g. `Tob.1.1`.
    pub fn osis_ref(&self, r: VerseRef) -> String {
        format!("{}.{}.{}", self.book_osis(r.book), r.chapter, r.verse)
    }

    /// Total number of entries (both testaments).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries (never true for a real versification).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of entries in one testament's index.
    pub fn testament_len(&self, testament: Testament) -> usize {
        match testament {
            Testament::Old => self.ot_len,
            Testament::New => self.entries.len() - self.ot_len,
        }
    }

    /// What the entry at a global index holds, or `None` past the end.
    pub fn kind(&self, index: usize) -> Option<EntryKind> {
        self.entries.get(index).copied()
    }

    /// All entries in index order.
    pub fn entries(&self) -> &[EntryKind] {
        &self.entries
    }

    /// All chapters in order.
    pub fn chapters(&self) -> &[Chapter] {
        &self.chapters
    }

    /// Number of heading entries.
    pub fn heading_count(&self) -> usize {
        self.entries.iter().filter(|e| e.is_heading()).count()
    }

    /// Number of verse entries.
    pub fn verse_count(&self) -> usize {
        self.entries.len() - self.heading_count()
    }

    /// The global entry index of a verse, if it exists.
    pub fn index_of(&self, r: VerseRef) -> Option<usize> {
        let ch = self.chapters.iter().find(|c| c.book == r.book && c.chapter == r.chapter)?;
        let v = usize::from(r.verse);
        (v >= 1 && v <= ch.verses).then(|| ch.first_verse + v - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_verses(books: &[Book]) -> usize {
        books.iter().flat_map(|b| b.verses.iter()).map(|&v| usize::from(v)).sum()
    }

    #[test]
    fn kjv_table_totals() {
        let (ot, nt) = KJV_BOOKS.split_at(KJV_OT_BOOKS);
        assert_eq!(ot.len(), 39);
        assert_eq!(nt.len(), 27);
        assert_eq!(sum_verses(ot), 23_145);
        assert_eq!(sum_verses(nt), 7_957);
        assert_eq!(ot.iter().map(|b| b.verses.len()).sum::<usize>(), 929);
        assert_eq!(nt.iter().map(|b| b.verses.len()).sum::<usize>(), 260);
        // A few well-known counts.
        assert_eq!(KJV_BOOKS[0].verses.len(), 50);
        assert_eq!(KJV_BOOKS[18].osis, "Ps");
        assert_eq!(KJV_BOOKS[18].verses[118], 176);
        assert_eq!(KJV_BOOKS[42].osis, "John");
        assert_eq!(KJV_BOOKS[42].verses[10], 57);
    }

    #[test]
    fn index_layout_adds_up() {
        let v = Versification::kjv();
        assert_eq!(v.testament_len(Testament::Old), 24_115);
        assert_eq!(v.testament_len(Testament::New), 8_246);
        assert_eq!(v.len(), 32_361);
        // 2 per testament + 66 books + 1,189 chapters.
        assert_eq!(v.heading_count(), 4 + 66 + 1_189);
        assert_eq!(v.heading_count(), 1_259);
        assert_eq!(v.verse_count(), 31_102);
    }

    #[test]
    fn first_entries_match_the_real_bzv_layout() {
        let v = Versification::kjv();
        assert_eq!(v.kind(0), Some(EntryKind::ModuleHeading(Testament::Old)));
        assert_eq!(v.kind(1), Some(EntryKind::TestamentHeading(Testament::Old)));
        assert_eq!(v.kind(2), Some(EntryKind::BookHeading(0)));
        assert_eq!(v.kind(3), Some(EntryKind::ChapterHeading(0, 1)));
        let gen11 = VerseRef { book: 0, chapter: 1, verse: 1 };
        assert_eq!(v.kind(4), Some(EntryKind::Verse(gen11)));
        assert_eq!(v.index_of(gen11), Some(4));
        // Gen 1 has 31 verses: entry 35 is the heading of Gen 2, 36 is Gen 2:1.
        assert_eq!(v.kind(35), Some(EntryKind::ChapterHeading(0, 2)));
        // NT starts with its own two heading slots, then Matthew.
        let nt = v.testament_len(Testament::Old);
        assert_eq!(v.kind(nt), Some(EntryKind::ModuleHeading(Testament::New)));
        assert_eq!(v.kind(nt + 2), Some(EntryKind::BookHeading(39)));
        let matt11 = VerseRef { book: 39, chapter: 1, verse: 1 };
        assert_eq!(v.index_of(matt11), Some(nt + 4));
        assert_eq!(matt11.osis(), "Matt.1.1");
        let rev = VerseRef { book: 65, chapter: 22, verse: 21 };
        assert_eq!(v.index_of(rev), Some(v.len() - 1));
        assert_eq!(v.kind(v.len()), None);
        assert_eq!(v.index_of(VerseRef { book: 0, chapter: 1, verse: 32 }), None);
    }

    #[test]
    fn nrsva_layout_matches_the_web_module() {
        // engWEB2015eb (Versification=NRSVA): ot.bzv has 31,027 records, nt.bzv 8,248.
        let v = Versification::nrsva();
        assert_eq!(v.name(), "NRSVA");
        assert_eq!(v.books().len(), 83);
        assert_eq!(v.testament_len(Testament::Old), 31_027);
        assert_eq!(v.testament_len(Testament::New), 8_248);
        assert_eq!(sum_verses(&NRSVA_DEUTEROCANON), 6_687);
        assert_eq!(NRSVA_DEUTEROCANON.iter().map(|b| b.verses.len()).sum::<usize>(), 208);
        // The canonical OT is the KJV's; Tobit follows Malachi; Matthew follows 4 Maccabees.
        let kjv = Versification::kjv();
        assert_eq!(v.entries()[..kjv.testament_len(Testament::Old)], kjv.entries()[..24_115]);
        assert_eq!(v.book_osis(39), "Tob");
        assert_eq!(v.book_osis(56), "Matt");
        let tob = VerseRef { book: 39, chapter: 1, verse: 1 };
        assert_eq!(v.osis_ref(tob), "Tob.1.1");
        assert_eq!(v.index_of(tob), Some(24_115 + 2));
        let rev = VerseRef { book: 82, chapter: 22, verse: 21 };
        assert_eq!(v.index_of(rev), Some(v.len() - 1));
        assert!(v.index_of(VerseRef { book: 82, chapter: 12, verse: 18 }).is_some());
        assert!(Versification::by_name("kjv").is_some());
        assert!(Versification::by_name("Vulg").is_none());
    }
}
