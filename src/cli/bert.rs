//! `whitebox bert train` (masked-LM pre-training of CRATE-BERT on a character corpus) and
//! `whitebox bert fill-mask` (top-k completions of `<mask>` tokens).
//!
//! Character ids are shifted by 3 to make room for RoBERTa's specials: 0 `<s>`, 1 `<pad>` (the
//! padding offset of the positions), 2 `<mask>`.

use anyhow::{bail, ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::activation::softmax;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::WeightArgs;
use crate::model::bert::{mask_tokens, untie_state_dict, BertConfig, CrateBert};
use crate::model::CrateBackend;
use crate::text::{self, TokenFile, Tokenizer};
use crate::train::checkpoint::write_checkpoint_dir;
use crate::train::{schedule, OptimSettings, OptimizerKind, TrainOptimizer};
use crate::weights::{
    apply_state_dict, collect_state_dict, read_safetensors_all, read_state_dict, write_atomic,
    write_safetensors,
};
use crate::{InferBackend, TrainBackend};

/// Ids of RoBERTa's special tokens; characters start at [`FIRST_CHAR`].
pub const PAD: i64 = 1;
pub const MASK: i64 = 2;
pub const FIRST_CHAR: i64 = 3;
const SPECIAL: [i64; 3] = [0, PAD, MASK];

#[derive(Args, Debug)]
pub struct BertArgs {
    #[command(subcommand)]
    pub command: BertCommand,
}

#[derive(Subcommand, Debug)]
pub enum BertCommand {
    /// Masked-LM pre-training (15 % of tokens; 80 % `<mask>`, 10 % random, 10 % kept).
    Train(BertTrainArgs),
    /// Top-k completions of each `<mask>` in a text, with probabilities.
    FillMask(FillMaskArgs),
}

#[derive(Args, Debug)]
pub struct BertTrainArgs {
    /// Prepared character-token folder (`whitebox lm prepare`); prepared from --corpus when missing.
    #[arg(long, default_value = "data/shakespeare-char")]
    pub data: PathBuf,
    #[arg(long, default_value = text::DEFAULT_CORPUS)]
    pub corpus: PathBuf,
    #[arg(long, default_value = "runs/bert")]
    pub run_dir: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub hidden_size: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 2000)]
    pub max_iters: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup_iters: usize,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Fraction of tokens chosen for the loss.
    #[arg(long, default_value_t = 0.15)]
    pub mask_rate: f64,
    #[arg(long, default_value_t = 250)]
    pub eval_interval: usize,
    #[arg(long, default_value_t = 10)]
    pub eval_iters: usize,
    /// Stop when the run has trained this many seconds (validation and checkpoint first).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FillMaskArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    /// Text with one or more `<mask>` markers, e.g. "To be or not to <mask>e".
    pub text: String,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
}

pub fn run(a: BertArgs) -> Result<()> {
    match a.command {
        BertCommand::Train(a) => train(a),
        BertCommand::FillMask(a) => fill_mask(a),
    }
}

/// One random window of `t` tokens per row, characters shifted past the specials.
fn sample_batch(tokens: &TokenFile, b: usize, t: usize, rng: &mut impl Rng) -> Vec<i64> {
    (0..b)
        .flat_map(|_| {
            let start = rng.random_range(0..tokens.len() - t);
            tokens.window(start, t).into_iter().map(|v| v + FIRST_CHAR)
        })
        .collect()
}

fn ids<B: burn::tensor::backend::Backend>(v: Vec<i64>, b: usize, t: usize) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v, [b, t]), &Default::default())
}

/// Mean masked-LM loss over `iters` fixed batches of the validation tokens.
fn val_loss<B: CrateBackend>(
    m: &CrateBert<B>,
    val: &TokenFile,
    a: &BertTrainArgs,
    vocab: usize,
) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbe27);
    let mut sum = 0.0;
    for i in 0..a.eval_iters {
        let x = sample_batch(val, a.batch_size, a.seq_len, &mut rng);
        let (x, y) = mask_tokens(&x, &SPECIAL, MASK, vocab, a.mask_rate, i as u64);
        sum += m
            .mlm_loss(ids(x, a.batch_size, a.seq_len), &y)
            .into_scalar()
            .elem::<f64>();
    }
    sum / a.eval_iters.max(1) as f64
}

fn metadata(cfg: &BertConfig, tok: &Tokenizer) -> Result<HashMap<String, String>> {
    Ok(HashMap::from([
        ("arch".to_string(), "crate-bert".to_string()),
        ("config".to_string(), serde_json::to_string(cfg)?),
        ("tokenizer".to_string(), serde_json::to_string(tok)?),
    ]))
}

pub fn train(a: BertTrainArgs) -> Result<()> {
    ensure!(
        a.mask_rate > 0.0 && a.mask_rate < 1.0,
        "--mask-rate must be in (0, 1)"
    );
    let meta = match text::read_meta(&a.data) {
        Ok(m) => m,
        Err(_) => text::prepare(&a.corpus, &a.data, None, 0.1)?,
    };
    let Tokenizer::Char { .. } = meta.tokenizer else {
        bail!(
            "{}: bert train needs character tokens (`whitebox lm prepare --tokenizer char`)",
            a.data.display()
        );
    };
    let train_tok = TokenFile::open(&a.data.join("train.bin"))?;
    let val_tok = TokenFile::open(&a.data.join("val.bin"))?;
    for (f, what) in [(&train_tok, "train"), (&val_tok, "validation")] {
        ensure!(
            f.len() > a.seq_len,
            "{}: the {what} tokens ({}) are fewer than --seq-len {} + 1",
            f.path().display(),
            f.len(),
            a.seq_len
        );
    }
    let vocab = meta.tokenizer.vocab_size() + FIRST_CHAR as usize;
    let cfg = BertConfig {
        vocab_size: vocab,
        hidden_size: a.hidden_size,
        num_hidden_layers: a.layers,
        num_attention_heads: a.heads,
        max_position_embeddings: a.seq_len + PAD as usize + 1,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        pad_token_id: PAD as usize,
        initializer_range: 0.02,
    };
    cfg.validate()?;
    let device = Default::default();
    <TrainBackend as burn::tensor::backend::Backend>::seed(&device, a.seed);
    let mut model = cfg.init::<TrainBackend>(&device);
    let settings = OptimSettings {
        kind: OptimizerKind::Adamw,
        weight_decay: a.weight_decay,
        beta1: 0.9,
        beta2: 0.98,
        no_decay_norm_bias: true,
        clip_grad_norm: Some(1.0),
    };
    let mut optim = TrainOptimizer::new(settings, &model);
    std::fs::create_dir_all(&a.run_dir)
        .with_context(|| format!("cannot create {}", a.run_dir.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let metrics = a.run_dir.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics);
    let mut log = Vec::new();
    let t0 = Instant::now();
    let mut last_val = val_loss(&model.valid(), &val_tok, &a, vocab);
    log.push(json!({"iter": 0, "val_loss": last_val, "seconds": 0.0}));
    tracing::info!("iter 0: val masked-LM loss {last_val:.4}");
    let mut iter = 0;
    while iter < a.max_iters {
        let x = sample_batch(&train_tok, a.batch_size, a.seq_len, &mut rng);
        let (x, y) = mask_tokens(
            &x,
            &SPECIAL,
            MASK,
            vocab,
            a.mask_rate,
            a.seed ^ (iter as u64 + 1),
        );
        let loss = model.mlm_loss(ids(x, a.batch_size, a.seq_len), &y);
        let loss_val: f64 = loss.clone().into_scalar().elem();
        ensure!(
            loss_val.is_finite(),
            "loss became {loss_val} at iteration {iter}; lower --lr"
        );
        let grads = optim.clip(GradientsParams::from_grads(loss.backward(), &model));
        let lr = schedule::warmup_cosine(iter, a.warmup_iters, a.max_iters, a.lr, a.lr * 0.1);
        model = optim.step(lr, model, grads);
        iter += 1;
        let out_of_time = a
            .max_seconds
            .is_some_and(|s| t0.elapsed().as_secs_f64() >= s);
        if iter % a.eval_interval == 0 || iter == a.max_iters || out_of_time {
            last_val = val_loss(&model.valid(), &val_tok, &a, vocab);
            let secs = t0.elapsed().as_secs_f64();
            tracing::info!(
                "iter {iter}: train loss {loss_val:.4}  val masked-LM loss {last_val:.4}  {secs:.0}s"
            );
            let entry = json!({"iter": iter, "train_loss": loss_val, "val_loss": last_val, "lr": lr, "seconds": secs});
            log.push(entry);
            write_atomic(
                &metrics,
                log.iter()
                    .map(|e| format!("{e}\n"))
                    .collect::<String>()
                    .as_bytes(),
            )?;
            let md = metadata(&cfg, &meta.tokenizer)?;
            let valid = model.valid();
            write_checkpoint_dir(&a.run_dir, |tmp| {
                write_safetensors(
                    &tmp.join("model.safetensors"),
                    &collect_state_dict(&valid),
                    Some(md),
                )?;
                write_atomic(
                    &tmp.join("config.json"),
                    serde_json::to_string_pretty(&cfg)?.as_bytes(),
                )
            })?;
        }
        if out_of_time {
            break;
        }
    }
    let weights = a.run_dir.join("checkpoint/model.safetensors");
    println!(
        "validation masked-LM loss {last_val:.4} after {iter} iterations ({:.0} s); weights in {}",
        t0.elapsed().as_secs_f64(),
        weights.display()
    );
    if a.json {
        println!(
            "{}",
            json!({"val_loss": last_val, "iters": iter, "seconds": t0.elapsed().as_secs_f64(), "weights": weights})
        );
    }
    Ok(())
}

/// Token ids of a text whose `<mask>` markers become [`MASK`].
pub fn encode_masked(tok: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for (i, piece) in text.split("<mask>").enumerate() {
        if i > 0 {
            out.push(MASK);
        }
        out.extend(
            tok.encode(piece)?
                .into_iter()
                .map(|t| t as i64 + FIRST_CHAR),
        );
    }
    Ok(out)
}

fn load(path: &Path) -> Result<(CrateBert<InferBackend>, Tokenizer)> {
    let (_, meta) = read_safetensors_all(path)?;
    ensure!(
        meta.get("arch").map(String::as_str) == Some("crate-bert"),
        "{}: not CRATE-BERT weights written by `whitebox bert train`",
        path.display()
    );
    let cfg: BertConfig = serde_json::from_str(&meta["config"])
        .with_context(|| format!("{}: bad config metadata", path.display()))?;
    let tok: Tokenizer = serde_json::from_str(
        meta.get("tokenizer")
            .with_context(|| format!("{}: no tokenizer metadata", path.display()))?,
    )?;
    let sd = untie_state_dict(read_state_dict(path)?)?;
    let (model, _) = apply_state_dict(cfg.init::<InferBackend>(&Default::default()), &sd, true)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((model, tok))
}

pub fn fill_mask(a: FillMaskArgs) -> Result<()> {
    let (model, tok) = load(&a.weights.weights)?;
    let x = encode_masked(&tok, &a.text)?;
    let masks: Vec<usize> = (0..x.len()).filter(|&i| x[i] == MASK).collect();
    ensure!(!masks.is_empty(), "the text has no <mask>");
    let max = model.position_embeddings.weight.dims()[0] - PAD as usize - 1;
    ensure!(
        x.len() <= max,
        "the text is {} tokens long; this model reads at most {max}",
        x.len()
    );
    let t = x.len();
    let h = model.encode(ids(x.clone(), 1, t));
    let rows = Tensor::<InferBackend, 1, Int>::from_data(
        TensorData::new(
            masks.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [masks.len()],
        ),
        &Default::default(),
    );
    let probs = softmax(model.mlm_logits(h.select(0, rows)), 1);
    let p: Vec<f32> = probs.into_data().to_vec().unwrap();
    let v = p.len() / masks.len();
    let mut filled = x.clone();
    for (k, &pos) in masks.iter().enumerate() {
        let row = &p[k * v..(k + 1) * v];
        let mut order: Vec<usize> = (FIRST_CHAR as usize..v).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
        let show = |id: usize| -> Result<String> {
            Ok(format!(
                "{:?}",
                tok.decode(&[(id as i64 - FIRST_CHAR) as u32])?
            ))
        };
        let top: Vec<String> = order
            .iter()
            .take(a.top_k.max(1))
            .map(|&i| Ok(format!("{} {:.1}%", show(i)?, 100.0 * row[i])))
            .collect::<Result<_>>()?;
        println!("<mask> {}: {}", k + 1, top.join(", "));
        filled[pos] = order[0] as i64;
    }
    let text: Vec<u32> = filled.iter().map(|&i| (i - FIRST_CHAR) as u32).collect();
    println!("{}", tok.decode(&text)?);
    Ok(())
}
