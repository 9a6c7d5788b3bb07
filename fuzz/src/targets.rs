//! The targets: each feeds its bytes to the loaders of one format and, when they succeed, uses
//! what they return the way the project does (reads every item, encodes a line, …).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use prost::Message;
use seqforge_exporter::BuildOptions;
use seqforge_runtime::search::GenerationOptions;
use seqforge_runtime::serve::http;
use seqforge_schemas::contract::{
    GraphKind, Manifest, ModelContract, SpecialIds, Task, Vocabulary,
};
use seqforge_schemas::onnx::ModelProto;
use seqforge_trainer::corpus::{osis, sword, versification::Versification};

use crate::{Result, Target, scratch, split, write};

/// Every target (see the crate documentation).
pub(crate) const ALL: &[Target] = &[
    Target { name: "dict", about: "dict.txt (schemas Vocabulary, trainer Dictionary)", run: dict },
    Target {
        name: "indexed",
        about: ".idx + .bin (runtime and trainer IndexedDataset)",
        run: indexed,
    },
    Target {
        name: "checkpoint",
        about: "config.json + model.safetensors (exporter compile)",
        run: checkpoint,
    },
    Target { name: "manifest", about: "manifest.json (Manifest::parse)", run: manifest },
    Target {
        name: "onnx_metadata",
        about: "an ONNX model's metadata_props (ModelContract::from_metadata)",
        run: onnx_metadata,
    },
    Target { name: "tokenizer", about: "tokenizer.json (runtime TextPipeline)", run: tokenizer },
    Target { name: "options", about: "search options JSON (C ABI, HTTP bodies)", run: options },
    Target { name: "sword", about: "a SWORD module: .conf + ot/nt .bzs .bzv .bzz", run: sword },
    Target { name: "osis", about: "OSIS markup of one entry (osis::clean)", run: osis },
    Target { name: "pickle", about: "fairseq's safe unpickler", run: pickle },
    Target {
        name: "fairseq_pt",
        about: "a fairseq .pt checkpoint (exporter compile)",
        run: fairseq_pt,
    },
];

/// `dict.txt`: both readers. The trainer's writer promises that its output loads again.
fn dict(data: &[u8]) -> Result<bool> {
    let path = Path::new("dict.txt");
    let schemas = std::str::from_utf8(data).is_ok_and(|text| Vocabulary::parse(path, text).is_ok());
    let trainer = seqforge_trainer::data::Dictionary::from_bytes(data, path);
    let accepted = schemas && trainer.is_ok();
    if let Ok(d) = trainer {
        let text = d.to_text();
        match seqforge_trainer::data::Dictionary::parse(&text, path) {
            Ok(again) => assert_eq!(again.len(), d.len(), "dict.txt round trip lost symbols"),
            Err(e) => panic!("the trainer's dict.txt does not load again: {e}\n{text:?}"),
        }
    }
    Ok(accepted)
}

/// `.idx` then `.bin`: both readers, then every item.
fn indexed(data: &[u8]) -> Result<bool> {
    let parts = split(data, 2);
    let dir = scratch()?;
    let prefix = dir.join("data");
    write(&dir.join("data.idx"), parts[0])?;
    write(&dir.join("data.bin"), parts[1])?;
    let runtime = seqforge_runtime::indexed::IndexedDataset::open(&prefix)
        .is_ok_and(|d| d.read_all().is_ok());
    let trainer = match seqforge_trainer::data::IndexedDataset::open(&prefix) {
        Ok(d) => (0..d.len()).map(|i| d.get(i)).filter(|r| r.is_err()).count() == 0,
        Err(_) => false,
    };
    Ok(runtime && trainer)
}

/// `config.json` then `model.safetensors`: the exporter's whole compile (no files written).
fn checkpoint(data: &[u8]) -> Result<bool> {
    let parts = split(data, 2);
    let dir = scratch()?.join("checkpoint");
    write(&dir.join("config.json"), parts[0])?;
    write(&dir.join("model.safetensors"), parts[1])?;
    Ok(seqforge_exporter::compile(&dir, None, BuildOptions::default()).is_ok())
}

/// `manifest.json`.
fn manifest(data: &[u8]) -> Result<bool> {
    Ok(Manifest::parse(Path::new("manifest.json"), data).is_ok())
}

/// An ONNX `ModelProto` (what the exporter writes): its `metadata_props` as the runtime reads
/// them (a map; the graph's own parse is ONNX Runtime's), for each kind of graph.
fn onnx_metadata(data: &[u8]) -> Result<bool> {
    let Ok(model) = ModelProto::decode(data) else {
        return Ok(false);
    };
    let props: BTreeMap<String, String> = model
        .metadata_props
        .into_iter()
        .map(|p| (p.key.unwrap_or_default(), p.value.unwrap_or_default()))
        .collect();
    let mut accepted = false;
    for kind in [GraphKind::Encoder, GraphKind::Prefill, GraphKind::Decoder] {
        if let Ok(contract) = ModelContract::from_metadata("fuzz.onnx", kind, &props) {
            let _ = contract.check_same("fuzz.onnx", &contract);
            accepted = true;
        }
    }
    Ok(accepted)
}

/// The byte-level alphabet as a vocabulary (what a tokenizer's pieces are looked up in).
fn byte_vocabulary() -> &'static Vocabulary {
    static VOCAB: OnceLock<Vocabulary> = OnceLock::new();
    VOCAB.get_or_init(|| {
        Vocabulary::from_symbols(
            seqforge_schemas::contract::SPECIAL_SYMBOLS
                .iter()
                .map(|s| s.to_string())
                .chain(seqforge_exporter::testing::byte_level_alphabet()),
        )
    })
}

/// `tokenizer.json`: the runtime's text pipeline, then a line encoded and decoded.
fn tokenizer(data: &[u8]) -> Result<bool> {
    let path = scratch()?.join("tokenizer.json");
    write(&path, data)?;
    let vocab = byte_vocabulary().clone();
    let Ok(text) = seqforge_runtime::text::TextPipeline::new(
        vocab.clone(),
        vocab,
        Some(&path),
        SpecialIds::default(),
        64,
    ) else {
        return Ok(false);
    };
    for line in ["Im Anfang schuf Gott Himmel und Erde.", "é ñ 語 \u{1F600}", ""] {
        if let Ok((ids, _)) = text.encode_ids(line) {
            let _ = text.detokenize(&ids);
            let _ = text.source_text(&ids);
        }
    }
    Ok(true)
}

/// Search options: the C ABI's `search_json`, and the bodies of `POST /v1/translate` and
/// `POST /v1/complete`.
fn options(data: &[u8]) -> Result<bool> {
    let base = GenerationOptions::default();
    let mut accepted = std::str::from_utf8(data)
        .is_ok_and(|json| seqforge_runtime::pool::parse_options(json, &base).is_ok());
    for task in [Task::Translation, Task::LanguageModeling] {
        if let Ok(request) = http::TextsRequest::parse(task, data) {
            accepted |= request.options(&base).is_ok();
        }
    }
    Ok(accepted)
}

/// The files of a SWORD module input, in order, as [`sword`] lays them out.
pub const SWORD_FILES: [&str; 7] =
    ["conf", "ot.bzs", "ot.bzv", "ot.bzz", "nt.bzs", "nt.bzv", "nt.bzz"];

/// The data folder of the seeds' `.conf` (`DataPath=./modules/texts/ztext/fuzz/`).
const SWORD_DATA: &str = "modules/texts/ztext/fuzz";

/// Entries read per input at most (each may inflate a block).
const SWORD_ENTRIES: usize = 4096;

/// A SWORD module: `mods.d/fuzz.conf` and the six data files in [`SWORD_DATA`] (a `.conf`
/// may point elsewhere, where nothing is); every entry read and cleaned of its markup.
fn sword(data: &[u8]) -> Result<bool> {
    let parts = split(data, SWORD_FILES.len());
    let root = scratch()?.join("sword");
    let conf = root.join("mods.d/fuzz.conf");
    write(&conf, parts[0])?;
    for (name, bytes) in SWORD_FILES[1..].iter().zip(&parts[1..]) {
        // Every block letter: the seeds are `BlockType=BOOK` (`b`), a `.conf` may say otherwise.
        for letter in ["b", "c", "v"] {
            let file = name.replace(".b", &format!(".{letter}"));
            write(&root.join(SWORD_DATA).join(file), bytes)?;
        }
    }
    let Ok(mut module) = sword::ZVerseModule::open(&conf) else {
        return Ok(false);
    };
    let _ = module.check_layout(&Versification::kjv());
    for i in 0..module.len().min(SWORD_ENTRIES) {
        let _ = module.is_linked(i);
        if let Ok(text) = module.verse(i) {
            let _ = osis::clean(&text);
        }
    }
    Ok(true)
}

/// OSIS markup: both cleaning modes.
fn osis(data: &[u8]) -> Result<bool> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(false);
    };
    let _ = osis::clean(text);
    let _ = osis::clean_with(text, osis::CleanOptions::paragraphs());
    Ok(true)
}

/// One pickle.
fn pickle(data: &[u8]) -> Result<bool> {
    Ok(seqforge_fairseq::pickle::Unpickler::load(data).is_ok())
}

/// A fairseq `.pt` (zip or legacy): imported, every tensor read, both graphs built.
fn fairseq_pt(data: &[u8]) -> Result<bool> {
    let path = scratch()?.join("checkpoint.pt");
    write(&path, data)?;
    let accepted = seqforge_exporter::compile(&path, None, BuildOptions::default()).is_ok();
    if let Ok(mut ema) = seqforge_fairseq::Imported::open(&path, seqforge_fairseq::Weights::Ema) {
        let names: Vec<String> = ema.shapes().map(|(n, _)| n.to_string()).collect();
        for name in names {
            let _ = ema.read(&name);
        }
    }
    Ok(accepted)
}
