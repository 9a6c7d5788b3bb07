//! `seqforge-export CHECKPOINT_DIR|CHECKPOINT.pt --data DATA_DIR --out MODEL_DIR [--dtype fp32|fp16|int8]
//! [--kv-cache in-place|append] [--tokenizer FILE] [--force]`: compiles a trainer checkpoint into a model directory (ONNX
//! encoder, ONNX decoder step, dictionaries, tokenizer, manifest).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use seqforge_exporter::{BuildOptions, ExportOptions, export};

/// Compile a seqforge checkpoint into an ONNX model directory.
#[derive(Parser, Debug)]
#[command(name = "seqforge-export", version, about)]
struct Args {
    /// The checkpoint directory (`model.safetensors`, `config.json`), or a fairseq checkpoint
    /// file (`checkpoint_best.pt`; its model weights, with the data's dictionaries).
    checkpoint: PathBuf,
    /// The data directory the model was trained on (`dict.{src,tgt}.txt`, maybe `tokenizer.json`).
    #[arg(long)]
    data: PathBuf,
    /// The model directory to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    build: BuildOptions,
    /// The tokenizer to ship (default: DATA_DIR/tokenizer.json when it exists).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Replace an existing model directory (atomically).
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    seqforge_cli_support::init_logging("info");
    let args = Args::parse();
    let options = ExportOptions {
        checkpoint: args.checkpoint,
        data: args.data,
        out: args.out,
        build: args.build,
        tokenizer: args.tokenizer,
        force: args.force,
    };
    seqforge_cli_support::finish(export(&options).map(|summary| println!("{}", summary.render())))
}
