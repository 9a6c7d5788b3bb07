//! The reader on real fairseq 0.12.2 checkpoints (`tests/fixtures/fairseq_import/`, made by its
//! `make_fixtures.py`): configs mapped from `args`/`cfg` with the architecture's defaults,
//! state dicts upgraded (0.12.2's fast-path copies and buffers gone), the legacy torch.save
//! format and the fp16-stored copy read to the same values as their originals, EMA weights
//! found. (Decoding parity with fairseq-generate: `tests/tests/fairseq_import.rs`.)

use std::path::PathBuf;

use seqforge_fairseq::{Imported, Weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fairseq_import").join(name)
}

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn open(name: &str) -> Result<Imported, seqforge_fairseq::Error> {
    Imported::open(fixture(name), Weights::Model)
}

/// Every tensor of `a` and `b`, read: same names, and values within `tol`.
fn same_values(a: &mut Imported, b: &mut Imported, tol: f32) -> TestResult {
    let names: Vec<String> = a.shapes().map(|(n, _)| n.to_string()).collect();
    let other: Vec<String> = b.shapes().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, other);
    for n in &names {
        let (x, y) = (a.read(n)?, b.read(n)?);
        assert_eq!(x.len(), y.len(), "{n}");
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst <= tol, "{n}: {worst}");
    }
    Ok(())
}

#[test]
fn transformer_configs_follow_the_checkpoint_and_the_architecture() -> TestResult {
    let i = open("postnorm_shared.pt")?;
    assert_eq!(
        (i.arch.as_str(), i.family, i.num_updates),
        ("transformer_tiny", "transformer", 250)
    );
    assert_eq!(i.config["share_all_embeddings"], true);
    assert_eq!(i.config["encoder_embed_dim"], 32);
    assert_eq!(i.vocab_sizes(), (96, 96));
    assert_eq!((i.source_lang.as_deref(), i.target_lang.as_deref()), (Some("en"), Some("de")));
    // 0.12.2's fast-path copies and the buffers are gone; q/k/v are separate.
    assert!(i.shapes().all(|(n, _)| !n.contains("in_proj")
        && !n.ends_with("fc1_weight")
        && !n.ends_with(".version")
        && !n.ends_with("_float_tensor")));
    let p = open("prenorm_learned.pt")?;
    for key in ["encoder_normalize_before", "decoder_learned_pos", "layernorm_embedding"] {
        assert_eq!(p.config[key], true, "{key}");
    }
    assert_eq!(p.config["activation_fn"], "gelu");
    assert_eq!(p.vocab_sizes(), (56, 32));
    let b = open("noscale_tied.pt")?;
    assert_eq!(b.arch, "transformer");
    assert_eq!(b.config["no_scale_embedding"], true);
    assert_eq!(b.config["share_decoder_input_output_embed"], true);
    assert_eq!(
        (b.config["decoder_ffn_embed_dim"].as_u64(), b.config["decoder_layers"].as_u64()),
        (Some(48), Some(1))
    );
    Ok(())
}

#[test]
fn lstm_and_fconv_configs() -> TestResult {
    let l = open("lstm.pt")?;
    assert_eq!((l.arch.as_str(), l.family), ("lstm", "lstm"));
    assert_eq!(l.config["encoder_bidirectional"], true);
    assert_eq!(l.config["decoder_attention"], true);
    assert_eq!(l.config["encoder_hidden_size"], 32);
    let f = open("fconv.pt")?;
    assert_eq!((f.arch.as_str(), f.family), ("fconv_iwslt_de_en", "fconv"));
    assert_eq!(f.config["encoder_layers"], "[(32, 3)] * 2");
    Ok(())
}

#[test]
fn the_legacy_format_reads_like_the_zip_format() -> TestResult {
    same_values(&mut open("legacy.pt")?, &mut open("postnorm_shared.pt")?, 0.0)
}

#[test]
fn fp16_stored_weights_read_as_their_fp32_values() -> TestResult {
    let mut fp16 = open("fp16.pt")?;
    assert!(fp16.half_precision);
    // fairseq trained in fp16 and saved fp32 copies of fp16 values: the .half() copy is exact.
    same_values(&mut open("fp16_half.pt")?, &mut fp16, 0.0)
}

#[test]
fn ema_weights_are_their_own() -> TestResult {
    let mut model = open("ema.pt")?;
    let mut ema = Imported::open(fixture("ema.pt"), Weights::Ema)?;
    let name = "decoder.layers.0.fc1.weight";
    assert_ne!(model.read(name)?, ema.read(name)?);
    assert!(Imported::open(fixture("postnorm_shared.pt"), Weights::Ema).is_err());
    Ok(())
}
