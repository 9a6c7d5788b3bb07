//! A reader for SWORD's compressed verse-keyed modules — Bibles (`ModDrv=zText`, `zText4`) and
//! commentaries (`zCom`, `zCom4`), which share one storage (SWORD's `zVerse` / `zVerse4`): the
//! `mods.d/<name>.conf` file and, per testament, the `*.?zs` block index, the `*.?zv` verse
//! index and the `*.?zz` zlib blocks.
//!
//! File layout (little endian, checked on `engKJV2006eb`, `spaRV1909eb`, `engWEB2015eb`,
//! `MHCC`, `Scofield` and `TDavid`):
//!
//! - The letter `?` is the `BlockType=`: `b` for `BOOK` (the default), `c` for `CHAPTER`,
//!   `v` for `VERSE` (`ot.bzs`, `ot.czs`, …).
//! - `ot.?zs` / `nt.?zs`: one 12-byte record per compressed block: `u32` offset into the
//!   `.?zz` file, `u32` compressed size, `u32` uncompressed size.
//! - `ot.?zv` / `nt.?zv`: one record per entry: `u32` block number, `u32` offset in the
//!   decompressed block, then the size: `u16` (10-byte records, `zText`/`zCom`) or `u32`
//!   (12-byte records, `zText4`/`zCom4`). A size of 0 is an empty entry.
//! - `ot.?zz` / `nt.?zz`: the blocks, each a zlib stream (`CompressType=ZIP`).
//!
//! Commentaries *link* entries: a comment on verses 3–5 is stored once and the three verse
//! records point at the same bytes ([`ZVerseModule::is_linked`], as SWORD's `isLinked`).
//!
//! Real-world wrinkle: Debian's `sword-comm-mhcc` 2.0 declares `ModDrv=zCom4` but its verse
//! index has 10-byte records (24,115 × 10 bytes for the OT). When an index's size is not a
//! multiple of the declared record size but is of the other one, the other one is used and
//! [`ZVerseModule::record_size_mismatch`] says so; the entry count is then still checked
//! against the versification ([`ZVerseModule::check_layout`]).
//!
//! Entries are numbered as in [`super::versification`]: OT entries first, then NT.
//! Every record is bounds-checked when the module is opened, so a truncated or corrupt file
//! gives an [`Error::Corrupt`] naming the file and offset instead of a panic.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::ZlibDecoder;

use super::versification::{Testament, Versification};
use super::{Error, Result};

/// Size of one `.bzs` record.
pub const BLOCK_RECORD_SIZE: usize = 12;
/// Size of one `.bzv` record of a `zText`/`zCom` module (`u16` sizes).
pub const VERSE_RECORD_SIZE: usize = 10;
/// Size of one `.bzv` record of a `zText4`/`zCom4` module (`u32` sizes).
pub const VERSE4_RECORD_SIZE: usize = 12;

/// The module drivers this reader supports (`ModDrv=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Bible text, 10-byte verse records.
    ZText,
    /// Bible text, 12-byte verse records.
    ZText4,
    /// Commentary, 10-byte verse records.
    ZCom,
    /// Commentary, 12-byte verse records.
    ZCom4,
}

impl Driver {
    /// Parses a `ModDrv=` value (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        [Driver::ZText, Driver::ZText4, Driver::ZCom, Driver::ZCom4]
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(value))
    }

    /// The `ModDrv=` name.
    pub fn name(self) -> &'static str {
        match self {
            Driver::ZText => "zText",
            Driver::ZText4 => "zText4",
            Driver::ZCom => "zCom",
            Driver::ZCom4 => "zCom4",
        }
    }

    /// Size of one verse-index record.
    pub fn verse_record_size(self) -> usize {
        match self {
            Driver::ZText | Driver::ZCom => VERSE_RECORD_SIZE,
            Driver::ZText4 | Driver::ZCom4 => VERSE4_RECORD_SIZE,
        }
    }

    /// Whether this is a commentary driver.
    pub fn is_commentary(self) -> bool {
        matches!(self, Driver::ZCom | Driver::ZCom4)
    }
}

/// A parsed module `.conf` file.
#[derive(Debug, Clone)]
pub struct ModuleConf {
    /// Module name: the `[section]` at the top of the file.
    pub name: String,
    /// The `.conf` file.
    pub path: PathBuf,
    /// The SWORD library root: the folder holding `mods.d/`.
    pub root: PathBuf,
    /// Every `Key=Value` (a key may repeat, e.g. `GlobalOptionFilter`).
    pub entries: BTreeMap<String, Vec<String>>,
}

impl ModuleConf {
    /// Reads and parses a `.conf` file. The library root is taken to be the parent of the
    /// folder holding it (`<root>/mods.d/<name>.conf`).
    pub fn open(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let root = path
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::parse(&text, path, &root)
    }

    /// Parses the text of a `.conf` file (`path` is used in errors, `root` to resolve
    /// `DataPath`). Lines ending in `\` continue on the next line; `#` starts a comment line.
    pub fn parse(text: &str, path: &Path, root: &Path) -> Result<Self> {
        let conf_err = |message: String| Error::Conf { path: path.to_path_buf(), message };
        let mut name = None;
        let mut entries: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
        while let Some(line) = lines.next() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if trimmed.starts_with('[') && trimmed.ends_with(']') {
                if name.is_none() {
                    name = Some(trimmed[1..trimmed.len() - 1].trim().to_string());
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else { continue };
            let mut value = value.to_string();
            while value.ends_with('\\') {
                value.pop();
                match lines.next() {
                    Some(next) => {
                        value.push('\n');
                        value.push_str(next);
                    }
                    None => break,
                }
            }
            entries.entry(key.trim().to_string()).or_default().push(value.trim().to_string());
        }
        let name = name.ok_or_else(|| conf_err("no [ModuleName] section header".into()))?;
        Ok(Self { name, path: path.to_path_buf(), root: root.to_path_buf(), entries })
    }

    /// The first value of a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    /// The folder of the module's data files (`DataPath`, relative to the library root).
    pub fn data_dir(&self) -> Result<PathBuf> {
        let data = self.get("DataPath").ok_or_else(|| Error::Conf {
            path: self.path.clone(),
            message: "no DataPath= entry".into(),
        })?;
        let rel = data.trim_start_matches("./");
        Ok(self.root.join(rel))
    }

    /// The versification (`Versification=`, SWORD's default is `KJV`).
    pub fn versification(&self) -> &str {
        self.get("Versification").unwrap_or("KJV")
    }

    /// The markup of the entries (`SourceType=`, SWORD's default is `Plaintext`).
    pub fn source_type(&self) -> &str {
        self.get("SourceType").unwrap_or("Plaintext")
    }

    /// The letter of the data file names (`ot.bzs`, `ot.czs`, `ot.vzs`): from `BlockType=`
    /// (`BOOK`, the default, `CHAPTER`, `VERSE`).
    pub fn block_letter(&self) -> Result<char> {
        match self.get("BlockType") {
            None => Ok('b'),
            Some(t) if t.eq_ignore_ascii_case("BOOK") => Ok('b'),
            Some(t) if t.eq_ignore_ascii_case("CHAPTER") => Ok('c'),
            Some(t) if t.eq_ignore_ascii_case("VERSE") => Ok('v'),
            Some(t) => Err(Error::Conf {
                path: self.path.clone(),
                message: format!("BlockType={t}; expected BOOK, CHAPTER or VERSE"),
            }),
        }
    }

    /// Checks that this is a module [`ZVerseModule`] can read (`ModDrv=` one of [`Driver`],
    /// `CompressType=ZIP`, `Encoding=UTF-8`) and returns its driver.
    pub fn driver(&self) -> Result<Driver> {
        let unsupported = |message: String| Err(Error::Conf { path: self.path.clone(), message });
        let driver = match self.get("ModDrv").and_then(Driver::parse) {
            Some(d) => d,
            None => {
                return unsupported(format!(
                    "ModDrv={:?}; only zText, zText4, zCom and zCom4 are supported",
                    self.get("ModDrv")
                ));
            }
        };
        match self.get("CompressType") {
            Some(c) if c.eq_ignore_ascii_case("ZIP") => {}
            other => {
                return unsupported(format!(
                    "CompressType={other:?}; only ZIP (zlib) is supported"
                ));
            }
        }
        match self.get("Encoding") {
            Some(e) if e.eq_ignore_ascii_case("UTF-8") => {}
            other => return unsupported(format!("Encoding={other:?}; only UTF-8 is supported")),
        }
        Ok(driver)
    }
}

/// One `.bzs` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    /// Offset of the compressed block in the `.bzz` file.
    pub offset: u32,
    /// Compressed size.
    pub size: u32,
    /// Uncompressed size.
    pub uncompressed: u32,
}

/// One `.bzv` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerseEntry {
    /// Block number (index into the `.bzs` records).
    pub block: u32,
    /// Offset of the entry's text in the decompressed block.
    pub offset: u32,
    /// Size of the text in bytes (0: empty entry; a `u16` on disk in 10-byte records).
    pub size: u32,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
    Some(u16::from_le_bytes(b))
}

/// Parses a `.bzs` block index (`path` for errors).
pub fn parse_block_index(bytes: &[u8], path: &Path) -> Result<Vec<BlockEntry>> {
    check_record_size(bytes.len(), BLOCK_RECORD_SIZE, path)?;
    let mut out = Vec::with_capacity(bytes.len() / BLOCK_RECORD_SIZE);
    for at in (0..bytes.len()).step_by(BLOCK_RECORD_SIZE) {
        let (Some(offset), Some(size), Some(uncompressed)) =
            (u32_at(bytes, at), u32_at(bytes, at + 4), u32_at(bytes, at + 8))
        else {
            return Err(corrupt(path, at, "truncated block record"));
        };
        out.push(BlockEntry { offset, size, uncompressed });
    }
    Ok(out)
}

/// Parses a `.bzv` verse index of `record_size`-byte records ([`VERSE_RECORD_SIZE`] or
/// [`VERSE4_RECORD_SIZE`]; `path` for errors).
pub fn parse_verse_index(bytes: &[u8], record_size: usize, path: &Path) -> Result<Vec<VerseEntry>> {
    check_record_size(bytes.len(), record_size, path)?;
    let mut out = Vec::with_capacity(bytes.len() / record_size);
    for at in (0..bytes.len()).step_by(record_size) {
        let size = if record_size == VERSE4_RECORD_SIZE {
            u32_at(bytes, at + 8)
        } else {
            u16_at(bytes, at + 8).map(u32::from)
        };
        let (Some(block), Some(offset), Some(size)) =
            (u32_at(bytes, at), u32_at(bytes, at + 4), size)
        else {
            return Err(corrupt(path, at, "truncated verse record"));
        };
        out.push(VerseEntry { block, offset, size });
    }
    Ok(out)
}

fn check_record_size(len: usize, record: usize, path: &Path) -> Result<()> {
    if len.is_multiple_of(record) {
        Ok(())
    } else {
        let at = len - len % record;
        Err(corrupt(
            path,
            at,
            &format!("file size {len} is not a multiple of the {record}-byte record (truncated?)"),
        ))
    }
}

fn corrupt(path: &Path, offset: usize, message: &str) -> Error {
    Error::Corrupt { path: path.to_path_buf(), offset: offset as u64, message: message.to_string() }
}

/// One testament of a module: its indexes, its compressed data, and a one-block cache.
#[derive(Debug)]
struct TestamentData {
    bzs_path: PathBuf,
    bzv_path: PathBuf,
    bzz_path: PathBuf,
    blocks: Vec<BlockEntry>,
    verses: Vec<VerseEntry>,
    /// The verse-record size actually used (see the module docs on `MHCC`).
    record_size: usize,
    bzz: Vec<u8>,
    /// The last decompressed block (entries of one block are consecutive).
    cache: Option<(u32, Vec<u8>)>,
}

impl TestamentData {
    fn open(dir: &Path, testament: Testament, letter: char, declared: usize) -> Result<Self> {
        let prefix = testament.file_prefix();
        let bzs_path = dir.join(format!("{prefix}.{letter}zs"));
        let bzv_path = dir.join(format!("{prefix}.{letter}zv"));
        let bzz_path = dir.join(format!("{prefix}.{letter}zz"));
        let read = |p: &Path| fs::read(p).map_err(|e| Error::io(p, e));
        let blocks = parse_block_index(&read(&bzs_path)?, &bzs_path)?;
        let bzv = read(&bzv_path)?;
        let other =
            if declared == VERSE_RECORD_SIZE { VERSE4_RECORD_SIZE } else { VERSE_RECORD_SIZE };
        let record_size = if !bzv.len().is_multiple_of(declared) && bzv.len().is_multiple_of(other)
        {
            tracing::warn!(
                file = %bzv_path.display(),
                declared,
                used = other,
                "verse index size fits the other record size than ModDrv= declares; using it"
            );
            other
        } else {
            declared
        };
        let verses = parse_verse_index(&bzv, record_size, &bzv_path)?;
        let bzz = read(&bzz_path)?;
        let data =
            Self { bzs_path, bzv_path, bzz_path, blocks, verses, record_size, bzz, cache: None };
        data.validate()?;
        Ok(data)
    }

    /// Bounds-checks every block and verse record.
    fn validate(&self) -> Result<()> {
        for (i, b) in self.blocks.iter().enumerate() {
            let end = u64::from(b.offset) + u64::from(b.size);
            if end > self.bzz.len() as u64 {
                return Err(corrupt(
                    &self.bzs_path,
                    i * BLOCK_RECORD_SIZE,
                    &format!(
                        "block {i} spans bytes {}..{end} but {} has {} bytes",
                        b.offset,
                        self.bzz_path.display(),
                        self.bzz.len()
                    ),
                ));
            }
        }
        for (i, v) in self.verses.iter().enumerate() {
            if v.size == 0 {
                continue;
            }
            let Some(block) = self.blocks.get(v.block as usize) else {
                return Err(corrupt(
                    &self.bzv_path,
                    i * self.record_size,
                    &format!(
                        "entry {i} refers to block {} but there are {} blocks",
                        v.block,
                        self.blocks.len()
                    ),
                ));
            };
            let end = u64::from(v.offset) + u64::from(v.size);
            if end > u64::from(block.uncompressed) {
                return Err(corrupt(
                    &self.bzv_path,
                    i * self.record_size,
                    &format!(
                        "entry {i} spans bytes {}..{end} of block {} which has {} bytes",
                        v.offset, v.block, block.uncompressed
                    ),
                ));
            }
        }
        Ok(())
    }

    fn decompress(&self, number: u32) -> Result<Vec<u8>> {
        let Some(block) = self.blocks.get(number as usize) else {
            return Err(corrupt(
                &self.bzs_path,
                self.blocks.len() * BLOCK_RECORD_SIZE,
                "no such block",
            ));
        };
        let start = block.offset as usize;
        let compressed = self
            .bzz
            .get(start..start + block.size as usize)
            .ok_or_else(|| corrupt(&self.bzz_path, start, "block past end of file"))?;
        let expected = block.uncompressed as usize;
        // The index's size is a claim: reserve no more than the compressed bytes can inflate
        // to (zlib's ratio is at most 1032:1), and let the output grow as it really inflates
        // (a corrupt size once reserved 464 MiB for a 3 kB module; `cargo xtask fuzz`, target
        // `sword`).
        let mut out = Vec::with_capacity(expected.min(compressed.len().saturating_mul(1032)));
        // Read at most one byte more than declared so a bad size cannot make us inflate
        // without bound.
        ZlibDecoder::new(compressed).take(expected as u64 + 1).read_to_end(&mut out).map_err(
            |e| corrupt(&self.bzz_path, start, &format!("block {number}: zlib error: {e}")),
        )?;
        if out.len() != expected {
            return Err(corrupt(
                &self.bzz_path,
                start,
                &format!(
                    "block {number} inflates to {}{} bytes, the index says {expected}",
                    out.len().min(expected + 1),
                    if out.len() > expected { "+" } else { "" }
                ),
            ));
        }
        Ok(out)
    }

    fn entry_bytes(&mut self, index: usize) -> Result<&[u8]> {
        let Some(&v) = self.verses.get(index) else {
            return Err(corrupt(&self.bzv_path, index * self.record_size, "no such entry"));
        };
        if v.size == 0 {
            return Ok(&[]);
        }
        if self.cache.as_ref().is_none_or(|(n, _)| *n != v.block) {
            let data = self.decompress(v.block)?;
            self.cache = Some((v.block, data));
        }
        let start = v.offset as usize;
        let end = start + v.size as usize;
        self.cache.as_ref().and_then(|(_, data)| data.get(start..end)).ok_or_else(|| {
            corrupt(&self.bzv_path, index * self.record_size, "entry past block end")
        })
    }
}

/// An open SWORD zText/zCom module. Entries are numbered globally: OT entries, then NT
/// entries.
#[derive(Debug)]
pub struct ZVerseModule {
    conf: ModuleConf,
    driver: Driver,
    ot: TestamentData,
    nt: TestamentData,
}

impl ZVerseModule {
    /// Opens a module from its `.conf` file (`<root>/mods.d/<name>.conf`); reads both
    /// testaments' indexes and data and bounds-checks every record.
    pub fn open(conf_path: &Path) -> Result<Self> {
        let conf = ModuleConf::open(conf_path)?;
        let driver = conf.driver()?;
        let letter = conf.block_letter()?;
        let dir = conf.data_dir()?;
        let declared = driver.verse_record_size();
        let ot = TestamentData::open(&dir, Testament::Old, letter, declared)?;
        let nt = TestamentData::open(&dir, Testament::New, letter, declared)?;
        tracing::debug!(
            module = %conf.name,
            driver = driver.name(),
            ot_entries = ot.verses.len(),
            nt_entries = nt.verses.len(),
            "opened module"
        );
        Ok(Self { conf, driver, ot, nt })
    }

    /// The module's configuration.
    pub fn conf(&self) -> &ModuleConf {
        &self.conf
    }

    /// The declared driver (`ModDrv=`).
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// `Some((declared, used))` when a verse index's record size differs from what `ModDrv=`
    /// declares (see the module docs).
    pub fn record_size_mismatch(&self) -> Option<(usize, usize)> {
        let declared = self.driver.verse_record_size();
        [&self.ot, &self.nt]
            .into_iter()
            .find(|t| t.record_size != declared)
            .map(|t| (declared, t.record_size))
    }

    /// Checks that the module uses this versification (`Versification=`, default KJV) and
    /// that each testament's index has its number of entries.
    pub fn check_layout(&self, vers: &Versification) -> Result<()> {
        let name = self.name().to_string();
        let v11n = self.conf.versification();
        if !v11n.eq_ignore_ascii_case(vers.name()) {
            return Err(Error::Layout {
                module: name,
                message: format!("Versification={v11n}; expected {}", vers.name()),
            });
        }
        for t in Testament::ALL {
            let (found, expected) = (self.testament_len(t), vers.testament_len(t));
            if found != expected {
                return Err(Error::Layout {
                    module: name,
                    message: format!(
                        "{}.*zv has {found} entries, the {} versification has {expected}",
                        t.file_prefix(),
                        vers.name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether a non-empty entry points at the same text as the entry before it in the same
    /// testament (a commentary's comment on a verse range is stored once and linked).
    pub fn is_linked(&self, index: usize) -> bool {
        let ot_len = self.ot.verses.len();
        let (verses, local) = if index < ot_len {
            (&self.ot.verses, index)
        } else {
            (&self.nt.verses, index - ot_len)
        };
        match (local.checked_sub(1).and_then(|p| verses.get(p)), verses.get(local)) {
            (Some(prev), Some(cur)) => cur.size != 0 && prev == cur,
            _ => false,
        }
    }

    /// The module name.
    pub fn name(&self) -> &str {
        &self.conf.name
    }

    /// Number of entries in one testament's verse index.
    pub fn testament_len(&self, testament: Testament) -> usize {
        match testament {
            Testament::Old => self.ot.verses.len(),
            Testament::New => self.nt.verses.len(),
        }
    }

    /// Total number of entries (OT + NT).
    pub fn len(&self) -> usize {
        self.ot.verses.len() + self.nt.verses.len()
    }

    /// Whether the module has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw verse-index record of an entry.
    pub fn entry(&self, index: usize) -> Result<VerseEntry> {
        let ot_len = self.ot.verses.len();
        let found = if index < ot_len {
            self.ot.verses.get(index)
        } else {
            self.nt.verses.get(index - ot_len)
        };
        found.copied().ok_or_else(|| self.out_of_range(index))
    }

    fn out_of_range(&self, index: usize) -> Error {
        Error::EntryOutOfRange { module: self.conf.name.clone(), index, len: self.len() }
    }

    /// The raw text (markup included) of an entry; empty entries give an empty string.
    pub fn verse(&mut self, index: usize) -> Result<String> {
        let ot_len = self.ot.verses.len();
        let len = self.len();
        if index >= len {
            return Err(self.out_of_range(index));
        }
        let (data, local) =
            if index < ot_len { (&mut self.ot, index) } else { (&mut self.nt, index - ot_len) };
        let bytes = data.entry_bytes(local)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(corrupt(
                &data.bzv_path,
                local * data.record_size,
                &format!("entry {local}: text is not UTF-8 ({e})"),
            )),
        }
    }
}

/// Finds the `.conf` file of a module in a SWORD library folder (`<dir>/mods.d/*.conf`):
/// first by file name (case-insensitive), then by the `[Name]` section of each file.
pub fn find_conf(dir: &Path, module: &str) -> Result<PathBuf> {
    let mods = dir.join("mods.d");
    let not_found = |hint: &str| Error::ModuleNotFound {
        module: module.to_string(),
        dir: dir.to_path_buf(),
        hint: hint.to_string(),
    };
    let read = fs::read_dir(&mods).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            not_found(
                "that folder has no mods.d/ (pass the folder that holds mods.d/ and modules/)",
            )
        } else {
            Error::io(&mods, e)
        }
    })?;
    let mut confs = Vec::new();
    for entry in read {
        let path = entry.map_err(|e| Error::io(&mods, e))?.path();
        if path.extension().is_some_and(|x| x.eq_ignore_ascii_case("conf")) {
            confs.push(path);
        }
    }
    confs.sort();
    let wanted = format!("{}.conf", module.to_lowercase());
    if let Some(p) = confs.iter().find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.to_lowercase() == wanted)
    }) {
        return Ok(p.clone());
    }
    for p in &confs {
        if ModuleConf::open(p).is_ok_and(|c| c.name.eq_ignore_ascii_case(module)) {
            return Ok(p.clone());
        }
    }
    Err(not_found("install or download the module, or pass a different --sword-dir"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::ZlibEncoder;
    use std::io::Write;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    const CONF: &str = "[TestMod]\nDataPath=./modules/texts/ztext/testmod/\nModDrv=zText\n\
        SourceType=OSIS\nEncoding=UTF-8\nCompressType=ZIP\nBlockType=BOOK\n\
        Versification=KJV\nAbout=first line\\\nsecond line\nGlobalOptionFilter=A\n\
        GlobalOptionFilter=B\n";

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
        let _ = enc.write_all(data);
        enc.finish().unwrap_or_default()
    }

    /// Builds a tiny module: per testament two blocks; entries are given as texts, `None`
    /// for empty entries. Entries are split evenly over the two blocks.
    fn build(dir: &Path, ot: &[Option<&str>], nt: &[Option<&str>]) -> std::io::Result<PathBuf> {
        build_with(dir, CONF, 'b', VERSE_RECORD_SIZE, ot, nt)
    }

    /// [`build`] with another `.conf` text, file letter and verse-record size. An entry equal
    /// to the one before it is stored once and linked, as commentaries do.
    fn build_with(
        dir: &Path,
        conf: &str,
        letter: char,
        record: usize,
        ot: &[Option<&str>],
        nt: &[Option<&str>],
    ) -> std::io::Result<PathBuf> {
        fs::create_dir_all(dir.join("mods.d"))?;
        let data = dir.join("modules/texts/ztext/testmod");
        fs::create_dir_all(&data)?;
        fs::write(dir.join("mods.d/testmod.conf"), conf)?;
        for (prefix, entries) in [("ot", ot), ("nt", nt)] {
            let half = entries.len().div_ceil(2);
            let mut bzs = Vec::new();
            let mut bzv = Vec::new();
            let mut bzz = Vec::new();
            for (b, chunk) in entries.chunks(half.max(1)).enumerate() {
                let mut block = Vec::new();
                let mut prev: Option<(&str, usize)> = None;
                for e in chunk {
                    let text = e.unwrap_or("");
                    let offset = match prev {
                        Some((p, at)) if p == text && !text.is_empty() => at,
                        _ => {
                            let at = block.len();
                            block.extend_from_slice(text.as_bytes());
                            at
                        }
                    };
                    prev = Some((text, offset));
                    bzv.extend_from_slice(&(b as u32).to_le_bytes());
                    bzv.extend_from_slice(&(offset as u32).to_le_bytes());
                    if record == VERSE4_RECORD_SIZE {
                        bzv.extend_from_slice(&(text.len() as u32).to_le_bytes());
                    } else {
                        bzv.extend_from_slice(&(text.len() as u16).to_le_bytes());
                    }
                }
                let z = zlib(&block);
                bzs.extend_from_slice(&(bzz.len() as u32).to_le_bytes());
                bzs.extend_from_slice(&(z.len() as u32).to_le_bytes());
                bzs.extend_from_slice(&(block.len() as u32).to_le_bytes());
                bzz.extend_from_slice(&z);
            }
            fs::write(data.join(format!("{prefix}.{letter}zs")), bzs)?;
            fs::write(data.join(format!("{prefix}.{letter}zv")), bzv)?;
            fs::write(data.join(format!("{prefix}.{letter}zz")), bzz)?;
        }
        Ok(dir.join("mods.d/testmod.conf"))
    }

    #[test]
    fn conf_parsing() -> TestResult {
        let c = ModuleConf::parse(CONF, Path::new("x/mods.d/t.conf"), Path::new("/lib"))?;
        assert_eq!(c.name, "TestMod");
        assert_eq!(c.get("CompressType"), Some("ZIP"));
        assert_eq!(c.get("About"), Some("first line\nsecond line"));
        assert_eq!(c.entries["GlobalOptionFilter"], vec!["A", "B"]);
        assert_eq!(c.data_dir()?, PathBuf::from("/lib/modules/texts/ztext/testmod/"));
        assert_eq!(c.versification(), "KJV");
        assert_eq!(c.driver()?, Driver::ZText);
        assert_eq!(c.block_letter()?, 'b');
        assert_eq!(c.source_type(), "OSIS");
        let bad = ModuleConf::parse(
            &CONF.replace("CompressType=ZIP", "CompressType=LZSS"),
            Path::new("t.conf"),
            Path::new("."),
        )?;
        let err = bad.driver().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("LZSS") && err.contains("t.conf"), "{err}");
        assert!(ModuleConf::parse("Key=1\n", Path::new("t.conf"), Path::new(".")).is_err());
        Ok(())
    }

    #[test]
    fn record_layout() -> TestResult {
        // The first .bzv records of the real KJV OT file.
        let bzv = [
            0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, // entry 0: empty
            0, 0, 0, 0, 0, 0, 0, 0, 0x53, 0, // entry 1: block 0, offset 0, 83 bytes
            1, 0, 0, 0, 0, 0, 0, 0, 0x6f, 1, // entry 2: block 1, offset 0, 367 bytes
        ];
        let v = parse_verse_index(&bzv, VERSE_RECORD_SIZE, Path::new("ot.bzv"))?;
        assert_eq!(v[1], VerseEntry { block: 0, offset: 0, size: 83 });
        assert_eq!(v[2], VerseEntry { block: 1, offset: 0, size: 367 });
        let bzs = [0u8, 0, 0, 0, 0x56, 4, 0, 0, 0x53, 0, 0, 0];
        let b = parse_block_index(&bzs, Path::new("ot.bzs"))?;
        assert_eq!(b, vec![BlockEntry { offset: 0, size: 1110, uncompressed: 83 }]);
        let err = parse_verse_index(&bzv[..25], VERSE_RECORD_SIZE, Path::new("ot.bzv")).err();
        assert!(
            matches!(err, Some(Error::Corrupt { offset: 20, .. })),
            "truncated record must name offset 20: {err:?}"
        );
        Ok(())
    }

    #[test]
    fn reads_a_synthetic_module() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ot = [None, Some("head"), Some("In the beginning"), Some("é"), None];
        let nt = [None, None, Some("Matthew")];
        let conf = build(tmp.path(), &ot, &nt)?;
        let mut m = ZVerseModule::open(&conf)?;
        assert_eq!(m.name(), "TestMod");
        assert_eq!(m.len(), 8);
        assert_eq!(m.testament_len(Testament::Old), 5);
        assert_eq!(m.verse(0)?, "");
        assert_eq!(m.verse(2)?, "In the beginning");
        assert_eq!(m.verse(3)?, "é");
        assert_eq!(m.verse(1)?, "head");
        assert_eq!(m.verse(7)?, "Matthew");
        assert!(matches!(m.verse(8), Err(Error::EntryOutOfRange { index: 8, len: 8, .. })));
        assert_eq!(find_conf(tmp.path(), "testmod")?, conf);
        assert!(matches!(find_conf(tmp.path(), "nope"), Err(Error::ModuleNotFound { .. })));
        Ok(())
    }

    #[test]
    fn reads_a_zcom4_commentary_with_links() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let conf = CONF
            .replace("ModDrv=zText", "ModDrv=zCom4")
            .replace("BlockType=BOOK", "BlockType=CHAPTER");
        let long = "x".repeat(70_000); // needs the u32 size of 12-byte records
        // Two blocks of three entries; entries 1 and 2 are linked.
        let ot =
            [None, Some("on vv. 1-2"), Some("on vv. 1-2"), Some("head"), Some(long.as_str()), None];
        let path = build_with(tmp.path(), &conf, 'c', VERSE4_RECORD_SIZE, &ot, &[None, None])?;
        let mut m = ZVerseModule::open(&path)?;
        assert_eq!(m.driver(), Driver::ZCom4);
        assert!(m.driver().is_commentary());
        assert_eq!(m.record_size_mismatch(), None);
        assert_eq!(m.verse(2)?, "on vv. 1-2");
        assert_eq!(m.entry(1)?, m.entry(2)?);
        assert_eq!(m.verse(4)?.len(), 70_000);
        assert_eq!((m.is_linked(1), m.is_linked(2), m.is_linked(3)), (false, true, false));
        assert!(!m.is_linked(0) && !m.is_linked(4) && !m.is_linked(5) && !m.is_linked(6));
        Ok(())
    }

    #[test]
    fn record_size_follows_the_files_when_the_conf_is_wrong() -> TestResult {
        // As Debian's MHCC: ModDrv=zCom4 but 10-byte verse records.
        let tmp = tempfile::tempdir()?;
        let conf = CONF.replace("ModDrv=zText", "ModDrv=zCom4");
        let ot = [None, Some("head"), Some("a"), Some("b"), Some("c"), Some("d"), Some("e")];
        let path = build_with(tmp.path(), &conf, 'b', VERSE_RECORD_SIZE, &ot, &[None])?;
        let mut m = ZVerseModule::open(&path)?;
        assert_eq!(m.record_size_mismatch(), Some((VERSE4_RECORD_SIZE, VERSE_RECORD_SIZE)));
        assert_eq!(m.verse(6)?, "e");
        // A size that fits neither record size is still an error.
        let bzv = tmp.path().join("modules/texts/ztext/testmod/ot.bzv");
        let mut bytes = fs::read(&bzv)?;
        bytes.push(0);
        fs::write(&bzv, bytes)?;
        let e = err_text(ZVerseModule::open(&path));
        assert!(e.contains("ot.bzv") && e.contains("multiple of the 12-byte record"), "{e}");
        Ok(())
    }

    #[test]
    fn layout_check_names_the_versification() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let path = build(tmp.path(), &[None, Some("a")], &[None])?;
        let m = ZVerseModule::open(&path)?;
        let e = err_text(m.check_layout(&Versification::kjv()));
        assert!(e.contains("ot.*zv has 2 entries") && e.contains("KJV"), "{e}");
        let e = err_text(m.check_layout(&Versification::nrsva()));
        assert!(e.contains("Versification=KJV; expected NRSVA"), "{e}");
        Ok(())
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Ok(v) => format!("unexpected success: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn corrupt_files_give_errors_not_panics() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ot = [None, Some("head"), Some("In the beginning"), Some("God created")];
        let conf = build(tmp.path(), &ot, &[None, None, Some("x")])?;
        let data = tmp.path().join("modules/texts/ztext/testmod");

        // Missing file.
        let nt_bzz = fs::read(data.join("nt.bzz"))?;
        fs::remove_file(data.join("nt.bzz"))?;
        let e = err_text(ZVerseModule::open(&conf));
        assert!(e.contains("nt.bzz"), "{e}");
        fs::write(data.join("nt.bzz"), &nt_bzz)?;

        // Truncated verse index.
        let bzv = fs::read(data.join("ot.bzv"))?;
        fs::write(data.join("ot.bzv"), &bzv[..bzv.len() - 3])?;
        let e = err_text(ZVerseModule::open(&conf));
        assert!(e.contains("ot.bzv") && e.contains("offset 30"), "{e}");

        // A verse record pointing at a block that does not exist.
        let mut bad = bzv.clone();
        bad[30..34].copy_from_slice(&7u32.to_le_bytes());
        fs::write(data.join("ot.bzv"), &bad)?;
        let e = err_text(ZVerseModule::open(&conf));
        assert!(e.contains("ot.bzv") && e.contains("entry 3") && e.contains("block 7"), "{e}");

        // A verse record past the end of its block.
        let mut bad = bzv.clone();
        bad[38..40].copy_from_slice(&500u16.to_le_bytes());
        fs::write(data.join("ot.bzv"), &bad)?;
        let e = err_text(ZVerseModule::open(&conf));
        assert!(e.contains("ot.bzv") && e.contains("entry 3"), "{e}");
        fs::write(data.join("ot.bzv"), &bzv)?;

        // Truncated compressed data: the block index points past the end.
        let bzz = fs::read(data.join("ot.bzz"))?;
        fs::write(data.join("ot.bzz"), &bzz[..bzz.len() - 4])?;
        let e = err_text(ZVerseModule::open(&conf));
        assert!(e.contains("ot.bzs") && e.contains("block 1"), "{e}");

        // Garbage in a block: open succeeds (indexes are fine), reading fails cleanly.
        let mut junk = bzz.clone();
        for b in junk.iter_mut().skip(2) {
            *b ^= 0x5a;
        }
        fs::write(data.join("ot.bzz"), &junk)?;
        let mut m = ZVerseModule::open(&conf)?;
        let e = err_text(m.verse(2));
        assert!(e.contains("ot.bzz") && e.contains("block"), "{e}");

        // Wrong uncompressed size in the block index.
        fs::write(data.join("ot.bzz"), &bzz)?;
        let mut bzs = fs::read(data.join("ot.bzs"))?;
        let declared = u32::from_le_bytes([bzs[8], bzs[9], bzs[10], bzs[11]]);
        bzs[8..12].copy_from_slice(&(declared + 10).to_le_bytes());
        fs::write(data.join("ot.bzs"), &bzs)?;
        let mut m = ZVerseModule::open(&conf)?;
        let e = err_text(m.verse(1));
        assert!(e.contains("ot.bzz") && e.contains("block 0") && e.contains("index says"), "{e}");

        // Not UTF-8.
        let tmp2 = tempfile::tempdir()?;
        let conf2 = build(tmp2.path(), &[None, Some("ok")], &[None])?;
        let d2 = tmp2.path().join("modules/texts/ztext/testmod");
        let block = [0xffu8, 0xfe];
        let z = zlib(&block);
        let mut bzs = Vec::new();
        bzs.extend_from_slice(&0u32.to_le_bytes());
        bzs.extend_from_slice(&(z.len() as u32).to_le_bytes());
        bzs.extend_from_slice(&2u32.to_le_bytes());
        fs::write(d2.join("ot.bzs"), bzs)?;
        fs::write(d2.join("ot.bzz"), z)?;
        let mut bzv = vec![0u8; 10];
        bzv.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        fs::write(d2.join("ot.bzv"), bzv)?;
        let mut m = ZVerseModule::open(&conf2)?;
        let e = err_text(m.verse(1));
        assert!(e.contains("ot.bzv") && e.contains("not UTF-8"), "{e}");
        Ok(())
    }
}
