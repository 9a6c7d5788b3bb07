//! `seqforge-fuzz-seeds [REPO]`: (re)writes the seed corpora `fuzz/corpus/<target>/` from
//! real files — the fairseq fixtures of `tests/fixtures/`, what the exporter writes for its
//! synthetic checkpoints and language model, the KJV and MHCC SWORD modules of
//! `.deps/sword` (`cargo xtask setup`) — each a few KB, so AFL mutates what matters.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::Message;
use seqforge_exporter::testing::{
    SyntheticCheckpoint, TinyCausalLm, byte_level_alphabet, byte_level_tokenizer_json,
    numbered_dictionary,
};
use seqforge_exporter::{BuildOptions, compile};
use seqforge_fuzz::join;
use seqforge_runtime::search::GenerationOptions;
use seqforge_schemas::contract::{FileEntry, Manifest, ModelFiles};
use seqforge_schemas::onnx::ModelProto;
use seqforge_trainer::corpus::sword::ZVerseModule;

fn main() -> Result<()> {
    let repo = match std::env::args().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let corpus = repo.join("fuzz/corpus");
    let fixtures = repo.join("tests/fixtures");
    let tmp = tempfile::tempdir()?;
    let mut seeds = Seeds { corpus, count: 0 };

    // dict.txt: fairseq's own files (preprocess output), and one with the overwrite flag.
    for (name, file) in
        [("separate_en", "separate/dict.en.txt"), ("joined_de", "joined/dict.de.txt")]
    {
        seeds.put("dict", name, &read(&fixtures.join("fairseq").join(file))?)?;
    }
    let overwrite = format!("{}<unk> 3 #fairseq:overwrite\n", numbered_dictionary(8, "w"));
    seeds.put("dict", "overwrite", overwrite.as_bytes())?;

    // .idx + .bin from fairseq-preprocess and the builder fixtures.
    for prefix in ["separate/test.en-de.en", "joined/valid.en-de.de", "builder/u32", "builder/i64"]
    {
        let base = fixtures.join("fairseq").join(prefix);
        let idx = read(&base.with_extension(extension(&base, "idx")))?;
        let bin = read(&base.with_extension(extension(&base, "bin")))?;
        seeds.put("indexed", &prefix.replace('/', "_"), &join(&[&idx, &bin]))?;
    }

    // A small synthetic transformer checkpoint, as the trainer writes it.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    for lang in ["de", "en"] {
        std::fs::write(data.join(format!("dict.{lang}.txt")), numbered_dictionary(10, lang))?;
    }
    let ckpt = tmp.path().join("checkpoint");
    let synthetic = SyntheticCheckpoint {
        embed_dim: 8,
        ffn_dim: 8,
        layers: 1,
        max_positions: 16,
        ..SyntheticCheckpoint::tiny(10, 10)
    };
    synthetic.write(&ckpt, &data)?;
    let config = read(&ckpt.join("config.json"))?;
    let weights = read(&ckpt.join("model.safetensors"))?;
    seeds.put("checkpoint", "transformer", &join(&[&config, &weights]))?;
    seeds.put("checkpoint", "config_only", &join(&[&config, b""]))?;

    // manifest.json and metadata_props of a translation model and of a language model.
    let compiled = compile(&ckpt, Some(&data), BuildOptions::default())?;
    let entry = |name: &str| FileEntry { name: name.into(), sha256: "0".repeat(64) };
    let manifest = Manifest {
        contract: compiled.contract.clone(),
        files: ModelFiles {
            encoder: Some(entry("encoder.onnx")),
            prefill: None,
            decoder: entry("decoder.onnx"),
            src_dict: entry("dict.de.txt"),
            tgt_dict: entry("dict.en.txt"),
            tokenizer: Some(entry("tokenizer.json")),
        },
        source_lang: Some("de".into()),
        target_lang: Some("en".into()),
        producer: "seqforge-fuzz-seeds".into(),
        checkpoint: "checkpoint".into(),
        num_updates: 0,
    };
    seeds.put("manifest", "translation", manifest.to_json().as_bytes())?;
    let lm = TinyCausalLm::new();
    let lm_dir = tmp.path().join("lm");
    let lm_manifest = lm.write(&lm_dir)?;
    seeds.put("manifest", "language_model", lm_manifest.to_json().as_bytes())?;
    let metadata_only = |m: &ModelProto| ModelProto {
        graph: None,
        metadata_props: m.metadata_props.clone(),
        ..m.clone()
    };
    seeds.put("onnx_metadata", "encoder", &metadata_only(&compiled.first).encode_to_vec())?;
    seeds.put("onnx_metadata", "decoder", &metadata_only(&compiled.decoder).encode_to_vec())?;
    for graph in ["prefill", "decoder"] {
        let model = ModelProto::decode(read(&lm_dir.join(format!("{graph}.onnx")))?.as_slice())?;
        seeds.put(
            "onnx_metadata",
            &format!("lm_{graph}"),
            &metadata_only(&model).encode_to_vec(),
        )?;
    }

    // tokenizer.json: the byte-level BPE the trainer writes.
    let alphabet = byte_level_alphabet();
    let small: Vec<String> = alphabet.iter().take(40).cloned().collect();
    for (name, symbols) in [("byte_level_40", &small), ("byte_level_full", &alphabet)] {
        let json = serde_json::to_vec_pretty(&byte_level_tokenizer_json(symbols))?;
        seeds.put("tokenizer", name, &json)?;
    }

    // Search options: the full default object, the documented examples, request bodies.
    let defaults = serde_json::to_vec(&GenerationOptions::default())?;
    seeds.put("options", "defaults", &defaults)?;
    for (name, json) in [
        ("beam", r#"{"beam": 4, "nbest": 2, "lenpen": 0.6}"#),
        ("greedy", r#"{"strategy": {"kind": "greedy"}, "beam": 1}"#),
        ("sampling", r#"{"strategy": {"kind": "sampling", "top_k": 5, "top_p": 0.9}, "beam": 2}"#),
        ("diverse", r#"{"strategy": {"kind": "diverse_beam", "groups": 2}, "beam": 4}"#),
        ("translate", r#"{"texts": ["Im Anfang", "schuf Gott"], "options": {"beam": 3}}"#),
        ("complete", r#"{"prompts": ["In the beginning", ""], "options": {"max_len_b": 20}}"#),
    ] {
        seeds.put("options", name, json.as_bytes())?;
    }

    // pickle: the data.pkl of real fairseq checkpoints; fairseq_pt: real .pt files, and one
    // with its storages dropped.
    let pt = fixtures.join("fairseq_import");
    for name in ["lstm", "fconv"] {
        seeds.put("pickle", name, &zip_member(&pt.join(format!("{name}.pt")), "data.pkl")?)?;
    }
    seeds.put("fairseq_pt", "lstm", &read(&pt.join("lstm.pt"))?)?;
    seeds.put("fairseq_pt", "fconv_no_storages", &without_storages(&pt.join("fconv.pt"))?)?;

    // SWORD and OSIS: the first entries of real modules.
    let sword = repo.join(".deps/sword");
    if sword.is_dir() {
        sword_seeds(&mut seeds, &sword)?;
    } else {
        eprintln!(
            "{} is missing (cargo xtask setup): SWORD and OSIS seeds not rewritten",
            sword.display()
        );
    }
    println!("wrote {} seeds under {}", seeds.count, seeds.corpus.display());
    Ok(())
}

/// Where seeds go.
struct Seeds {
    corpus: PathBuf,
    count: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        seqforge_fuzz::target(target)?;
        let dir = self.corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        self.count += 1;
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `prefix.ext` for a prefix whose name has dots of its own (`test.en-de.en` + `idx`).
fn extension(prefix: &Path, ext: &str) -> String {
    match prefix.extension() {
        Some(e) => format!("{}.{ext}", e.to_string_lossy()),
        None => ext.to_string(),
    }
}

/// The member of a `torch.save` zip whose name ends with `suffix`.
fn zip_member(path: &Path, suffix: &str) -> Result<Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path)?)?;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i)?;
        if file.name().ends_with(suffix) {
            let mut out = Vec::new();
            file.read_to_end(&mut out)?;
            return Ok(out);
        }
    }
    bail!("{} has no member ending in {suffix}", path.display())
}

/// The `torch.save` zip at `path` without its `data/` storages (stored, uncompressed).
fn without_storages(path: &Path) -> Result<Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path)?)?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zip.len() {
        let mut file = zip.by_index(i)?;
        if file.name().contains("/data/") {
            continue;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        out.start_file(file.name(), options)?;
        out.write_all(&bytes)?;
    }
    Ok(out.finish()?.into_inner())
}

/// The first entries of a real module, re-stored as one block per testament under the seeds'
/// `DataPath`; the entries' markup also seeds `osis`.
fn sword_seeds(seeds: &mut Seeds, sword: &Path) -> Result<()> {
    for (package, conf_name, entries) in
        [("sword-text-kjv", "engKJV2006eb.conf", 1..8), ("sword-comm-mhcc", "mhcc.conf", 1..6)]
    {
        let root = sword.join(package).join("usr/share/sword");
        let conf = root.join("mods.d").join(conf_name);
        let mut module = ZVerseModule::open(&conf)?;
        let nt_start =
            module.testament_len(seqforge_trainer::corpus::versification::Testament::Old);
        let mut texts = Vec::new();
        for i in entries.clone().chain(nt_start + 1..nt_start + 4) {
            texts.push(module.verse(i)?);
        }
        for (j, text) in texts.iter().enumerate().filter(|(_, t)| !t.is_empty()).take(4) {
            seeds.put("osis", &format!("{package}_{j}"), text.as_bytes())?;
        }
        let conf_text = std::fs::read_to_string(&conf)?;
        let conf_text: String = conf_text
            .lines()
            .map(|l| {
                if l.starts_with("DataPath=") {
                    "DataPath=./modules/texts/ztext/fuzz/".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let (ot, nt) = texts.split_at(entries.len());
        let four = module.driver().verse_record_size() == 12;
        let (ot_files, nt_files) = (testament(ot, four)?, testament(nt, four)?);
        let parts: Vec<&[u8]> = std::iter::once(conf_text.as_bytes())
            .chain(ot_files.iter().map(Vec::as_slice))
            .chain(nt_files.iter().map(Vec::as_slice))
            .collect();
        seeds.put("sword", package, &join(&parts))?;
    }
    Ok(())
}

/// `.bzs`, `.bzv`, `.bzz` of one testament holding `texts` in one zlib block (entry 0 empty,
/// as SWORD's testament heading slot usually is).
fn testament(texts: &[String], four: bool) -> Result<[Vec<u8>; 3]> {
    let mut block = Vec::new();
    let mut bzv = vec![0u8; if four { 12 } else { 10 }];
    for text in texts {
        bzv.extend_from_slice(&0u32.to_le_bytes());
        bzv.extend_from_slice(&u32::try_from(block.len())?.to_le_bytes());
        if four {
            bzv.extend_from_slice(&u32::try_from(text.len())?.to_le_bytes());
        } else {
            bzv.extend_from_slice(&u16::try_from(text.len())?.to_le_bytes());
        }
        block.extend_from_slice(text.as_bytes());
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&block)?;
    let bzz = z.finish()?;
    let mut bzs = Vec::new();
    for v in [0, u32::try_from(bzz.len())?, u32::try_from(block.len())?] {
        bzs.extend_from_slice(&v.to_le_bytes());
    }
    Ok([bzs, bzv, bzz])
}
