//! Tests of the Transformer: presets, fairseq names and shapes, tied embeddings, cached versus
//! uncached decoding, batching independence, beam reordering, safetensors round trip.

use std::collections::BTreeMap;

use seqforge_runtime::decoding::{IncrementalDecoder, LogProbs};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::*;
use crate::models::testing::Tokens;
use crate::models::{TorchDecoder, TorchState};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

const EOS: u32 = 2;
/// Cached and uncached log-probabilities must agree to this.
const TOL: f64 = 1e-5;

fn tiny(normalize_before: bool, learned_pos: bool) -> TransformerConfig {
    TransformerConfig {
        encoder_embed_dim: 16,
        encoder_ffn_embed_dim: 32,
        encoder_layers: 2,
        encoder_attention_heads: 4,
        encoder_normalize_before: normalize_before,
        encoder_learned_pos: learned_pos,
        decoder_embed_dim: 16,
        decoder_ffn_embed_dim: 32,
        decoder_layers: 2,
        decoder_attention_heads: 4,
        decoder_normalize_before: normalize_before,
        decoder_learned_pos: learned_pos,
        max_source_positions: 64,
        max_target_positions: 64,
        ..TransformerConfig::default().with_vocab(40, 48)
    }
}

/// Builds a model and perturbs every parameter, so that layer norms and biases are not at
/// their (symmetric) initial values.
fn build(
    config: &TransformerConfig,
) -> Result<(VarStore, Transformer), Box<dyn std::error::Error>> {
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), config)?;
    let _guard = tch::no_grad_guard();
    for (_, mut t) in vs.variables() {
        let noise = t.f_randn_like()?.f_mul_scalar(0.1)?;
        let _ = t.f_add_(&noise)?;
    }
    Ok((vs, model))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    Ok(a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?)
}

fn max_abs_diff_slices(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max)
}

/// Left-pads sentences into a `[batch, len]` tensor (fairseq's source layout).
fn left_padded(sources: &[Vec<u32>], pad: i64) -> Result<Tensor, Box<dyn std::error::Error>> {
    let len = sources.iter().map(Vec::len).max().unwrap_or(0);
    let mut data = Vec::new();
    for s in sources {
        data.extend(std::iter::repeat_n(pad, len - s.len()));
        data.extend(s.iter().map(|&t| i64::from(t)));
    }
    Ok(Tensor::f_from_slice(&data)?.f_reshape([sources.len() as i64, len as i64])?)
}

/// Right-pads sentences into a `[batch, len]` tensor (fairseq's target layout).
fn right_padded(rows: &[Vec<u32>], pad: i64) -> Result<Tensor, Box<dyn std::error::Error>> {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut data = Vec::new();
    for r in rows {
        data.extend(r.iter().map(|&t| i64::from(t)));
        data.extend(std::iter::repeat_n(pad, len - r.len()));
    }
    Ok(Tensor::f_from_slice(&data)?.f_reshape([rows.len() as i64, len as i64])?)
}

/// Decodes `history` (tokens fed after the initial EOS) for one source alone, from scratch,
/// and returns the log-probabilities after the last token.
fn decode_alone(
    decoder: &mut TorchDecoder<'_>,
    source: &[u32],
    history: &[u32],
) -> Result<LogProbs, Box<dyn std::error::Error>> {
    let encoded = decoder.encode(&[source.to_vec()])?;
    let mut state = decoder.init_state(&encoded, 1)?;
    let mut lp = decoder.step(&[EOS], &mut state)?;
    for &t in history {
        lp = decoder.step(&[t], &mut state)?;
    }
    Ok(lp)
}

// ---------------------------------------------------------------------------------------
// Configuration and presets.

#[test]
fn presets_match_fairseq_transformer_legacy() -> TestResult {
    for name in PRESETS {
        let c = preset(name).ok_or("missing preset")?;
        assert_eq!(c.max_source_positions, 1024, "{name}");
        assert_eq!(c.max_target_positions, 1024, "{name}");
        assert_eq!(c.activation_fn, Activation::Relu, "{name}");
        assert!(!c.encoder_learned_pos && !c.decoder_learned_pos, "{name}");
        assert!(!c.share_all_embeddings && !c.share_decoder_input_output_embed, "{name}");
        assert!(!c.layernorm_embedding && !c.no_scale_embedding, "{name}");
        assert_eq!(c.pad_index, 1);
    }
    // (name, embed, ffn, layers, heads, dropout, attention_dropout, activation_dropout, pre-norm)
    let expected = [
        ("transformer", 512, 2048, 6, 8, 0.1, 0.0, 0.0, false),
        ("transformer_tiny", 64, 64, 2, 2, 0.1, 0.0, 0.0, false),
        ("transformer_iwslt_de_en", 512, 1024, 6, 4, 0.1, 0.0, 0.0, false),
        ("transformer_wmt_en_de", 512, 2048, 6, 8, 0.1, 0.0, 0.0, false),
        ("transformer_vaswani_wmt_en_de_big", 1024, 4096, 6, 16, 0.3, 0.0, 0.0, false),
        ("transformer_vaswani_wmt_en_fr_big", 1024, 4096, 6, 16, 0.1, 0.0, 0.0, false),
        ("transformer_wmt_en_de_big", 1024, 4096, 6, 16, 0.3, 0.1, 0.0, false),
        ("transformer_wmt_en_de_big_t2t", 1024, 4096, 6, 16, 0.3, 0.1, 0.1, true),
    ];
    assert_eq!(expected.len(), PRESETS.len());
    for (name, dim, ffn, layers, heads, p, pa, pact, pre) in expected {
        let c = TransformerConfig::from_preset(name)?;
        for (side, d, f, l, h, nb) in [
            (
                "encoder",
                c.encoder_embed_dim,
                c.encoder_ffn_embed_dim,
                c.encoder_layers,
                c.encoder_attention_heads,
                c.encoder_normalize_before,
            ),
            (
                "decoder",
                c.decoder_embed_dim,
                c.decoder_ffn_embed_dim,
                c.decoder_layers,
                c.decoder_attention_heads,
                c.decoder_normalize_before,
            ),
        ] {
            assert_eq!((d, f, l, h, nb), (dim, ffn, layers, heads, pre), "{name} {side}");
        }
        assert_eq!((c.dropout, c.attention_dropout, c.activation_dropout), (p, pa, pact), "{name}");
    }
    assert!(preset("transformer_huge").is_none());
    assert!(matches!(
        TransformerConfig::from_preset("nope"),
        Err(seqforge_schemas::arch::Error::UnknownArch(_))
    ));
    Ok(())
}

#[test]
fn config_json_round_trip_and_validation() -> TestResult {
    let mut c = TransformerConfig::from_preset("transformer_tiny")?.with_vocab(100, 100);
    c.activation_fn = Activation::Gelu;
    c.share_all_embeddings = true;
    let json = serde_json::to_string_pretty(&c)?;
    assert!(json.contains("\"activation_fn\": \"gelu\""), "{json}");
    let back: TransformerConfig = serde_json::from_str(&json)?;
    assert_eq!(back, c);
    // Missing fields take the base defaults; unknown fields are rejected.
    let partial: TransformerConfig = serde_json::from_str(r#"{"encoder_layers": 3}"#)?;
    assert_eq!(partial.encoder_layers, 3);
    assert_eq!(partial.decoder_layers, 6);
    assert!(serde_json::from_str::<TransformerConfig>(r#"{"encoder_layer": 3}"#).is_err());
    let fast: TransformerConfig = serde_json::from_str(r#"{"activation_fn": "gelu_fast"}"#)?;
    assert_eq!(fast.activation_fn, Activation::GeluAccurate);

    c.validate()?;
    let bad = [
        TransformerConfig::default(), // no vocabulary
        TransformerConfig { encoder_attention_heads: 7, ..tiny(false, false) },
        TransformerConfig { share_all_embeddings: true, ..tiny(false, false) }, // 40 != 48
        TransformerConfig { dropout: 1.0, ..tiny(false, false) },
    ];
    for config in bad {
        assert!(
            matches!(config.validate(), Err(seqforge_schemas::arch::Error::Config(_))),
            "{config:?}"
        );
        let vs = VarStore::new(Device::Cpu);
        assert!(Transformer::new(&vs.root(), &config).is_err());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Positions.

#[test]
fn make_positions_skips_padding() -> TestResult {
    let tokens = Tensor::f_from_slice(&[1i64, 1, 5, 6, 2, 5, 6, 7, 8, 2])?.f_reshape([2, 5])?;
    let positions = make_positions(&tokens, 1)?;
    let got: Vec<i64> = Vec::try_from(positions.f_reshape([-1])?)?;
    assert_eq!(got, [1, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
    Ok(())
}

#[test]
fn sinusoidal_table_is_fairseqs() -> TestResult {
    let (num, dim, pad) = (10i64, 9i64, 1i64);
    let table = sinusoidal_table(num, dim, Some(pad), Device::Cpu)?;
    assert_eq!(table.size(), [num, dim]);
    let half = dim / 2;
    let scale = 10000f64.ln() / (half - 1) as f64;
    for p in 0..num {
        for k in 0..dim {
            let got = table.f_double_value(&[p, k])?;
            let want = if p == pad || k == dim - 1 {
                0.0 // padding row; zero column for an odd dimension
            } else if k < half {
                (p as f64 * (-(k as f64) * scale).exp()).sin()
            } else {
                (p as f64 * (-((k - half) as f64) * scale).exp()).cos()
            };
            assert!((got - want).abs() < 1e-5, "row {p} col {k}: {got} vs {want}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (d) fairseq names and shapes.

/// The state-dict keys and shapes of fairseq 0.12.2's `transformer` (base) architecture with
/// a 40-word source and a 48-word target dictionary, derived from
/// `TransformerEncoderBase`/`TransformerDecoderBase`/`Transformer*LayerBase`/
/// `MultiheadAttention` (and checked against `TransformerModel.build_model(...).state_dict()`),
/// without the encoder layers' fast-path copies (`in_proj_weight`, …, see
/// [`Transformer::fairseq_state_dict`]). `buffers` adds `version` and `_float_tensor`.
fn fairseq_base_keys(buffers: bool) -> Vec<(String, Vec<i64>)> {
    let (d, f) = (512i64, 2048i64);
    let mut keys: Vec<(String, Vec<i64>)> = Vec::new();
    let mut add = |name: String, shape: &[i64]| keys.push((name, shape.to_vec()));
    let attention = |add: &mut dyn FnMut(String, &[i64]), prefix: &str| {
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            add(format!("{prefix}.{proj}.weight"), &[d, d]);
            add(format!("{prefix}.{proj}.bias"), &[d]);
        }
    };
    let norm = |add: &mut dyn FnMut(String, &[i64]), prefix: &str| {
        add(format!("{prefix}.weight"), &[d]);
        add(format!("{prefix}.bias"), &[d]);
    };
    let ffn = |add: &mut dyn FnMut(String, &[i64]), prefix: &str| {
        add(format!("{prefix}.fc1.weight"), &[f, d]);
        add(format!("{prefix}.fc1.bias"), &[f]);
        add(format!("{prefix}.fc2.weight"), &[d, f]);
        add(format!("{prefix}.fc2.bias"), &[d]);
    };
    if buffers {
        add("encoder.version".into(), &[1]);
    }
    add("encoder.embed_tokens.weight".into(), &[40, d]);
    if buffers {
        add("encoder.embed_positions._float_tensor".into(), &[1]);
    }
    for i in 0..6 {
        let p = format!("encoder.layers.{i}");
        attention(&mut add, &format!("{p}.self_attn"));
        norm(&mut add, &format!("{p}.self_attn_layer_norm"));
        ffn(&mut add, &p);
        norm(&mut add, &format!("{p}.final_layer_norm"));
    }
    if buffers {
        add("decoder.version".into(), &[1]);
    }
    add("decoder.embed_tokens.weight".into(), &[48, d]);
    if buffers {
        add("decoder.embed_positions._float_tensor".into(), &[1]);
    }
    for i in 0..6 {
        let p = format!("decoder.layers.{i}");
        attention(&mut add, &format!("{p}.self_attn"));
        norm(&mut add, &format!("{p}.self_attn_layer_norm"));
        attention(&mut add, &format!("{p}.encoder_attn"));
        norm(&mut add, &format!("{p}.encoder_attn_layer_norm"));
        ffn(&mut add, &p);
        norm(&mut add, &format!("{p}.final_layer_norm"));
    }
    add("decoder.output_projection.weight".into(), &[48, d]);
    keys
}

#[test]
fn base_preset_has_fairseq_parameter_names_and_shapes() -> TestResult {
    let config = TransformerConfig::from_preset("transformer")?.with_vocab(40, 48);
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &config)?;

    let expected = fairseq_base_keys(false);
    assert_eq!(expected.len(), 1 + 6 * 16 + 1 + 6 * 26 + 1);
    // The var store's own names (tch joins path components with '.') are fairseq's.
    let in_store: BTreeMap<String, Vec<i64>> =
        vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    let want: BTreeMap<String, Vec<i64>> = expected.iter().cloned().collect();
    assert_eq!(in_store, want);
    // parameters() lists them in fairseq's state-dict order.
    let params: Vec<(String, Vec<i64>)> =
        model.parameters().into_iter().map(|(n, t)| (n, t.size())).collect();
    assert_eq!(params, expected);
    // fairseq_state_dict() adds fairseq's buffers at fairseq's places.
    let sd: Vec<(String, Vec<i64>)> =
        model.fairseq_state_dict().into_iter().map(|(n, t)| (n, t.size())).collect();
    assert_eq!(sd, fairseq_base_keys(true));
    assert!(model.tied_parameters().is_empty());
    // 6 encoder layers of 3,152,384 and 6 decoder layers of 4,204,032 parameters, plus the
    // three embedding matrices.
    let total: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    assert_eq!(total, 6 * 3_152_384 + 6 * 4_204_032 + (40 + 48 + 48) * 512);
    Ok(())
}

#[test]
fn optional_modules_have_fairseq_names() -> TestResult {
    // Pre-norm, learned decoder positions, layernorm_embedding, shared embeddings: the
    // non-layer keys of fairseq's state dict for the same options.
    let config = TransformerConfig {
        encoder_normalize_before: true,
        decoder_normalize_before: true,
        decoder_learned_pos: true,
        layernorm_embedding: true,
        share_all_embeddings: true,
        ..TransformerConfig::from_preset("transformer_tiny")?.with_vocab(40, 40)
    };
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &config)?;
    let top: Vec<(String, Vec<i64>)> = model
        .fairseq_state_dict()
        .into_iter()
        .filter(|(n, _)| !n.contains(".layers."))
        .map(|(n, t)| (n, t.size()))
        .collect();
    let want: Vec<(String, Vec<i64>)> = [
        ("encoder.version", vec![1]),
        ("encoder.embed_tokens.weight", vec![40, 64]),
        ("encoder.embed_positions._float_tensor", vec![1]),
        ("encoder.layernorm_embedding.weight", vec![64]),
        ("encoder.layernorm_embedding.bias", vec![64]),
        ("encoder.layer_norm.weight", vec![64]),
        ("encoder.layer_norm.bias", vec![64]),
        ("decoder.version", vec![1]),
        ("decoder.embed_tokens.weight", vec![40, 64]),
        ("decoder.embed_positions.weight", vec![1026, 64]),
        ("decoder.layernorm_embedding.weight", vec![64]),
        ("decoder.layernorm_embedding.bias", vec![64]),
        ("decoder.layer_norm.weight", vec![64]),
        ("decoder.layer_norm.bias", vec![64]),
        ("decoder.output_projection.weight", vec![40, 64]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    assert_eq!(top, want);
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(names.contains(&"decoder.layers.1.encoder_attn.v_proj.bias".to_string()));
    assert!(!names.contains(&"decoder.embed_tokens.weight".to_string()));
    Ok(())
}

#[test]
fn initialisation_follows_fairseq() -> TestResult {
    let config = TransformerConfig::from_preset("transformer_tiny")?.with_vocab(1000, 1000);
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &config)?;
    let vars = vs.variables();
    let get = |n: &str| vars.get(n).ok_or_else(|| format!("no {n}"));
    let std = |t: &Tensor| t.f_std(true).and_then(|s| s.f_double_value(&[]));
    let absmax = |t: &Tensor| t.f_abs().and_then(|a| a.f_max()).and_then(|m| m.f_double_value(&[]));
    // Embeddings: normal(0, 64^-0.5), padding row zero.
    let emb = get("encoder.embed_tokens.weight")?;
    assert!((std(emb)? - 0.125).abs() < 0.01);
    assert_eq!(absmax(&emb.f_select(0, 1)?)?, 0.0);
    assert!((std(get("decoder.output_projection.weight")?)? - 0.125).abs() < 0.01);
    // q/k/v: xavier uniform, gain 1/sqrt(2): bound sqrt(6 / 128) / sqrt(2).
    let bound = (6.0f64 / 128.0).sqrt() / 2f64.sqrt();
    let q = get("encoder.layers.0.self_attn.q_proj.weight")?;
    assert!(absmax(q)? <= bound && absmax(q)? > 0.9 * bound);
    // out_proj: xavier uniform gain 1, zero bias; fc: PyTorch's default (1/sqrt(fan_in)).
    let out = get("decoder.layers.1.encoder_attn.out_proj.weight")?;
    assert!(absmax(out)? <= (6.0f64 / 128.0).sqrt() && absmax(out)? > bound);
    assert_eq!(absmax(get("decoder.layers.1.encoder_attn.out_proj.bias")?)?, 0.0);
    assert!(absmax(get("encoder.layers.0.fc1.weight")?)? <= 1.0 / 8.0);
    assert!(absmax(get("encoder.layers.0.self_attn.k_proj.bias")?)? > 0.0);
    // Layer norms: weight 1, bias 0.
    let ln = get("decoder.layers.0.final_layer_norm.weight")?;
    assert_eq!(max_abs_diff(ln, &ln.f_ones_like()?)?, 0.0);
    assert_eq!(model.parameters().len(), vars.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (e) Shared embeddings.

#[test]
fn shared_embeddings_are_one_tensor() -> TestResult {
    let config =
        TransformerConfig { share_all_embeddings: true, ..tiny(true, false).with_vocab(40, 40) };
    let (vs, model) = build(&config)?;
    let vars = vs.variables();
    assert!(vars.contains_key("encoder.embed_tokens.weight"));
    assert!(!vars.contains_key("decoder.embed_tokens.weight"));
    assert!(!vars.contains_key("decoder.output_projection.weight"));
    assert_eq!(
        model.tied_parameters(),
        [
            ("decoder.embed_tokens.weight".to_string(), "encoder.embed_tokens.weight".to_string()),
            (
                "decoder.output_projection.weight".to_string(),
                "encoder.embed_tokens.weight".to_string()
            ),
        ]
    );
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    let ptr = |n: &str| sd.get(n).map(Tensor::data_ptr).ok_or(format!("missing {n}"));
    assert_eq!(ptr("encoder.embed_tokens.weight")?, ptr("decoder.embed_tokens.weight")?);
    assert_eq!(ptr("encoder.embed_tokens.weight")?, ptr("decoder.output_projection.weight")?);

    // One tensor for all three uses: its gradient collects from encoder input, decoder input
    // and output projection, and zeroing it zeroes the logits.
    let src = left_padded(&[vec![5, 6, 7, EOS]], 1)?;
    let prev = right_padded(&[vec![EOS, 8, 9]], 1)?;
    let logits = model.forward(&src, &Tensor::f_from_slice(&[4i64])?, &prev, false)?;
    logits.f_sum(Kind::Float)?.f_backward()?;
    let grad = vars.get("encoder.embed_tokens.weight").ok_or("missing")?.f_grad()?;
    let row_norm = |i: i64| {
        grad.f_select(0, i).and_then(|r| r.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[]))
    };
    assert!(row_norm(5)? > 0.0, "source-only token gets a gradient");
    assert!(row_norm(30)? > 0.0, "unused token gets a gradient through the output projection");
    {
        let _guard = tch::no_grad_guard();
        let mut w = vars.get("encoder.embed_tokens.weight").ok_or("missing")?.shallow_clone();
        let _ = w.f_zero_()?;
    }
    let logits = model.forward(&src, &Tensor::f_from_slice(&[4i64])?, &prev, false)?;
    assert_eq!(logits.f_abs()?.f_max()?.f_double_value(&[])?, 0.0);

    // Decoder-only sharing: the output projection is the decoder embedding.
    let config = TransformerConfig { share_decoder_input_output_embed: true, ..tiny(false, true) };
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &config)?;
    let vars = vs.variables();
    assert!(vars.contains_key("decoder.embed_tokens.weight"));
    assert!(!vars.contains_key("decoder.output_projection.weight"));
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    let ptr = |n: &str| sd.get(n).map(Tensor::data_ptr).ok_or(format!("missing {n}"));
    assert_eq!(ptr("decoder.embed_tokens.weight")?, ptr("decoder.output_projection.weight")?);
    assert_ne!(ptr("encoder.embed_tokens.weight")?, ptr("decoder.embed_tokens.weight")?);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (a) Cached incremental decoding equals the full forward pass.

fn cached_equals_full(
    config: &TransformerConfig,
    steps: usize,
    seed: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let (_vs, model) = build(config)?;
    let mut rng = Tokens(seed);
    let vocab = config.tgt_vocab_size;
    let sources = vec![
        rng.sentence(5, config.src_vocab_size),
        rng.sentence(9, config.src_vocab_size),
        rng.sentence(2, config.src_vocab_size),
    ];
    let rows = sources.len();
    let mut decoder = TorchDecoder::new(&model);
    let encoded = decoder.encode(&sources)?;
    let mut state = decoder.init_state(&encoded, 1)?;
    let mut fed: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut cached = Vec::new();
    for _ in 0..steps {
        let tokens: Vec<u32> = if fed[0].is_empty() {
            vec![EOS; rows]
        } else {
            (0..rows).map(|_| rng.next(vocab)).collect()
        };
        for (f, &t) in fed.iter_mut().zip(&tokens) {
            f.push(t);
        }
        cached.push(decoder.step(&tokens, &mut state)?);
    }
    assert_eq!(state.step, steps);
    assert_eq!(state.get(&state_names::self_key(0))?.size()[2], steps as i64);

    // The uncached pass: the whole model on the whole prefix, sources left-padded.
    let src = left_padded(&sources, 1)?;
    let lengths =
        Tensor::f_from_slice(&sources.iter().map(|s| s.len() as i64).collect::<Vec<_>>())?;
    let prev = right_padded(&fed, 1)?;
    let full = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
    let lprobs = model.get_normalized_probs(&full, true)?;
    assert_eq!(lprobs.size(), [rows as i64, steps as i64, vocab as i64]);
    let mut worst = 0f64;
    for (t, step) in cached.iter().enumerate() {
        let want = lprobs.f_select(1, t as i64)?.f_contiguous()?;
        let want: Vec<f32> = Vec::try_from(want.f_reshape([-1])?)?;
        worst = worst.max(max_abs_diff_slices(&step.data, &want));
    }
    Ok(worst)
}

#[test]
fn cached_decoding_equals_full_forward() -> TestResult {
    let mut variants = Vec::new();
    for normalize_before in [false, true] {
        for learned_pos in [false, true] {
            variants.push((
                format!("pre-norm={normalize_before} learned={learned_pos}"),
                tiny(normalize_before, learned_pos),
            ));
        }
    }
    variants.push((
        "shared, layernorm_embedding, gelu, unscaled, post-norm decoder".into(),
        TransformerConfig {
            share_all_embeddings: true,
            layernorm_embedding: true,
            activation_fn: Activation::Gelu,
            no_scale_embedding: true,
            decoder_normalize_before: false,
            ..tiny(true, false).with_vocab(48, 48)
        },
    ));
    for (i, (name, config)) in variants.iter().enumerate() {
        let diff = cached_equals_full(config, 36, 7 + i as u64)?;
        eprintln!("cached vs full, {name}: max |diff| = {diff:e}");
        assert!(diff <= TOL, "{name}: {diff}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (b) Results do not depend on batching.

#[test]
fn batching_and_padding_do_not_change_results() -> TestResult {
    for (normalize_before, learned) in [(false, false), (true, true)] {
        let config = tiny(normalize_before, learned);
        let (_vs, model) = build(&config)?;
        let mut rng = Tokens(99);
        let (sv, tv) = (config.src_vocab_size, config.tgt_vocab_size);
        let sentence = rng.sentence(6, sv);
        let batch = vec![rng.sentence(13, sv), sentence.clone(), rng.sentence(3, sv)];
        let mut decoder = TorchDecoder::new(&model);

        let alone = decoder.encode(std::slice::from_ref(&sentence))?;
        let together = decoder.encode(&batch)?;
        let mut state_alone = decoder.init_state(&alone, 1)?;
        let mut state_batch = decoder.init_state(&together, 1)?;
        let mut worst = 0f64;
        let mut token = EOS;
        let mut history = Vec::new();
        for _ in 0..20 {
            let a = decoder.step(&[token], &mut state_alone)?;
            let b = decoder.step(&[rng.next(tv), token, rng.next(tv)], &mut state_batch)?;
            worst = worst.max(max_abs_diff_slices(a.row(0), b.row(1)));
            history.push(token);
            token = rng.next(tv);
        }
        eprintln!("alone vs batched (incremental), pre-norm={normalize_before}: {worst:e}");
        assert!(worst <= TOL, "{worst}");

        // Teacher forcing: right-padded targets of different lengths in one batch.
        let short = history[..7].to_vec();
        let src = left_padded(&batch, 1)?;
        let lengths = Tensor::f_from_slice(&[13i64, 6, 3])?;
        let prev = right_padded(&[history.clone(), short.clone(), history[..3].to_vec()], 1)?;
        let batched = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
        let single_src = left_padded(std::slice::from_ref(&sentence), 1)?;
        let single_prev = right_padded(std::slice::from_ref(&short), 1)?;
        let single_len = Tensor::f_from_slice(&[6i64])?;
        let single = tch::no_grad(|| model.forward(&single_src, &single_len, &single_prev, false))?;
        let diff =
            max_abs_diff(&batched.f_select(0, 1)?.f_narrow(0, 0, 7)?, &single.f_select(0, 0)?)?;
        eprintln!("alone vs batched (teacher forcing), pre-norm={normalize_before}: {diff:e}");
        assert!(diff <= TOL, "{diff}");
        // Right-padding the source instead of left-padding changes nothing either.
        let right_src = right_padded(&batch, 1)?;
        let batched_right = tch::no_grad(|| model.forward(&right_src, &lengths, &prev, false))?;
        let diff = max_abs_diff(&batched, &batched_right)?;
        assert!(diff <= TOL, "left vs right source padding: {diff}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (c) Beam reordering and pruning of the cache.

#[test]
fn reordered_cache_equals_decoding_each_history_alone() -> TestResult {
    let config = tiny(true, false);
    let (_vs, model) = build(&config)?;
    let mut rng = Tokens(5);
    let (sv, tv) = (config.src_vocab_size, config.tgt_vocab_size);
    let sources = vec![rng.sentence(7, sv), rng.sentence(4, sv)];
    let beam = 3;
    let mut decoder = TorchDecoder::new(&model);
    let encoded = decoder.encode(&sources)?;
    let mut state = decoder.init_state(&encoded, beam)?;
    assert_eq!(decoder.rows(&state), 6);
    // Row bookkeeping: which sentence a row decodes and the tokens it was fed after EOS.
    let mut sentence_of: Vec<usize> = (0..6).map(|r| r / beam).collect();
    let mut history: Vec<Vec<u32>> = vec![Vec::new(); 6];
    decoder.step(&[EOS; 6], &mut state)?;

    let mut advance = |state: &mut TorchState,
                       history: &mut Vec<Vec<u32>>,
                       decoder: &mut TorchDecoder<'_>,
                       n: usize|
     -> Result<LogProbs, Box<dyn std::error::Error>> {
        let mut lp = None;
        for _ in 0..n {
            let tokens: Vec<u32> = history.iter().map(|_| rng.next(tv)).collect();
            for (h, &t) in history.iter_mut().zip(&tokens) {
                h.push(t);
            }
            lp = Some(decoder.step(&tokens, state)?);
        }
        lp.ok_or_else(|| "no step".into())
    };
    let check = |decoder: &mut TorchDecoder<'_>,
                 lp: &LogProbs,
                 sentence_of: &[usize],
                 history: &[Vec<u32>]|
     -> Result<f64, Box<dyn std::error::Error>> {
        let mut worst = 0f64;
        for (row, (&s, h)) in sentence_of.iter().zip(history).enumerate() {
            let alone = decode_alone(decoder, &sources[s], h)?;
            worst = worst.max(max_abs_diff_slices(lp.row(row), alone.row(0)));
        }
        Ok(worst)
    };

    let mut last = advance(&mut state, &mut history, &mut decoder, 5)?;
    let mut worst = check(&mut decoder, &last, &sentence_of, &history)?;

    // Beam reordering: duplicate and permute rows, within and across sentences.
    let order = [2usize, 0, 0, 5, 3, 3, 1];
    decoder.reorder(&mut state, &order)?;
    sentence_of = order.iter().map(|&i| sentence_of[i]).collect();
    history = order.iter().map(|&i| history[i].clone()).collect();
    assert_eq!(decoder.rows(&state), 7);
    last = advance(&mut state, &mut history, &mut decoder, 6)?;
    worst = worst.max(check(&mut decoder, &last, &sentence_of, &history)?);

    // Pruning finished rows: a shorter order.
    let order = [6usize, 3];
    decoder.reorder(&mut state, &order)?;
    sentence_of = order.iter().map(|&i| sentence_of[i]).collect();
    history = order.iter().map(|&i| history[i].clone()).collect();
    last = advance(&mut state, &mut history, &mut decoder, 4)?;
    worst = worst.max(check(&mut decoder, &last, &sentence_of, &history)?);
    eprintln!("reordered cache vs each history alone: max |diff| = {worst:e}");
    assert!(worst <= TOL, "{worst}");

    // Everything pruned: zero rows still step.
    decoder.reorder(&mut state, &[])?;
    let empty = decoder.step(&[], &mut state)?;
    assert_eq!((empty.rows, empty.data.len()), (0, 0));
    // An empty batch is fine too.
    let none = decoder.encode(&[])?;
    let mut empty_state = decoder.init_state(&none, 4)?;
    assert_eq!(decoder.rows(&empty_state), 0);
    assert_eq!(decoder.step(&[], &mut empty_state)?.rows, 0);
    // Bad inputs are errors, not panics.
    assert!(decoder.reorder(&mut state, &[0]).is_err());
    assert!(decoder.step(&[EOS], &mut state).is_err());
    assert!(decoder.encode(&[vec![]]).is_err());
    assert!(decoder.encode(&[vec![1000, EOS]]).is_err());
    assert!(decoder.encode(&[vec![5; 65]]).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Dropout and the safetensors round trip.

#[test]
fn dropout_only_in_train_mode() -> TestResult {
    let config = TransformerConfig {
        dropout: 0.3,
        attention_dropout: 0.2,
        activation_dropout: 0.1,
        ..tiny(false, false)
    };
    let (_vs, model) = build(&config)?;
    let src = left_padded(&[vec![5, 6, 7, EOS], vec![8, EOS]], 1)?;
    let lengths = Tensor::f_from_slice(&[4i64, 2])?;
    let prev = right_padded(&[vec![EOS, 9, 10], vec![EOS, 11]], 1)?;
    let run = |train| tch::no_grad(|| model.forward(&src, &lengths, &prev, train));
    assert_eq!(max_abs_diff(&run(false)?, &run(false)?)?, 0.0);
    assert!(max_abs_diff(&run(true)?, &run(true)?)? > 1e-3);
    assert!(max_abs_diff(&run(true)?, &run(false)?)? > 1e-3);
    Ok(())
}

#[test]
fn safetensors_round_trip_keeps_outputs() -> TestResult {
    let config = tiny(true, true);
    let (vs, model) = build(&config)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.safetensors");
    vs.save(&path)?;
    // The file holds exactly the fairseq names.
    let saved: BTreeMap<String, Vec<i64>> =
        Tensor::read_safetensors(&path)?.into_iter().map(|(n, t)| (n, t.size())).collect();
    let own: BTreeMap<String, Vec<i64>> =
        model.parameters().into_iter().map(|(n, t)| (n, t.size())).collect();
    assert_eq!(saved, own);

    let (mut vs2, model2) = build(&config)?;
    let src = left_padded(&[vec![5, 6, 7, EOS], vec![8, EOS]], 1)?;
    let lengths = Tensor::f_from_slice(&[4i64, 2])?;
    let prev = right_padded(&[vec![EOS, 9, 10], vec![EOS, 11]], 1)?;
    let before = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
    assert!(
        max_abs_diff(&before, &tch::no_grad(|| model2.forward(&src, &lengths, &prev, false))?)?
            > 1e-3
    );
    vs2.load(&path)?;
    let after = tch::no_grad(|| model2.forward(&src, &lengths, &prev, false))?;
    assert_eq!(max_abs_diff(&before, &after)?, 0.0);
    let a = decode_alone(&mut TorchDecoder::new(&model), &[5, 6, 7, EOS], &[9, 10])?;
    let b = decode_alone(&mut TorchDecoder::new(&model2), &[5, 6, 7, EOS], &[9, 10])?;
    assert_eq!(a, b);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parity with fairseq 0.12.2 itself (fixtures made by `testdata/make_fixture.py`).

/// Loads a fixture: fairseq's weights into a fresh model, then compares our eval-mode forward
/// with fairseq's logits, and our cached decoding with fairseq's incremental decoding.
fn fairseq_parity(name: &str) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/models/transformer/testdata")
        .join(format!("fairseq_parity_{name}.safetensors"));
    let bytes = std::fs::read(&path)?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let config_json =
        metadata.metadata().as_ref().and_then(|m| m.get("config")).ok_or("no config")?;
    let config: TransformerConfig = serde_json::from_str(config_json)?;
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)?.into_iter().collect();
    let get = |n: &str| tensors.get(n).ok_or_else(|| format!("{name}: no {n}"));

    let mut vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &config)?;
    // Every fairseq weight is one of our variables, and the other way round.
    let fairseq_params: Vec<&String> = tensors.keys().filter(|n| !n.starts_with("__")).collect();
    let ours: Vec<String> = vs.variables().into_keys().collect();
    assert_eq!(fairseq_params.len(), ours.len(), "{name}");
    vs.load(&path)?;

    let src = get("__src_tokens")?;
    let prev = get("__prev_output_tokens")?;
    let lengths = get("__src_lengths")?;
    let logits = tch::no_grad(|| model.forward(src, lengths, prev, false))?;
    let forward_diff = max_abs_diff(&logits, get("__logits")?)?;

    // Incremental decoding of each row's prefix, compared where the row is not padding.
    let want = get("__step_lprobs")?;
    let mut decoder = TorchDecoder::new(&model);
    let sources: Vec<Vec<u32>> = (0..src.size()[0])
        .map(|i| {
            let row: Vec<i64> = Vec::try_from(src.f_select(0, i)?)?;
            Ok(row.into_iter().filter(|&t| t != 1).map(|t| t as u32).collect())
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let encoded = decoder.encode(&sources)?;
    let mut state = decoder.init_state(&encoded, 1)?;
    let mut step_diff = 0f64;
    for t in 0..prev.size()[1] {
        let tokens: Vec<u32> = Vec::<i64>::try_from(prev.f_select(1, t)?)?
            .into_iter()
            .map(|x| if x == 1 { EOS } else { x as u32 }) // past a row's end: any token
            .collect();
        let lp = decoder.step(&tokens, &mut state)?;
        for row in 0..sources.len() {
            if prev.f_int64_value(&[row as i64, t])? == 1 {
                continue;
            }
            let w: Vec<f32> = Vec::try_from(want.f_select(0, row as i64)?.f_select(0, t)?)?;
            step_diff = step_diff.max(max_abs_diff_slices(lp.row(row), &w));
        }
    }
    Ok((forward_diff, step_diff))
}

#[test]
fn outputs_match_fairseq() -> TestResult {
    for name in ["postnorm", "prenorm_shared", "mixed"] {
        let (forward, steps) = fairseq_parity(name)?;
        eprintln!("fairseq parity {name}: forward {forward:e}, incremental {steps:e}");
        assert!(forward <= TOL && steps <= TOL, "{name}: {forward} {steps}");
    }
    Ok(())
}
