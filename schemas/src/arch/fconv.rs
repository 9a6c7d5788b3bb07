//! fairseq's convolutional sequence-to-sequence model (`fairseq/models/fconv.py`, Gehring et
//! al. 2017, "Convolutional Sequence to Sequence Learning") hyper-parameters, its named
//! architectures and its layer spec strings.
//!
//! Field names are fairseq's argument names. The layer specs stay the strings fairseq takes
//! (`--encoder-layers '[(512, 3)] * 20'`, `--decoder-attention True`), so a config reads as the
//! command line that made it; [`parse_layers`] and [`parse_attention`] evaluate them as
//! fairseq's `eval` does for the forms fairseq documents (lists and tuples of integers and
//! booleans, `+` and `*`), and refuse anything else with the spec quoted.

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// fairseq's translation task default `--max-source-positions` / `--max-target-positions`.
pub const DEFAULT_MAX_POSITIONS: usize = 1024;

/// All hyper-parameters of fairseq's `fconv` model, plus the dictionary sizes and padding
/// index.
///
/// [`Default`] is fairseq's `fconv` base architecture with empty vocabularies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FConvConfig {
    /// Dropout probability (embeddings, the input of every convolution, before `fc3`); it also
    /// sets the initial weight scale of the layers it precedes, as in fairseq.
    pub dropout: f64,
    /// Encoder embedding dimension (also the width of the encoder's outputs).
    pub encoder_embed_dim: usize,
    /// Encoder layers, fairseq's spec: `[(out_channels, kernel_size[, residual]), …]`.
    pub encoder_layers: String,
    /// Decoder embedding dimension.
    pub decoder_embed_dim: usize,
    /// Decoder layers, the same form as [`FConvConfig::encoder_layers`].
    pub decoder_layers: String,
    /// Width of `fc2`'s output (the input of the output projection `fc3`).
    pub decoder_out_embed_dim: usize,
    /// Which decoder layers attend: `True`, `False` or a list of booleans, one per layer.
    pub decoder_attention: String,
    /// Tie the decoder's input embedding and output projection `fc3`.
    pub share_input_output_embed: bool,
    /// Rows of the encoder's learned position table (the longest source is this minus
    /// `pad_index + 1`, fairseq's `LearnedPositionalEmbedding.max_positions`).
    pub max_source_positions: usize,
    /// Rows of the decoder's learned position table.
    pub max_target_positions: usize,
    /// Source dictionary size (set from the data).
    pub src_vocab_size: usize,
    /// Target dictionary size (set from the data).
    pub tgt_vocab_size: usize,
    /// Padding index of both dictionaries.
    pub pad_index: usize,
}

impl Default for FConvConfig {
    /// fairseq's `fconv` `base_architecture`.
    fn default() -> Self {
        Self {
            dropout: 0.1,
            encoder_embed_dim: 512,
            encoder_layers: "[(512, 3)] * 20".into(),
            decoder_embed_dim: 512,
            decoder_layers: "[(512, 3)] * 20".into(),
            decoder_out_embed_dim: 256,
            decoder_attention: "True".into(),
            share_input_output_embed: false,
            max_source_positions: DEFAULT_MAX_POSITIONS,
            max_target_positions: DEFAULT_MAX_POSITIONS,
            src_vocab_size: 0,
            tgt_vocab_size: 0,
            pad_index: 1,
        }
    }
}

/// The ConvS2S architectures fairseq 0.12.2 registers.
pub const PRESETS: &[&str] =
    &["fconv", "fconv_iwslt_de_en", "fconv_wmt_en_ro", "fconv_wmt_en_de", "fconv_wmt_en_fr"];

/// The config of a named architecture (fairseq's `register_model_architecture` functions).
pub fn preset(name: &str) -> Option<FConvConfig> {
    let base = FConvConfig::default();
    Some(match name {
        "fconv" => base,
        "fconv_iwslt_de_en" => FConvConfig {
            encoder_embed_dim: 256,
            encoder_layers: "[(256, 3)] * 4".into(),
            decoder_embed_dim: 256,
            decoder_layers: "[(256, 3)] * 3".into(),
            decoder_out_embed_dim: 256,
            ..base
        },
        "fconv_wmt_en_ro" => FConvConfig { decoder_out_embed_dim: 512, ..base },
        "fconv_wmt_en_de" => {
            let convs = "[(512, 3)] * 9 + [(1024, 3)] * 4 + [(2048, 1)] * 2";
            FConvConfig {
                encoder_embed_dim: 768,
                encoder_layers: convs.into(),
                decoder_embed_dim: 768,
                decoder_layers: convs.into(),
                decoder_out_embed_dim: 512,
                ..base
            }
        }
        "fconv_wmt_en_fr" => {
            let convs = "[(512, 3)] * 6 + [(768, 3)] * 4 + [(1024, 3)] * 3 + [(2048, 1)] * 1 + \
                         [(4096, 1)] * 1";
            FConvConfig {
                encoder_embed_dim: 768,
                encoder_layers: convs.into(),
                decoder_embed_dim: 768,
                decoder_layers: convs.into(),
                decoder_out_embed_dim: 512,
                ..base
            }
        }
        _ => return None,
    })
}

/// One convolutional layer of a spec, after fairseq's `extend_conv_spec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayer {
    /// Output channels (the convolution itself has twice as many: GLU halves them).
    pub out_channels: usize,
    /// Kernel width.
    pub kernel_size: usize,
    /// The residual connection: 0 = none, `k` = add the output of the layer `k` back (1 = the
    /// layer's own input; fairseq's default).
    pub residual: usize,
}

/// A layer of a convolution stack with its input width and where its residual comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvBlock {
    /// The layer as specified.
    pub layer: ConvLayer,
    /// Its input channels (the previous layer's output, or the first layer's width for
    /// layer 0: fairseq's `fc1` projects the embeddings to it).
    pub in_channels: usize,
    /// Width of the residual it adds (`None` without a residual); a projection
    /// (`projections.{i}`) maps it to `out_channels` when the widths differ.
    pub residual_dim: Option<usize>,
}

impl ConvBlock {
    /// Whether the layer has a residual projection (`projections.{i}`).
    pub fn has_projection(&self) -> bool {
        self.residual_dim.is_some_and(|d| d != self.layer.out_channels)
    }
}

/// fairseq's layer bookkeeping (`layer_in_channels`) over `layers`: each layer's input width
/// and residual source width.
pub fn conv_blocks(layers: &[ConvLayer]) -> Vec<ConvBlock> {
    let Some(first) = layers.first() else { return Vec::new() };
    let mut widths = vec![first.out_channels];
    let mut in_channels = first.out_channels;
    let mut blocks = Vec::with_capacity(layers.len());
    for &layer in layers {
        let residual_dim = (layer.residual > 0).then(|| widths[widths.len() - layer.residual]);
        blocks.push(ConvBlock { layer, in_channels, residual_dim });
        in_channels = layer.out_channels;
        widths.push(layer.out_channels);
    }
    blocks
}

/// A value of the small Python subset the specs are written in.
#[derive(Debug, Clone, PartialEq)]
enum PyValue {
    Int(i64),
    Bool(bool),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
}

impl PyValue {
    fn describe(&self) -> String {
        match self {
            PyValue::Int(v) => v.to_string(),
            PyValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            PyValue::List(items) => {
                format!("[{}]", items.iter().map(PyValue::describe).collect::<Vec<_>>().join(", "))
            }
            PyValue::Tuple(items) => {
                let inner = items.iter().map(PyValue::describe).collect::<Vec<_>>().join(", ");
                if items.len() == 1 { format!("({inner},)") } else { format!("({inner})") }
            }
        }
    }
}

/// Recursive-descent evaluator of Python literals with `+` (concatenation) and `*`
/// (repetition), the expressions fairseq's fconv specs use.
struct SpecParser<'a> {
    text: &'a [u8],
    at: usize,
}

/// Longest list a spec may expand to (a guard against `[(1, 1)] * 10**9`-style typos).
const MAX_SPEC_ITEMS: usize = 100_000;

impl<'a> SpecParser<'a> {
    fn parse(text: &'a str) -> std::result::Result<PyValue, String> {
        let mut p = SpecParser { text: text.as_bytes(), at: 0 };
        let v = p.expr()?;
        p.skip_ws();
        if p.at != p.text.len() {
            return Err(format!("unexpected {:?} at offset {}", p.rest(), p.at));
        }
        Ok(v)
    }

    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.text[self.at..]).chars().take(12).collect()
    }

    fn skip_ws(&mut self) {
        while self.text.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.text.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> std::result::Result<PyValue, String> {
        let mut v = self.term()?;
        while self.eat(b'+') {
            let rhs = self.term()?;
            v = match (v, rhs) {
                (PyValue::List(mut a), PyValue::List(b)) => {
                    a.extend(b);
                    PyValue::List(a)
                }
                (PyValue::Tuple(mut a), PyValue::Tuple(b)) => {
                    a.extend(b);
                    PyValue::Tuple(a)
                }
                (PyValue::Int(a), PyValue::Int(b)) => {
                    PyValue::Int(a.checked_add(b).ok_or("integer overflow")?)
                }
                (a, b) => {
                    return Err(format!("cannot add {} and {}", a.describe(), b.describe()));
                }
            };
        }
        Ok(v)
    }

    fn term(&mut self) -> std::result::Result<PyValue, String> {
        let mut v = self.atom()?;
        while self.eat(b'*') {
            let rhs = self.atom()?;
            v = match (v, rhs) {
                (PyValue::Int(a), PyValue::Int(b)) => {
                    PyValue::Int(a.checked_mul(b).ok_or("integer overflow")?)
                }
                (PyValue::List(items), PyValue::Int(n))
                | (PyValue::Int(n), PyValue::List(items)) => PyValue::List(repeat(items, n)?),
                (PyValue::Tuple(items), PyValue::Int(n))
                | (PyValue::Int(n), PyValue::Tuple(items)) => PyValue::Tuple(repeat(items, n)?),
                (a, b) => {
                    return Err(format!("cannot multiply {} by {}", a.describe(), b.describe()));
                }
            };
        }
        Ok(v)
    }

    fn atom(&mut self) -> std::result::Result<PyValue, String> {
        self.skip_ws();
        match self.text.get(self.at) {
            Some(b'[') => {
                self.at += 1;
                let (items, _) = self.items(b']')?;
                Ok(PyValue::List(items))
            }
            Some(b'(') => {
                self.at += 1;
                let (mut items, trailing_comma) = self.items(b')')?;
                // `(x)` is x; `(x,)` and `(x, y)` are tuples.
                if items.len() == 1 && !trailing_comma {
                    Ok(items.remove(0))
                } else {
                    Ok(PyValue::Tuple(items))
                }
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let start = self.at;
                self.at += 1;
                while self.text.get(self.at).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
                    self.at += 1;
                }
                let digits: String = String::from_utf8_lossy(&self.text[start..self.at])
                    .chars()
                    .filter(|&c| c != '_')
                    .collect();
                digits
                    .parse::<i64>()
                    .map(PyValue::Int)
                    .map_err(|_| format!("{digits:?} is not an integer"))
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let start = self.at;
                while self
                    .text
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.at += 1;
                }
                match &self.text[start..self.at] {
                    b"True" => Ok(PyValue::Bool(true)),
                    b"False" => Ok(PyValue::Bool(false)),
                    other => Err(format!(
                        "unexpected name {:?} (only integers, True/False, lists, tuples, + and * \
                         are allowed)",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
            Some(_) => Err(format!("unexpected {:?} at offset {}", self.rest(), self.at)),
            None => Err("unexpected end of the spec".into()),
        }
    }

    /// Comma-separated expressions up to `close`; whether the last one had a trailing comma.
    fn items(&mut self, close: u8) -> std::result::Result<(Vec<PyValue>, bool), String> {
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            if self.eat(close) {
                return Ok((items, trailing_comma));
            }
            items.push(self.expr()?);
            trailing_comma = self.eat(b',');
            if !trailing_comma {
                if self.eat(close) {
                    return Ok((items, false));
                }
                return Err(format!(
                    "expected ',' or '{}' at offset {}, found {:?}",
                    close as char,
                    self.at,
                    self.rest()
                ));
            }
        }
    }
}

fn repeat(items: Vec<PyValue>, n: i64) -> std::result::Result<Vec<PyValue>, String> {
    let n = usize::try_from(n).unwrap_or(0);
    if items.len().saturating_mul(n) > MAX_SPEC_ITEMS {
        return Err(format!("the spec expands to more than {MAX_SPEC_ITEMS} items"));
    }
    Ok(items.iter().cycle().take(items.len() * n).cloned().collect())
}

/// The expected form, quoted in every spec error.
const LAYERS_FORM: &str = "a list of (out_channels, kernel_size) or (out_channels, kernel_size, \
                           residual) tuples, e.g. \"[(512, 3)] * 20\" or \"[(512, 3)] * 9 + \
                           [(1024, 3)] * 4 + [(2048, 1)] * 2\"";

/// Parses a layer spec (`--encoder-layers` / `--decoder-layers`, named `flag` in errors) as
/// fairseq does (`eval` then `extend_conv_spec`: a missing residual is 1).
pub fn parse_layers(flag: &str, spec: &str) -> Result<Vec<ConvLayer>> {
    let fail =
        |why: String| Error::Config(format!("{flag} {spec:?}: {why}; expected {LAYERS_FORM}"));
    let items = match SpecParser::parse(spec).map_err(fail)? {
        PyValue::List(items) | PyValue::Tuple(items) => items,
        other => return Err(fail(format!("evaluates to {}, not a list", other.describe()))),
    };
    if items.is_empty() {
        return Err(fail("no layers".into()));
    }
    let positive = |v: &PyValue| match v {
        PyValue::Int(n) if *n > 0 => usize::try_from(*n).ok(),
        _ => None,
    };
    let mut layers = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let bad = |why: &str| fail(format!("layer {index} is {}: {why}", item.describe()));
        let PyValue::Tuple(fields) = item else {
            return Err(bad("not a tuple"));
        };
        if !(2..=3).contains(&fields.len()) {
            return Err(bad("expected 2 or 3 parameters"));
        }
        let out_channels = positive(&fields[0]).ok_or_else(|| bad("out_channels must be > 0"))?;
        let kernel_size = positive(&fields[1]).ok_or_else(|| bad("kernel_size must be > 0"))?;
        let residual = match fields.get(2) {
            None => 1,
            Some(PyValue::Int(r)) if *r >= 0 => usize::try_from(*r).unwrap_or(usize::MAX),
            Some(_) => return Err(bad("residual must be an integer >= 0")),
        };
        // fairseq reads `layer_in_channels[-residual]`: at most the layers so far plus the
        // input.
        if residual > index + 1 {
            return Err(bad(&format!(
                "residual {residual} looks back past the input (at most {})",
                index + 1
            )));
        }
        layers.push(ConvLayer { out_channels, kernel_size, residual });
    }
    Ok(layers)
}

/// Parses `--decoder-attention` for a decoder of `layers` layers: `True`/`False` for every
/// layer, or a list of booleans with one per layer (fairseq's check).
pub fn parse_attention(spec: &str, layers: usize) -> Result<Vec<bool>> {
    let fail = |why: String| {
        Error::Config(format!(
            "--decoder-attention {spec:?}: {why}; expected True, False or a list of {layers} \
             booleans, e.g. \"[True] * {layers}\""
        ))
    };
    match SpecParser::parse(spec).map_err(fail)? {
        PyValue::Bool(b) => Ok(vec![b; layers]),
        PyValue::List(items) if items.len() == layers => items
            .iter()
            .map(|v| match v {
                PyValue::Bool(b) => Ok(*b),
                other => Err(fail(format!("{} is not a boolean", other.describe()))),
            })
            .collect(),
        PyValue::List(items) => {
            Err(fail(format!("{} entries for {layers} decoder layers", items.len())))
        }
        other => Err(fail(format!("evaluates to {}", other.describe()))),
    }
}

impl FConvConfig {
    /// The preset `name`, or [`Error::UnknownArch`].
    pub fn from_preset(name: &str) -> Result<Self> {
        preset(name).ok_or_else(|| Error::UnknownArch(name.to_string()))
    }

    /// The config with these dictionary sizes.
    pub fn with_vocab(mut self, src_vocab_size: usize, tgt_vocab_size: usize) -> Self {
        self.src_vocab_size = src_vocab_size;
        self.tgt_vocab_size = tgt_vocab_size;
        self
    }

    /// The encoder's layers.
    pub fn encoder_convolutions(&self) -> Result<Vec<ConvLayer>> {
        parse_layers("--encoder-layers", &self.encoder_layers)
    }

    /// The decoder's layers.
    pub fn decoder_convolutions(&self) -> Result<Vec<ConvLayer>> {
        parse_layers("--decoder-layers", &self.decoder_layers)
    }

    /// Which decoder layers attend over the encoder outputs.
    pub fn attention_layers(&self) -> Result<Vec<bool>> {
        parse_attention(&self.decoder_attention, self.decoder_convolutions()?.len())
    }

    /// The longest source in tokens: fairseq's `LearnedPositionalEmbedding.max_positions`
    /// (`max_source_positions - pad_index - 1`: positions start after the padding index).
    pub fn max_source_len(&self) -> usize {
        self.max_source_positions.saturating_sub(self.pad_index + 1)
    }

    /// The longest target prefix in tokens (as [`FConvConfig::max_source_len`]).
    pub fn max_target_len(&self) -> usize {
        self.max_target_positions.saturating_sub(self.pad_index + 1)
    }

    /// Checks what the model and its graphs rely on.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        for (name, v) in [
            ("encoder_embed_dim", self.encoder_embed_dim),
            ("decoder_embed_dim", self.decoder_embed_dim),
            ("decoder_out_embed_dim", self.decoder_out_embed_dim),
        ] {
            if v == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout ({}) must be in [0, 1)", self.dropout));
        }
        for (name, vocab) in [("src", self.src_vocab_size), ("tgt", self.tgt_vocab_size)] {
            if vocab <= self.pad_index {
                return fail(format!(
                    "{name}_vocab_size ({vocab}) must be larger than pad_index ({})",
                    self.pad_index
                ));
            }
        }
        for (name, rows) in [
            ("max_source_positions", self.max_source_positions),
            ("max_target_positions", self.max_target_positions),
        ] {
            if rows <= self.pad_index + 1 {
                return fail(format!(
                    "{name} ({rows}) must exceed pad_index + 1 ({}): positions start after the \
                     padding index",
                    self.pad_index + 1
                ));
            }
        }
        self.encoder_convolutions()?;
        let attention = self.attention_layers()?;
        // fairseq scales the encoder's gradient by 1 / (2 × attention layers) and divides by
        // zero without one.
        if !attention.contains(&true) {
            return fail(format!(
                "--decoder-attention {:?} attends in no layer; fairseq's FConvEncoder needs at \
                 least one attention layer",
                self.decoder_attention
            ));
        }
        // Attention multiplies the decoder's target embedding with the encoder's outputs.
        if self.encoder_embed_dim != self.decoder_embed_dim {
            return fail(format!(
                "attention needs encoder_embed_dim ({}) == decoder_embed_dim ({})",
                self.encoder_embed_dim, self.decoder_embed_dim
            ));
        }
        if self.share_input_output_embed && self.decoder_out_embed_dim != self.decoder_embed_dim {
            return fail(format!(
                "--share-input-output-embed requires decoder_out_embed_dim ({}) == \
                 decoder_embed_dim ({})",
                self.decoder_out_embed_dim, self.decoder_embed_dim
            ));
        }
        Ok(())
    }
}

/// Names of the ConvS2S decoder state tensors, shared by the trainer's libtorch decoder and the
/// exported step graph.
pub mod state_names {
    /// The encoder's outputs `[rows, source, embed]` (fairseq's `encoder_out[0]`: the attention
    /// keys), per sentence.
    pub const ENCODER_A: &str = "encoder_a";
    /// The encoder's outputs plus its input embeddings, scaled by √½ `[rows, source, embed]`
    /// (fairseq's `encoder_out[1]`: the attention values), per sentence.
    pub const ENCODER_B: &str = "encoder_b";
    /// The source padding mask `[rows, source]` (true = padding), per sentence.
    pub const ENCODER_PADDING_MASK: &str = "encoder_padding_mask";
    /// Decoder layer `l`'s window: the last `kernel_size - 1` inputs of its convolution
    /// `[rows, kernel_size - 1, in_channels]`, oldest first (fairseq's
    /// `LinearizedConvolution` input buffer without the current input); only layers with
    /// `kernel_size > 1` have one.
    pub fn window(l: usize) -> String {
        format!("conv_window.{l}")
    }
    /// The dimension name of [`window`]'s length.
    pub fn window_len(l: usize) -> String {
        format!("conv_window.{l}.len")
    }
    /// The dimension name of [`window`]'s channels.
    pub fn window_channels(l: usize) -> String {
        format!("conv_window.{l}.channels")
    }
}

impl FConvConfig {
    /// The decoder state as the contract declares it: the two encoder outputs and the padding
    /// mask per sentence, and one convolution window per decoder layer wider than 1, starting
    /// at zeros (the step's position comes from the contract's `position` input).
    pub fn decoder_state(&self) -> Result<crate::contract::StateSpec> {
        use crate::contract::{StateDtype, StateInit, StatePolicy, StateSpec, StateTensor, dims};
        let per_sentence = |name: &str, shape: &[&str], dtype| StateTensor {
            name: name.to_string(),
            dtype,
            shape: shape.iter().map(|s| s.to_string()).collect(),
            policy: StatePolicy::PerSentence,
        };
        let encoder = [dims::ROWS, dims::SOURCE, "embed"];
        let mut tensors = vec![
            per_sentence(state_names::ENCODER_A, &encoder, StateDtype::Model),
            per_sentence(state_names::ENCODER_B, &encoder, StateDtype::Model),
            per_sentence(
                state_names::ENCODER_PADDING_MASK,
                &[dims::ROWS, dims::SOURCE],
                StateDtype::Bool,
            ),
        ];
        let mut state_dims =
            std::collections::BTreeMap::from([("embed".to_string(), self.encoder_embed_dim)]);
        for (l, block) in conv_blocks(&self.decoder_convolutions()?).iter().enumerate() {
            if block.layer.kernel_size < 2 {
                continue;
            }
            let (len, channels) = (state_names::window_len(l), state_names::window_channels(l));
            state_dims.insert(len.clone(), block.layer.kernel_size - 1);
            state_dims.insert(channels.clone(), block.in_channels);
            tensors.push(StateTensor {
                name: state_names::window(l),
                dtype: StateDtype::Model,
                shape: vec![dims::ROWS.to_string(), len, channels],
                policy: StatePolicy::Recurrent { init: StateInit::Zeros },
            });
        }
        Ok(StateSpec { dims: state_dims, tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(out_channels: usize, kernel_size: usize, residual: usize) -> ConvLayer {
        ConvLayer { out_channels, kernel_size, residual }
    }

    #[test]
    fn specs_evaluate_as_fairseq_evaluates_them() {
        let wmt = parse_layers(
            "--encoder-layers",
            &FConvConfig::from_preset("fconv_wmt_en_de")
                .map(|c| c.encoder_layers)
                .unwrap_or_default(),
        );
        let wmt = wmt.unwrap_or_default();
        assert_eq!(wmt.len(), 15);
        assert_eq!(
            (wmt[0], wmt[9], wmt[14]),
            (layer(512, 3, 1), layer(1024, 3, 1), layer(2048, 1, 1))
        );
        for (spec, expected) in [
            ("[(512, 3)] * 2", vec![layer(512, 3, 1); 2]),
            ("2 * [(8, 2, 0)]", vec![layer(8, 2, 0); 2]),
            ("((4, 5),) * 2 + ((6, 1, 2),)", vec![layer(4, 5, 1), layer(4, 5, 1), layer(6, 1, 2)]),
            ("[(4, 3), (6, 3, 2),]", vec![layer(4, 3, 1), layer(6, 3, 2)]),
            ("[((2 + 2), 3)] * (1 + 1)", vec![layer(4, 3, 1); 2]),
        ] {
            assert_eq!(parse_layers("--decoder-layers", spec), Ok(expected), "{spec}");
        }
        assert_eq!(parse_attention("True", 3), Ok(vec![true; 3]));
        assert_eq!(parse_attention("[True, False] + [True]", 3), Ok(vec![true, false, true]));
    }

    #[test]
    fn malformed_specs_are_refused_with_the_spec_and_the_expected_form() {
        for (spec, why) in [
            ("[(512,)] * 2", "expected 2 or 3 parameters"),
            ("[(512, 3, 1, 1)]", "expected 2 or 3 parameters"),
            ("[512, 3]", "not a tuple"),
            ("[(512, 3)] * ", "unexpected end"),
            ("[(512, 3)", "expected ','"),
            ("__import__('os')", "unexpected name"),
            ("[(0, 3)]", "out_channels must be > 0"),
            ("[(8, 3, 2)]", "looks back past the input"),
            ("[]", "no layers"),
            ("7", "not a list"),
            ("[(8, 3)] * 1000000", "more than"),
        ] {
            let e = parse_layers("--encoder-layers", spec).err().map(|e| e.to_string());
            let msg = e.unwrap_or_default();
            assert!(msg.contains(why), "{spec}: {msg}");
            assert!(msg.contains(&format!("{spec:?}")) && msg.contains("[(512, 3)] * 20"), "{msg}");
        }
        for (spec, why) in
            [("[True]", "1 entries for 2"), ("1", "evaluates to 1"), ("[True, 3]", "not a boolean")]
        {
            let msg = parse_attention(spec, 2).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(why) && msg.contains("--decoder-attention"), "{spec}: {msg}");
        }
    }

    #[test]
    fn blocks_follow_fairseqs_layer_bookkeeping() {
        let blocks = conv_blocks(&[layer(4, 3, 1), layer(6, 2, 1), layer(6, 1, 2), layer(8, 3, 0)]);
        let got: Vec<_> = blocks.iter().map(|b| (b.in_channels, b.residual_dim)).collect();
        assert_eq!(got, [(4, Some(4)), (4, Some(4)), (6, Some(4)), (6, None)]);
        let projected: Vec<_> = blocks.iter().map(ConvBlock::has_projection).collect();
        assert_eq!(projected, [false, true, true, false]);
    }

    #[test]
    fn presets_validate_and_declare_their_windows() {
        for name in PRESETS {
            let c = FConvConfig::from_preset(name).unwrap_or_default().with_vocab(40, 40);
            assert_eq!(c.validate(), Ok(()), "{name}");
        }
        let c = FConvConfig::from_preset("fconv_wmt_en_de").unwrap_or_default().with_vocab(40, 40);
        let state = c.decoder_state().unwrap_or_default();
        // 13 layers of width 3 have windows, the two 1×1 layers none.
        assert_eq!(state.tensors.len(), 3 + 13);
        assert_eq!(state.dims.get(&state_names::window_channels(10)), Some(&1024));
        assert_eq!(state.dims.get(&state_names::window_len(0)), Some(&2));
        assert!(state.validate("fconv").is_ok());
        assert_eq!(c.max_source_len(), 1022);
        let none = FConvConfig { decoder_attention: "False".into(), ..c.clone() };
        assert!(none.validate().is_err(), "fairseq divides by the number of attention layers");
        let shared = FConvConfig { share_input_output_embed: true, ..c };
        assert!(shared.validate().is_err(), "out_embed_dim 512 != embed_dim 768");
    }
}
