//! Tests of the ConvS2S model: parity with fairseq 0.12.2 (encoder outputs, forward, gradients
//! through weight normalisation and GradMultiply, incremental decoding with a beam reorder),
//! fairseq's names and initialisation, the tied output embedding, cached versus full decoding,
//! independence from batching and padding, beam search, dropout, 16-bit kinds and a few
//! training steps.

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

/// A small config with every kind of layer: an even encoder kernel, residual projections, a
/// layer without residual, a residual two layers back, a 1×1 decoder layer, attention in some
/// decoder layers only.
fn tiny() -> FConvConfig {
    FConvConfig {
        dropout: 0.2,
        encoder_embed_dim: 10,
        encoder_layers: "[(12, 3)] * 2 + [(16, 2)] + [(16, 1, 0)]".into(),
        decoder_embed_dim: 10,
        decoder_layers: "[(12, 3), (12, 2)] + [(16, 3, 2)] + [(16, 1)]".into(),
        decoder_out_embed_dim: 8,
        decoder_attention: "[True, False, True, True]".into(),
        max_source_positions: 64,
        max_target_positions: 64,
        ..FConvConfig::default().with_vocab(30, 36)
    }
}

/// Variants covering the optional modules.
fn variants() -> Vec<(&'static str, FConvConfig)> {
    vec![
        ("mixed layers, partial attention", tiny()),
        (
            "shared output embedding, wide kernels",
            FConvConfig {
                encoder_embed_dim: 12,
                encoder_layers: "[(14, 5)]".into(),
                decoder_embed_dim: 12,
                decoder_layers: "[(12, 4)] * 2".into(),
                decoder_out_embed_dim: 12,
                decoder_attention: "True".into(),
                share_input_output_embed: true,
                ..tiny()
            },
        ),
    ]
}

/// Builds a model and perturbs every parameter away from its initial value.
fn build(config: &FConvConfig) -> Res<(VarStore, FConv)> {
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), config)?;
    perturb(&vs)?;
    Ok((vs, model))
}

// ---------------------------------------------------------------------------------------
// Configuration, names, initialisation.

#[test]
fn presets_follow_fairseq_and_validate() -> TestResult {
    assert_eq!(
        PRESETS,
        ["fconv", "fconv_iwslt_de_en", "fconv_wmt_en_ro", "fconv_wmt_en_de", "fconv_wmt_en_fr"]
    );
    // (name, embed, encoder layers, decoder layers, out_embed)
    let expected = [
        ("fconv", 512, 20, 20, 256),
        ("fconv_iwslt_de_en", 256, 4, 3, 256),
        ("fconv_wmt_en_ro", 512, 20, 20, 512),
        ("fconv_wmt_en_de", 768, 15, 15, 512),
        ("fconv_wmt_en_fr", 768, 15, 15, 512),
    ];
    for (name, embed, enc, dec, out) in expected {
        let c = FConvConfig::from_preset(name)?;
        assert_eq!((c.encoder_embed_dim, c.decoder_embed_dim), (embed, embed), "{name}");
        assert_eq!(c.encoder_convolutions()?.len(), enc, "{name}");
        assert_eq!(c.decoder_convolutions()?.len(), dec, "{name}");
        assert_eq!((c.decoder_out_embed_dim, c.dropout), (out, 0.1), "{name}");
        c.with_vocab(40, 40).validate()?;
    }
    let vs = VarStore::new(Device::Cpu);
    let bad = FConvConfig { decoder_layers: "[(512,)] * 2".into(), ..tiny() };
    let e = FConv::new(&vs.root(), &bad).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("[(512,)] * 2") && e.contains("expected 2 or 3 parameters"), "{e}");
    Ok(())
}

#[test]
fn parameters_have_fairseq_names_and_init() -> TestResult {
    let config = FConvConfig { dropout: 0.2, ..FConvConfig::from_preset("fconv_iwslt_de_en")? }
        .with_vocab(500, 600);
    tch::manual_seed(5);
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    let size = |n: &str| sd.get(n).map(Tensor::size);
    assert_eq!(size("encoder.embed_positions.weight"), Some(vec![1024, 256]));
    assert_eq!(size("encoder.convolutions.3.weight_v"), Some(vec![3, 256, 512]));
    assert_eq!(size("encoder.convolutions.3.weight_g"), Some(vec![1, 1, 512]));
    assert_eq!(size("encoder.fc1.weight_g"), Some(vec![256, 1]));
    assert_eq!(size("decoder.attention.2.in_projection.weight_v"), Some(vec![256, 256]));
    assert_eq!(size("decoder.fc3.weight_v"), Some(vec![600, 256]));
    assert_eq!(size("decoder.version"), Some(vec![1]));
    assert!(!vs.variables().contains_key("decoder.version"), "a buffer, not a parameter");
    // weight_g starts as ‖weight_v‖; v is normal with σ √(4(1−p)/(k·in)) for convolutions and
    // √((1−p)/in) for linears (p only where dropout precedes the layer); biases zero;
    // embeddings σ 0.1 with a zero padding row.
    let std = |t: &Tensor| -> Res<f64> { Ok(t.f_std(false)?.f_double_value(&[])?) };
    let v = &sd["encoder.convolutions.3.weight_v"];
    let want = (4.0f64 * 0.8 / (3.0 * 256.0)).sqrt();
    assert!((std(v)? / want - 1.0).abs() < 0.05, "conv σ {} vs {want}", std(v)?);
    let norm = Tensor::f_norm_except_dim(v, 2, 2)?;
    assert!(max_abs_diff(&norm, &sd["encoder.convolutions.3.weight_g"])? < 1e-5);
    let fc1 = &sd["decoder.fc1.weight_v"];
    let want = (0.8f64 / 256.0).sqrt();
    assert!((std(fc1)? / want - 1.0).abs() < 0.05, "fc1 σ {} vs {want}", std(fc1)?);
    let fc2 = &sd["encoder.fc2.weight_v"];
    let want = (1.0f64 / 256.0).sqrt();
    assert!((std(fc2)? / want - 1.0).abs() < 0.05, "fc2 σ {} vs {want}", std(fc2)?);
    assert_eq!(sd["decoder.fc3.bias"].f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])?, 0.0);
    let emb = &sd["decoder.embed_tokens.weight"];
    assert!((std(emb)? - 0.1).abs() < 0.01);
    assert_eq!(emb.f_select(0, PAD)?.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])?, 0.0);
    Ok(())
}

#[test]
fn shared_output_embedding_is_one_tensor_with_its_own_bias() -> TestResult {
    let (_, config) = variants().remove(1);
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    assert_eq!(
        model.tied_parameters(),
        [("decoder.fc3.weight".to_string(), "decoder.embed_tokens.weight".to_string())]
    );
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    assert_eq!(sd["decoder.fc3.weight"].data_ptr(), sd["decoder.embed_tokens.weight"].data_ptr());
    assert!(vs.variables().contains_key("decoder.fc3.bias"));
    // nn.Linear's bias initialisation: uniform in ±1/√in, not zero.
    let bias = &sd["decoder.fc3.bias"];
    let bound = 1.0 / 12f64.sqrt();
    assert!(bias.f_abs()?.f_max()?.f_double_value(&[])? <= bound);
    assert!(bias.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])? > 0.0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parity with fairseq 0.12.2 itself (fixtures made by `testdata/make_fixture.py`).

struct Parity {
    encoder: f64,
    forward: f64,
    gradient: f64,
    incremental: f64,
}

/// Loads a fixture: fairseq's weights into a fresh model, then compares our encoder outputs,
/// eval-mode forward, parameter gradients and incremental decoding (with fairseq's mid-way
/// reorder) with fairseq's.
fn fairseq_parity(name: &str) -> Res<Parity> {
    let fixture = FairseqFixture::load("fconv", name)?;
    let config: FConvConfig = serde_json::from_value(fixture.config.clone())?;
    let mut vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    fixture.load_into(&mut vs, &model, &["decoder.version"])?;
    let get = |n: &str| fixture.get(n);
    let src = get("__src_tokens")?;
    let encoded = tch::no_grad(|| model.encode(src, false))?;
    let encoder = max_abs_diff(&encoded.a, get("__encoder_a")?)?
        .max(max_abs_diff(&encoded.b, get("__encoder_b")?)?);
    let logits = model.forward(src, get("__src_lengths")?, get("__prev_output_tokens")?, false)?;
    let forward = max_abs_diff(&logits.f_detach()?, get("__logits")?)?;
    logits.f_mul(get("__grad_weights")?)?.f_sum(Kind::Float)?.backward();
    let mut gradient = 0f64;
    for (param, t) in model.parameters() {
        let want = get(&format!("__grad.{param}"))?;
        // Relative to the gradient's scale (sums over many positions).
        let scale = want.f_abs()?.f_max()?.f_double_value(&[])?.max(1.0);
        gradient = gradient.max(max_abs_diff(&t.grad(), want)? / scale);
    }
    let incremental = fixture.incremental_diff(&model)?;
    Ok(Parity { encoder, forward, gradient, incremental })
}

#[test]
fn outputs_and_gradients_match_fairseq() -> TestResult {
    for name in ["mixed", "shared", "iwslt_unpadded"] {
        let p = fairseq_parity(name)?;
        eprintln!(
            "fairseq parity {name}: encoder {:e}, forward {:e}, gradient (relative) {:e}, \
             incremental {:e}",
            p.encoder, p.forward, p.gradient, p.incremental
        );
        assert!(p.encoder <= TOL && p.forward <= TOL && p.incremental <= TOL, "{name}");
        assert!(p.gradient <= TOL, "{name}: gradient {:e}", p.gradient);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Cached decoding, batching, padding and search (the checks every family passes).

#[test]
fn cached_decoding_equals_full_forward() -> TestResult {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let (_vs, model) = build(&config)?;
        let declared = config.decoder_state()?.tensors.iter().map(|t| t.name.clone()).collect();
        let vocab = (config.src_vocab_size, config.tgt_vocab_size);
        check_cached_equals_full(name, &model, vocab, declared, 7 + i as u64)?;
    }
    Ok(())
}

#[test]
fn batching_and_padding_do_not_change_results() -> TestResult {
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
    // 64 position rows hold 62 positions.
    check_beam_search(&model, 63)
}

// ---------------------------------------------------------------------------------------
// Training: dropout, 16-bit kinds, the loss falls.

#[test]
fn dropout_only_in_train_mode() -> TestResult {
    let (_vs, model) = build(&tiny())?;
    testing::check_dropout_only_in_train_mode(&model)
}

#[test]
fn training_steps_lower_the_loss() -> TestResult {
    tch::manual_seed(3);
    let config = FConvConfig { dropout: 0.1, ..tiny() };
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    testing::check_training_lowers_the_loss(&vs, &model)
}

#[test]
fn runs_in_16_bit_kinds() -> TestResult {
    let config = tiny();
    let (vs32, model32) = build(&config)?;
    let build =
        |vs: &VarStore| -> Res<Box<dyn Model>> { Ok(Box::new(FConv::new(&vs.root(), &config)?)) };
    let state = (state_names::window(0), state_names::ENCODER_PADDING_MASK);
    testing::check_16_bit_kinds(
        &vs32,
        &model32,
        &build,
        "encoder.convolutions.0.weight_v",
        (&state.0, state.1),
    )
}
