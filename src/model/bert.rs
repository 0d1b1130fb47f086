//! CRATE-BERT: the masked-language-model encoder of the HF-style CRATE port
//! (`../shared/docs/crate-reference.md` §3.2, keys §7.4).
//!
//! RoBERTa embeddings (word + padding-offset positions + token type → LN, eps 1e-12), then per layer
//! `h = x + W_o·MSSA(LN_a x)` (`qkv` and `dense` without bias, additive padding mask) and
//! `out = ReLU(LN_b h + η(LN_b h·W − LN_b h·WᵀW) − ηλ)` with no residual around the ISTA step;
//! MLM head `dense → GELU → LN → ·E_wordᵀ + bias` tied to the word embeddings.

use anyhow::{ensure, Result};
use burn::module::{Module, Param};
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::activation::gelu;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::blocks::{CrateLayer, Ista, Mssa, Sparsify, ISTA_ETA, ISTA_LAMBDA};
use super::fused::{layer_norm, AttnMask, CrateBackend};
use crate::model::keys::StateDict;

/// LayerNorm eps of the two pre-norms inside each layer (`nn.LayerNorm(d)`).
pub const LAYER_LN_EPS: f64 = 1e-5;

/// `CrateConfig` of the port (HF field names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: usize,
    pub initializer_range: f64,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50265,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            layer_norm_eps: 1e-12,
            pad_token_id: 1,
            initializer_range: 0.02,
        }
    }
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        use super::{MAX_COUNT, MAX_DEPTH, MAX_WIDTH};
        super::check_sizes(&[
            ("vocab_size", self.vocab_size, MAX_COUNT),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_DEPTH),
            ("num_attention_heads", self.num_attention_heads, MAX_DEPTH),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 20,
            ),
            ("type_vocab_size", self.type_vocab_size, MAX_COUNT),
        ])?;
        let (v, d, l) = (self.vocab_size, self.hidden_size, self.num_hidden_layers);
        let positions = self.max_position_embeddings + self.type_vocab_size;
        // embeddings + per layer (attention + ISTA dictionary + norms) + LM head, an upper bound
        super::check_param_count(v * d + positions * d + l * (6 * d * d + 8 * d) + d * d + v)?;
        ensure!(
            self.hidden_size > 0
                && self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} must be a positive multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(
            self.pad_token_id < self.vocab_size,
            "pad_token_id {} is outside the vocabulary of {}",
            self.pad_token_id,
            self.vocab_size
        );
        ensure!(
            self.max_position_embeddings > self.pad_token_id + 1,
            "max_position_embeddings {} leaves no positions after the padding offset {}",
            self.max_position_embeddings,
            self.pad_token_id + 1
        );
        Ok(())
    }

    /// Longest sequence the position table covers (RoBERTa offsets positions by `pad + 1`).
    pub fn max_len(&self) -> usize {
        self.max_position_embeddings - self.pad_token_id - 1
    }

    pub fn init<B: CrateBackend>(&self, device: &B::Device) -> CrateBert<B> {
        let d = self.hidden_size;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: self.initializer_range,
        };
        let emb = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(normal.clone())
                .init(device)
        };
        let ln = |eps: f64| LayerNormConfig::new(d).with_epsilon(eps).init(device);
        let heads = self.num_attention_heads;
        CrateBert {
            word_embeddings: emb(self.vocab_size),
            position_embeddings: emb(self.max_position_embeddings),
            token_type_embeddings: emb(self.type_vocab_size.max(1)),
            emb_norm: ln(self.layer_norm_eps),
            layers: (0..self.num_hidden_layers)
                .map(|_| {
                    CrateLayer::new(
                        Mssa::new(d, heads, d / heads, false, 0.0, device),
                        Sparsify::Ista(Ista::new(d, ISTA_ETA, ISTA_LAMBDA, device)),
                        LAYER_LN_EPS,
                        device,
                    )
                })
                .collect(),
            mlm_dense: LinearConfig::new(d, d)
                .with_initializer(normal)
                .init(device),
            mlm_norm: ln(self.layer_norm_eps),
            mlm_bias: Initializer::Zeros.init([self.vocab_size], device),
            pad_token_id: self.pad_token_id,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

#[derive(Module, Debug)]
pub struct CrateBert<B: CrateBackend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    pub emb_norm: LayerNorm<B>,
    /// `h = x + W_o MSSA(LN_a x)` (padding keys masked), `out = ISTA(LN_b h)`.
    pub layers: Vec<CrateLayer<B>>,
    pub mlm_dense: Linear<B>,
    pub mlm_norm: LayerNorm<B>,
    pub mlm_bias: Param<Tensor<B, 1>>,
    pub pad_token_id: usize,
    pub layer_norm_eps: f64,
}

/// RoBERTa position ids: `pad + 1 + i` for the i-th non-pad token, `pad` for padding.
pub fn position_ids(ids: &[i64], t: usize, pad: usize) -> Vec<i64> {
    let mut out = vec![pad as i64; ids.len()];
    for (row_in, row_out) in ids.chunks(t).zip(out.chunks_mut(t)) {
        let mut k = 0;
        for (i, o) in row_in.iter().zip(row_out) {
            if *i != pad as i64 {
                k += 1;
                *o = pad as i64 + k;
            }
        }
    }
    out
}

impl<B: CrateBackend> CrateBert<B> {
    /// Final hidden states `[b·t, d]` for token ids `[b, t]` (padding = `pad_token_id`, masked out
    /// of every attention).
    pub fn encode(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let raw: Vec<i64> = ids.to_data().convert::<i64>().to_vec().unwrap();
        let pos = position_ids(&raw, t, self.pad_token_id);
        let pos = Tensor::<B, 2, Int>::from_data(TensorData::new(pos, [b, t]), &device);
        let types = Tensor::<B, 2, Int>::zeros([b, t], &device);
        let x = self.word_embeddings.forward(ids)
            + self.position_embeddings.forward(pos)
            + self.token_type_embeddings.forward(types);
        let d = x.dims()[2];
        let mut x = layer_norm(&self.emb_norm, x.reshape([b * t, d]), self.layer_norm_eps);
        // padding keys get the additive score −1e9 in every attention
        let mask = AttnMask::padding(raw.iter().map(|&i| i == self.pad_token_id as i64).collect());
        for layer in &self.layers {
            x = layer.forward(x, b, t, &mask);
        }
        x
    }

    /// MLM logits `[rows, vocab]` of hidden rows: `LN(GELU(dense h))·E_wordᵀ + bias`.
    pub fn mlm_logits(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        let z = layer_norm(
            &self.mlm_norm,
            gelu(self.mlm_dense.forward(h)),
            self.layer_norm_eps,
        );
        z.matmul(self.word_embeddings.weight.val().transpose())
            + self.mlm_bias.val().unsqueeze_dim(0)
    }

    /// Mean cross-entropy of the MLM logits at positions whose label is not `-100`.
    pub fn mlm_loss(&self, ids: Tensor<B, 2, Int>, labels: &[i64]) -> Tensor<B, 1> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let rows: Vec<i64> = (0..b * t)
            .filter(|&i| labels[i] != IGNORE)
            .map(|i| i as i64)
            .collect();
        let targets: Vec<i64> = labels.iter().copied().filter(|l| *l != IGNORE).collect();
        let h = self.encode(ids);
        let n = rows.len();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let logits = self.mlm_logits(h.select(0, rows));
        let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, targets)
    }
}

/// Label of positions that do not count in the MLM loss (HF convention).
pub const IGNORE: i64 = -100;

/// BERT's masking of a batch of token ids (`[b·t]` row-major): each non-special token is chosen
/// with probability `rate`; a chosen token becomes `mask_id` 80 % of the time, a random
/// non-special token 10 %, and stays 10 %. Returns the corrupted ids and the labels (the original
/// id where chosen, [`IGNORE`] elsewhere). At least one token per batch is chosen.
pub fn mask_tokens(
    ids: &[i64],
    special: &[i64],
    mask_id: i64,
    vocab: usize,
    rate: f64,
    seed: u64,
) -> (Vec<i64>, Vec<i64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = ids.to_vec();
    let mut labels = vec![IGNORE; ids.len()];
    let candidates: Vec<usize> = (0..ids.len())
        .filter(|&i| !special.contains(&ids[i]))
        .collect();
    let normal: Vec<i64> = (0..vocab as i64).filter(|v| !special.contains(v)).collect();
    let mut chosen: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|_| rng.random::<f64>() < rate)
        .collect();
    if chosen.is_empty() && !candidates.is_empty() {
        chosen.push(candidates[rng.random_range(0..candidates.len())]);
    }
    for i in chosen {
        labels[i] = ids[i];
        let r: f64 = rng.random();
        if r < 0.8 {
            out[i] = mask_id;
        } else if r < 0.9 && !normal.is_empty() {
            out[i] = normal[rng.random_range(0..normal.len())];
        }
    }
    (out, labels)
}

impl<B: CrateBackend> crate::model::keys::OfficialKeys for CrateBert<B> {
    /// burn path → key of the HF port (`CrateForMaskedLM`).
    fn official_key(path: &[String]) -> String {
        let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
        let leaf = crate::model::keys::torch_leaf;
        match p.as_slice() {
            [e @ ("word_embeddings" | "position_embeddings" | "token_type_embeddings"), l] => {
                format!("crate.embeddings.{e}.{}", leaf(l))
            }
            ["emb_norm", l] => format!("crate.embeddings.LayerNorm.{}", leaf(l)),
            ["layers", i, "norm1", l] => {
                format!("crate.encoder.layer.{i}.attention.self.prenorm.{}", leaf(l))
            }
            ["layers", i, "mssa", "qkv", l] => {
                format!("crate.encoder.layer.{i}.attention.self.qkv.{}", leaf(l))
            }
            ["layers", i, "mssa", "to_out", l] => {
                format!("crate.encoder.layer.{i}.attention.output.dense.{}", leaf(l))
            }
            ["layers", i, "norm2", l] => {
                format!("crate.encoder.layer.{i}.output.prenorm.{}", leaf(l))
            }
            ["layers", i, "ista", "Ista", l] => {
                format!("crate.encoder.layer.{i}.output.{}", leaf(l))
            }
            ["mlm_dense", l] => format!("lm_head.dense.{}", leaf(l)),
            ["mlm_norm", l] => format!("lm_head.layer_norm.{}", leaf(l)),
            ["mlm_bias"] => "lm_head.bias".to_string(),
            _ => p.join("."),
        }
    }
}

/// Drop the tied or derived entries an HF checkpoint carries besides the parameters:
/// `lm_head.decoder.weight` (= the word embeddings), `lm_head.decoder.bias` (= `lm_head.bias`) and
/// the `position_ids` buffer. Each tied copy must equal its source.
pub fn untie_state_dict(mut sd: StateDict) -> Result<StateDict> {
    for (alias, source) in [
        (
            "lm_head.decoder.weight",
            "crate.embeddings.word_embeddings.weight",
        ),
        ("lm_head.decoder.bias", "lm_head.bias"),
    ] {
        if let Some(a) = sd.remove(alias) {
            if let Some(s) = sd.get(source) {
                ensure!(
                    a.shape == s.shape
                        && a.clone().convert::<f32>().to_vec::<f32>().unwrap()
                            == s.clone().convert::<f32>().to_vec::<f32>().unwrap(),
                    "{alias} differs from {source}: this checkpoint does not tie them"
                );
            }
        }
    }
    sd.remove("crate.embeddings.position_ids");
    Ok(sd)
}
