//! Tests of the LSTM: parity with fairseq 0.12.2 (forward, encoder output, incremental
//! decoding with a beam reorder), fairseq's names, initialisation and tied embeddings, cached
//! versus full decoding, independence from batching and padding, beam search, dropout,
//! 16-bit kinds and a few training steps.

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::*;
use crate::models::testing::{
    self, FairseqFixture, PAD, Res, TOL, check_batching_and_padding, check_beam_search,
    check_cached_equals_full, max_abs_diff, perturb,
};
use crate::train::model::Model;

type TestResult = Res<()>;

/// A small config: bidirectional 2-layer encoder, 2-layer decoder with attention, both
/// projections (encoder width 2 × 10 != 16, out_embed_dim 8 != 16).
fn tiny() -> LstmConfig {
    LstmConfig {
        encoder_embed_dim: 12,
        encoder_hidden_size: Some(10),
        encoder_layers: 2,
        encoder_bidirectional: true,
        decoder_embed_dim: 14,
        decoder_hidden_size: Some(16),
        decoder_layers: 2,
        decoder_out_embed_dim: 8,
        max_source_positions: 64,
        max_target_positions: 64,
        ..LstmConfig::default().with_vocab(30, 36)
    }
}

/// Variants covering the optional modules.
fn variants() -> Vec<(&'static str, LstmConfig)> {
    vec![
        ("bidirectional, projections, attention", tiny()),
        (
            "unidirectional, no attention, shared output",
            LstmConfig {
                encoder_bidirectional: false,
                encoder_hidden_size: Some(16),
                decoder_attention: false,
                decoder_embed_dim: 8,
                share_decoder_input_output_embed: true,
                ..tiny()
            },
        ),
        (
            "all embeddings shared, no projections",
            LstmConfig {
                encoder_embed_dim: 16,
                encoder_hidden_size: None,
                encoder_bidirectional: false,
                decoder_embed_dim: 16,
                decoder_hidden_size: None,
                decoder_out_embed_dim: 16,
                share_all_embeddings: true,
                ..tiny().with_vocab(32, 32)
            },
        ),
    ]
}

/// Builds a model and perturbs every parameter away from its initial value.
fn build(config: &LstmConfig) -> Res<(VarStore, Lstm)> {
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), config)?;
    perturb(&vs)?;
    Ok((vs, model))
}

// ---------------------------------------------------------------------------------------
// Configuration, names, initialisation.

#[test]
fn presets_follow_fairseq_and_validate() -> TestResult {
    assert_eq!(PRESETS, ["lstm", "lstm_wiseman_iwslt_de_en", "lstm_luong_wmt_en_de"]);
    // (name, embed, hidden, layers, out_embed, (enc in, enc out), (dec in, dec out))
    let expected = [
        ("lstm", 512, 512, 1, 512, (0.1, 0.1), (0.1, 0.1)),
        ("lstm_wiseman_iwslt_de_en", 256, 256, 1, 256, (0.0, 0.0), (0.0, 0.1)),
        ("lstm_luong_wmt_en_de", 1000, 1000, 4, 1000, (0.1, 0.0), (0.1, 0.0)),
    ];
    for (name, embed, hidden, layers, out, enc, dec) in expected {
        let c = LstmConfig::from_preset(name)?;
        assert_eq!((c.encoder_embed_dim, c.decoder_embed_dim), (embed, embed), "{name}");
        assert_eq!((c.encoder_hidden(), c.decoder_hidden()), (hidden, hidden), "{name}");
        assert_eq!(
            (c.encoder_layers, c.decoder_layers, c.decoder_out_embed_dim),
            (layers, layers, out)
        );
        assert_eq!((c.encoder_dropouts(), c.decoder_dropouts()), (enc, dec), "{name}");
        assert!(c.decoder_attention && !c.encoder_bidirectional, "{name}");
        c.with_vocab(40, 40).validate()?;
    }
    // fairseq's build_model: the decoder starts from the encoder's layers one to one.
    let bad = LstmConfig { decoder_layers: 3, ..tiny() };
    assert!(bad.validate().is_err());
    let vs = VarStore::new(Device::Cpu);
    assert!(Lstm::new(&vs.root(), &bad).is_err());
    let bad = LstmConfig { share_decoder_input_output_embed: true, ..tiny() }; // 14 != 8
    assert!(bad.validate().is_err());
    Ok(())
}

/// fairseq 0.12.2's state-dict keys of the `tiny()` model (printed by fairseq itself for the
/// same shapes: `make_fixture.py`'s `bidir_attn`).
#[test]
fn parameters_have_fairseq_names_shapes_and_init() -> TestResult {
    let config = tiny();
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &config)?;
    let shapes: Vec<(String, Vec<i64>)> =
        model.fairseq_state_dict().into_iter().map(|(n, t)| (n, t.size())).collect();
    let mut expected: Vec<(String, Vec<i64>)> =
        vec![("encoder.embed_tokens.weight".into(), vec![30, 12])];
    for l in 0..2 {
        for suffix in ["", "_reverse"] {
            let input = if l == 0 { 12 } else { 20 };
            expected.push((format!("encoder.lstm.weight_ih_l{l}{suffix}"), vec![40, input]));
            expected.push((format!("encoder.lstm.weight_hh_l{l}{suffix}"), vec![40, 10]));
            expected.push((format!("encoder.lstm.bias_ih_l{l}{suffix}"), vec![40]));
            expected.push((format!("encoder.lstm.bias_hh_l{l}{suffix}"), vec![40]));
        }
    }
    expected.push(("decoder.embed_tokens.weight".into(), vec![36, 14]));
    for p in ["encoder_hidden_proj", "encoder_cell_proj"] {
        expected.push((format!("decoder.{p}.weight"), vec![16, 20]));
        expected.push((format!("decoder.{p}.bias"), vec![16]));
    }
    for l in 0..2 {
        let input = if l == 0 { 16 + 14 } else { 16 };
        expected.push((format!("decoder.layers.{l}.weight_ih"), vec![64, input]));
        expected.push((format!("decoder.layers.{l}.weight_hh"), vec![64, 16]));
        expected.push((format!("decoder.layers.{l}.bias_ih"), vec![64]));
        expected.push((format!("decoder.layers.{l}.bias_hh"), vec![64]));
    }
    expected.push(("decoder.attention.input_proj.weight".into(), vec![20, 16]));
    expected.push(("decoder.attention.output_proj.weight".into(), vec![16, 36]));
    expected.push(("decoder.additional_fc.weight".into(), vec![8, 16]));
    expected.push(("decoder.additional_fc.bias".into(), vec![8]));
    expected.push(("decoder.fc_out.weight".into(), vec![36, 8]));
    expected.push(("decoder.fc_out.bias".into(), vec![36]));
    assert_eq!(shapes, expected);
    // The var store holds exactly these names.
    let ours: BTreeMap<String, Vec<i64>> =
        vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    assert_eq!(ours, expected.iter().cloned().collect::<BTreeMap<_, _>>());

    // fairseq's init: everything uniform in ±0.1, padding embeddings zero.
    let mut all = Vec::new();
    for (name, t) in model.parameters() {
        let bound = t.f_abs()?.f_max()?.f_double_value(&[])?;
        assert!(bound <= 0.1, "{name}: max |w| = {bound}");
        all.push(t.f_flatten(0, -1)?);
        if name.ends_with("embed_tokens.weight") {
            assert_eq!(t.f_select(0, PAD)?.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])?, 0.0);
        }
    }
    // Uniform in ±0.1: mean |w| is 0.05 (thousands of values).
    let mean_abs = Tensor::f_cat(&all, 0)?.f_abs()?.f_mean(Kind::Float)?.f_double_value(&[])?;
    assert!((mean_abs - 0.05).abs() < 0.005, "mean |w| = {mean_abs}");
    Ok(())
}

#[test]
fn shared_embeddings_are_one_tensor() -> TestResult {
    let [_, (_, decoder_shared), (_, all_shared)] =
        <[_; 3]>::try_from(variants()).map_err(|_| "three variants")?;
    // Decoder input = output: no fc_out, nothing to alias.
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &decoder_shared)?;
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert!(!names.iter().any(|n| n.contains("fc_out")), "{names:?}");
    assert!(model.tied_parameters().is_empty());
    // All shared: one variable, listed twice in the state dict.
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &all_shared)?;
    assert_eq!(
        model.tied_parameters(),
        [("decoder.embed_tokens.weight".to_string(), "encoder.embed_tokens.weight".to_string())]
    );
    assert!(!vs.variables().contains_key("decoder.embed_tokens.weight"));
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    let (enc, dec) = (&sd["encoder.embed_tokens.weight"], &sd["decoder.embed_tokens.weight"]);
    assert_eq!(enc.data_ptr(), dec.data_ptr());
    assert_eq!(sd.len(), model.parameters().len() + 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parity with fairseq 0.12.2 itself (fixtures made by `testdata/make_fixture.py`).

struct Parity {
    encoder: f64,
    forward: f64,
    incremental: f64,
}

/// Loads a fixture: fairseq's weights into a fresh model, then compares our encoder output,
/// eval-mode forward and incremental decoding (with fairseq's mid-way reorder) with fairseq's.
fn fairseq_parity(name: &str) -> Res<Parity> {
    let fixture = FairseqFixture::load("lstm", name)?;
    let config: LstmConfig = serde_json::from_value(fixture.config.clone())?;
    let mut vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &config)?;
    fixture.load_into(&mut vs, &model, &[])?;
    let get = |n: &str| fixture.get(n);
    let src = get("__src_tokens")?;
    let encoded = tch::no_grad(|| model.encode(src, false))?;
    let encoder = max_abs_diff(&encoded.out, get("__encoder_out")?)?;
    let (lengths, prev) = (get("__src_lengths")?, get("__prev_output_tokens")?);
    let logits = tch::no_grad(|| model.forward(src, lengths, prev, false))?;
    let forward = max_abs_diff(&logits, get("__logits")?)?;
    let incremental = fixture.incremental_diff(&model)?;
    Ok(Parity { encoder, forward, incremental })
}

#[test]
fn outputs_match_fairseq() -> TestResult {
    for name in ["bidir_attn", "uni_noattn_shared", "shared_all"] {
        let p = fairseq_parity(name)?;
        eprintln!(
            "fairseq parity {name}: encoder {:e}, forward {:e}, incremental {:e}",
            p.encoder, p.forward, p.incremental
        );
        assert!(p.encoder <= TOL && p.forward <= TOL && p.incremental <= TOL, "{name}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Cached decoding, batching, padding and search (the checks every family passes).

#[test]
fn cached_decoding_equals_full_forward() -> TestResult {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let (_vs, model) = build(&config)?;
        let declared = config.decoder_state().tensors.iter().map(|t| t.name.clone()).collect();
        let vocab = (config.src_vocab_size, config.tgt_vocab_size);
        check_cached_equals_full(name, &model, vocab, declared, 7 + i as u64)?;
    }
    Ok(())
}

#[test]
fn batching_and_padding_do_not_change_results() -> TestResult {
    // Unsorted lengths in a batch: the encoder sorts for packing and restores the order.
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let (_vs, model) = build(&config)?;
        let vocab = (config.src_vocab_size, config.tgt_vocab_size);
        check_batching_and_padding(name, &model, vocab, 99 + i as u64)?;
    }
    Ok(())
}

#[test]
fn beam_search_scores_like_the_full_model() -> TestResult {
    let (_vs, model) = build(&tiny())?;
    check_beam_search(&model, 65)
}

// ---------------------------------------------------------------------------------------
// Training: dropout, 16-bit kinds, the loss falls.

#[test]
fn dropout_only_in_train_mode() -> TestResult {
    let (_vs, model) = build(&LstmConfig { dropout: 0.3, ..tiny() })?;
    testing::check_dropout_only_in_train_mode(&model)
}

#[test]
fn training_steps_lower_the_loss() -> TestResult {
    tch::manual_seed(3);
    let config = LstmConfig { dropout: 0.1, ..tiny() };
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &config)?;
    testing::check_training_lowers_the_loss(&vs, &model)
}

#[test]
fn runs_in_16_bit_kinds() -> TestResult {
    let config = tiny();
    let (vs32, model32) = build(&config)?;
    let build =
        |vs: &VarStore| -> Res<Box<dyn Model>> { Ok(Box::new(Lstm::new(&vs.root(), &config)?)) };
    let state = (state_names::INPUT_FEED, state_names::ENCODER_PADDING_MASK);
    testing::check_16_bit_kinds(&vs32, &model32, &build, "decoder.layers.0.weight_ih", state)
}
