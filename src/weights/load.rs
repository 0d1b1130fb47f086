//! One loader for every model kind. [`load`] reads a weights file (safetensors or torch), finds
//! its config — `config` if given (a preset or a JSON file), else the safetensors metadata, else
//! the `model_args` of a nanoGPT checkpoint, else `config.json` beside the file — and returns the
//! model that config describes with the weights in it: CRATE, CRATE-α, a classifier on a CRATE-MAE
//! encoder, CRATE-MAE, ToST, a causal language model (crate-lm, crate-lm-overcomplete, GPT,
//! ToST-LM) or CRATE-BERT. Every error names the file and what is wrong.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{apply_state_dict, read_state_dict, StateDict};
use crate::data::Normalization;
use crate::model::bert::{untie_state_dict, BertConfig, CrateBert};
use crate::model::lm::{self, CausalLm, LmConfig};
use crate::model::mae::{CrateMae, MaeConfig};
use crate::model::tost::{self, Tost, TostConfig};
use crate::model::{Arch, Crate, CrateBackend, CrateConfig};
use crate::text::Tokenizer;

/// The five config structs, one per model family.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// CRATE, CRATE-α or a classifier on a CRATE-MAE encoder.
    Crate(CrateConfig),
    Mae(MaeConfig),
    Tost(TostConfig),
    /// crate-lm, crate-lm-overcomplete, GPT or ToST-LM.
    Lm(LmConfig),
    Bert(BertConfig),
}

impl ModelConfig {
    pub fn arch(&self) -> Arch {
        match self {
            ModelConfig::Crate(c) => c.arch,
            ModelConfig::Mae(c) => c.arch,
            ModelConfig::Tost(c) => c.arch,
            ModelConfig::Lm(c) => c.arch,
            ModelConfig::Bert(_) => Arch::CrateBert,
        }
    }

    /// Every family's preset of this name (`default` names one of two).
    fn presets(name: &str) -> Vec<Self> {
        [
            CrateConfig::preset(name).map(ModelConfig::Crate),
            MaeConfig::preset(name).map(ModelConfig::Mae),
            TostConfig::preset(name).map(ModelConfig::Tost),
            LmConfig::preset(name).map(ModelConfig::Lm),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// A preset of any family, or a JSON config file of any family.
    pub fn resolve(spec: &str) -> Result<Self> {
        Self::resolve_for(spec, None)
    }

    /// [`ModelConfig::resolve`]; a preset name several families share goes to the family of `keys`.
    fn resolve_for(spec: &str, keys: Option<Arch>) -> Result<Self> {
        let presets = Self::presets(spec);
        if !presets.is_empty() {
            let fits = |c: &Self| keys.is_some_and(|k| same_family(c.arch(), k));
            let pick = presets.iter().position(fits).unwrap_or(0);
            return Ok(presets.into_iter().nth(pick).expect("a preset"));
        }
        let path = Path::new(spec);
        ensure!(
            path.exists(),
            "--config {spec:?} is neither a preset ({}; {}; {}; {}) nor an existing JSON file",
            crate::model::vision::PRESETS.join(", "),
            crate::model::mae::MAE_PRESETS.join(", "),
            tost::PRESETS.join(", "),
            lm::PRESETS.join(", ")
        );
        crate::model::read_json_config(path, Self::from_json)
    }

    /// A config JSON of any family: its `"arch"` names the family (no `"arch"`: a CRATE
    /// classifier, a language model when it has `vocab_size`, CRATE-BERT when it also has
    /// `hidden_size`, CRATE-MAE when it has `decoder_embed_dim`).
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).context("not a valid JSON config")?;
        Ok(match json_arch(&v)? {
            Some(Arch::CrateMae) => ModelConfig::Mae(MaeConfig::from_json(text)?),
            Some(Arch::Tost) => ModelConfig::Tost(TostConfig::from_json(text)?),
            Some(Arch::CrateBert) => {
                let mut v = v;
                if let Some(o) = v.as_object_mut() {
                    o.remove("arch");
                }
                let c: BertConfig =
                    serde_json::from_value(v).context("not a valid CRATE-BERT config")?;
                c.validate()?;
                ModelConfig::Bert(c)
            }
            Some(a) if lm::LM_ARCHS.contains(&a) => ModelConfig::Lm(LmConfig::from_json(text)?),
            _ => ModelConfig::Crate(CrateConfig::from_json(text)?),
        })
    }

    /// The model's inputs in one line: its tokens (images) or context and vocabulary (text).
    pub fn tokens_line(&self) -> String {
        match self {
            ModelConfig::Mae(c) => format!(
                "tokens: {} patches + cls ({} visible at mask ratio {}), patch dim {}",
                c.num_patches(),
                c.len_keep(),
                c.mask_ratio,
                c.patch_dim()
            ),
            ModelConfig::Tost(c) => format!(
                "tokens: {} ({}×{} grid after the conv stem) + cls in the class-attention blocks",
                c.num_patches(),
                c.grid(),
                c.grid()
            ),
            ModelConfig::Crate(c) => format!(
                "tokens: {} patches + cls, patch dim {}",
                c.num_patches(),
                c.patch_dim()
            ),
            ModelConfig::Lm(c) => format!(
                "context: {} tokens, vocabulary {}",
                c.block_size, c.vocab_size
            ),
            ModelConfig::Bert(c) => format!(
                "context: {} tokens, vocabulary {}",
                c.max_len(),
                c.vocab_size
            ),
        }
    }

    /// Parameter count of the model the config describes.
    pub fn param_count(&self) -> usize {
        match self {
            ModelConfig::Crate(c) => c.param_count(),
            ModelConfig::Mae(c) => c.param_count(),
            ModelConfig::Tost(c) => c.param_count(),
            ModelConfig::Lm(c) => c.param_count(),
            ModelConfig::Bert(c) => {
                burn::module::Module::num_params(&c.init::<crate::CpuBackend>(&Default::default()))
            }
        }
    }

    /// The config as the pretty JSON of a config file.
    pub fn to_json_pretty(&self) -> String {
        match self {
            ModelConfig::Crate(c) => serde_json::to_string_pretty(c),
            ModelConfig::Mae(c) => serde_json::to_string_pretty(c),
            ModelConfig::Tost(c) => serde_json::to_string_pretty(c),
            ModelConfig::Lm(c) => serde_json::to_string_pretty(c),
            ModelConfig::Bert(c) => serde_json::to_string_pretty(c),
        }
        .expect("configs serialise")
    }
}

/// The family a config JSON names: its `"arch"`, else read off its fields (`None`: a CRATE
/// classifier; a language model's `arch` defaults later to crate-lm-overcomplete).
fn json_arch(v: &serde_json::Value) -> Result<Option<Arch>> {
    Ok(match v.get("arch") {
        Some(a) => Some(
            a.as_str()
                .with_context(|| format!("\"arch\" must be a string, got {a}"))?
                .parse::<Arch>()?,
        ),
        None if v.get("hidden_size").is_some() && v.get("vocab_size").is_some() => {
            Some(Arch::CrateBert)
        }
        None if v.get("vocab_size").is_some() || v.get("TSSA").is_some() => Some(Arch::Gpt),
        // the official `MaskedAutoencoderViT` arguments
        None if v.get("decoder_embed_dim").is_some() => Some(Arch::CrateMae),
        None => None,
    })
}

/// The arch a `--config` names — a preset's, or the `"arch"` of a JSON file (read, not
/// validated) — without building the config; `None` when it names none.
pub fn spec_arch(spec: &str) -> Option<Arch> {
    if let Some(c) = ModelConfig::presets(spec).first() {
        return Some(c.arch());
    }
    let path = Path::new(spec);
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json_arch(&v).ok()?.unwrap_or(Arch::Crate))
}

/// Whether two archs are built from the same config struct.
fn same_family(a: Arch, b: Arch) -> bool {
    let family = |a: Arch| match a {
        Arch::Crate | Arch::CrateAlpha | Arch::CrateMaeEncoder => 0,
        Arch::CrateMae => 1,
        Arch::Tost => 2,
        Arch::CrateLm | Arch::CrateLmOvercomplete | Arch::Gpt | Arch::TostLm => 3,
        Arch::CrateBert => 4,
    };
    family(a) == family(b)
}

/// What a state dict's official keys say it holds (`None`: no model this crate knows).
pub fn arch_from_keys(sd: &StateDict) -> Option<Arch> {
    let has = |k: &str| sd.contains_key(k);
    Some(if has("decoder_pred.weight") || has("mask_token") {
        Arch::CrateMae
    } else if has("crate.embeddings.word_embeddings.weight") {
        Arch::CrateBert
    } else if sd.keys().any(|k| k.starts_with("patch_embed.proj.")) {
        Arch::Tost
    } else if has("transformer.h.0.attn.denom_bias") {
        Arch::TostLm
    } else if has("transformer.h.0.mlp.c_fc.weight") {
        Arch::Gpt
    } else if let Some(w) = sd.get("transformer.h.0.ista.weight") {
        // crate-lm: ISTA dictionary d×d; the overcomplete model's is 4d×d
        let d = sd.get("transformer.wte.weight").map(|e| e.shape[1])?;
        if w.shape[0] == 4 * d {
            Arch::CrateLmOvercomplete
        } else {
            Arch::CrateLm
        }
    } else if has("transformer.layers.0.1.fn.D1") {
        Arch::CrateAlpha
    } else if has("conv1.weight") {
        Arch::CrateMaeEncoder
    } else if has("mlp_head.1.weight") || has("to_patch_embedding.2.weight") {
        Arch::Crate
    } else {
        return None;
    })
}

/// A model with its weights loaded, and where they came from.
pub struct Weights<C, M> {
    pub config: C,
    pub model: M,
    /// The safetensors metadata (empty for a torch file).
    pub meta: HashMap<String, String>,
    /// The weights file.
    pub path: PathBuf,
}

/// A loaded model of any family.
pub enum Loaded<B: CrateBackend> {
    Crate(Weights<CrateConfig, Crate<B>>),
    Mae(Weights<MaeConfig, CrateMae<B>>),
    Tost(Weights<TostConfig, Tost<B>>),
    Lm(Weights<LmConfig, CausalLm<B>>),
    Bert(Weights<BertConfig, CrateBert<B>>),
}

/// Read `path` (safetensors or a torch file), find its config (`config` if given: a preset or a
/// JSON file; else the metadata, a nanoGPT checkpoint's `model_args` or `config.json` beside the
/// file) and load the weights into the model it describes. `strict` refuses missing, unexpected
/// or wrongly shaped keys (PyTorch's `load_state_dict`); a non-strict load logs what it skipped.
pub fn load<B: CrateBackend>(
    path: &Path,
    config: Option<&str>,
    strict: bool,
    device: &B::Device,
) -> Result<Loaded<B>> {
    // the weights first: a missing, empty or unreadable file is reported as such, not as a
    // missing config
    let sd = read_state_dict(path)?;
    let meta = super::read_safetensors_metadata(path)?;
    let config = find_config(path, config, &meta, &sd)?;
    from_state_dict(config, sd, meta, path, strict, device)
}

/// The config that goes with the weights at `path` (see [`load`]), without loading them.
pub fn config_of(path: &Path, config: Option<&str>) -> Result<ModelConfig> {
    let sd = read_state_dict(path)?;
    let meta = super::read_safetensors_metadata(path)?;
    find_config(path, config, &meta, &sd)
}

fn find_config(
    path: &Path,
    spec: Option<&str>,
    meta: &HashMap<String, String>,
    sd: &StateDict,
) -> Result<ModelConfig> {
    let keys = arch_from_keys(sd);
    if let Some(spec) = spec {
        return ModelConfig::resolve_for(spec, keys);
    }
    if let Some(c) = meta.get("config") {
        let bert = meta.get("arch").map(String::as_str) == Some(Arch::CrateBert.name());
        let parsed = if bert {
            serde_json::from_str::<BertConfig>(c)
                .map_err(anyhow::Error::from)
                .and_then(|c| c.validate().map(|_| ModelConfig::Bert(c)))
        } else {
            ModelConfig::from_json(c)
        };
        return parsed.with_context(|| format!("{}: bad config metadata", path.display()));
    }
    if !super::is_safetensors(path) {
        if let Some(c) = nanogpt_model_args(path, sd)? {
            return Ok(ModelConfig::Lm(c));
        }
    }
    let beside = path.with_file_name("config.json");
    if beside.is_file() {
        return crate::model::read_json_config(&beside, ModelConfig::from_json);
    }
    bail!(
        "{}: no config stored with these weights; pass --config PRESET|FILE.json{}",
        path.display(),
        keys.map_or(String::new(), |a| format!(
            " (its keys are those of a {a} model)"
        ))
    )
}

/// `model_args` of a nanoGPT `{'model', 'model_args', …}` checkpoint; the arch is read off the keys.
fn nanogpt_model_args(path: &Path, sd: &StateDict) -> Result<Option<LmConfig>> {
    use burn_store::pytorch::reader::PickleValue;
    use burn_store::pytorch::PytorchReader;
    super::check_torch_file(path)?;
    let Ok(PickleValue::Dict(args)) = PytorchReader::read_pickle_data(path, Some("model_args"))
    else {
        return Ok(None);
    };
    let int = |k: &str| match args.get(k) {
        Some(PickleValue::Int(v)) if *v > 0 => Ok(*v as usize),
        _ => bail!(
            "{}: model_args.{k} is missing or not a positive integer",
            path.display()
        ),
    };
    let arch = arch_from_keys(sd)
        .filter(|a| lm::LM_ARCHS.contains(a))
        .with_context(|| format!("{}: not a crate-lm or nanoGPT model", path.display()))?;
    let mut config = LmConfig {
        arch,
        vocab_size: int("vocab_size")?,
        block_size: int("block_size")?,
        n_layer: int("n_layer")?,
        n_head: int("n_head")?,
        n_embd: int("n_embd")?,
        dropout: 0.0, // training-only; inference runs without it
        bias: !matches!(args.get("bias"), Some(PickleValue::Bool(false))),
    };
    if !(config.is_gpt() || config.is_tost()) {
        config.bias = true; // ignored by both crate-lm files
    }
    config
        .validate()
        .with_context(|| format!("{}: model_args", path.display()))?;
    Ok(Some(config))
}

/// Reject a state dict that is not laid out as the official `MaskedAutoencoderViT` (§7.2).
fn check_mae_layout(sd: &StateDict, path: &Path) -> Result<()> {
    let want = [
        "decoder_pred.weight",
        "mask_token",
        "blocks.0.layers.0.1.fn.weight",
    ];
    if want.iter().all(|k| sd.contains_key(*k)) {
        return Ok(());
    }
    let mut seen: Vec<&String> = sd.keys().collect();
    seen.sort();
    seen.truncate(4);
    bail!(
        "{}: not a CRATE-MAE checkpoint: expected the official keys ({}, …) but found {:?}{}",
        path.display(),
        want.join(", "),
        seen,
        if sd.contains_key("mlp_head.1.weight") {
            " — this looks like a classifier; use it without \"arch\": \"crate-mae\""
        } else {
            ""
        }
    )
}

/// `sd` into `model` (strict or not), the error naming the file; a non-strict load logs what
/// it skipped.
fn apply<M: burn::module::Module<B> + super::OfficialKeys, B: burn::tensor::backend::Backend>(
    model: M,
    sd: &StateDict,
    strict: bool,
    path: &Path,
) -> Result<M> {
    let (model, report) = apply_state_dict(model, sd, strict)
        .with_context(|| format!("loading {}", path.display()))?;
    if !report.is_clean() {
        tracing::warn!(
            "non-strict load of {}: {}",
            path.display(),
            report.describe()
        );
    }
    Ok(model)
}

/// The model `config` describes with the weights `sd` (official keys) in it; `meta` is kept with
/// it and `path` names the weights' source in errors. `strict` as in [`load`].
pub fn from_state_dict<B: CrateBackend>(
    config: ModelConfig,
    sd: StateDict,
    meta: HashMap<String, String>,
    path: &Path,
    strict: bool,
    device: &B::Device,
) -> Result<Loaded<B>> {
    let path_buf = path.to_path_buf();
    Ok(match config {
        ModelConfig::Crate(config) => {
            let model = apply(config.init::<B>(device), &sd, strict, path)?;
            Loaded::Crate(Weights {
                config,
                model,
                meta,
                path: path_buf,
            })
        }
        ModelConfig::Mae(config) => {
            check_mae_layout(&sd, path)?;
            let model = apply(config.init::<B>(device), &sd, strict, path)?;
            Loaded::Mae(Weights {
                config,
                model,
                meta,
                path: path_buf,
            })
        }
        ModelConfig::Tost(config) => {
            let sd = tost::prepare_state_dict(sd);
            let model = apply(config.init::<B>(device), &sd, strict, path)?;
            Loaded::Tost(Weights {
                config,
                model,
                meta,
                path: path_buf,
            })
        }
        ModelConfig::Lm(config) => {
            let sd = lm::prepare_state_dict(sd);
            let model = apply(config.init::<B>(device), &sd, strict, path)?;
            Loaded::Lm(Weights {
                config,
                model,
                meta,
                path: path_buf,
            })
        }
        ModelConfig::Bert(config) => {
            let sd = untie_state_dict(sd).with_context(|| format!("{}", path.display()))?;
            let model = apply(config.init::<B>(device), &sd, strict, path)?;
            Loaded::Bert(Weights {
                config,
                model,
                meta,
                path: path_buf,
            })
        }
    })
}

/// A freshly initialised model of `config` (burn's initialisers, seeded by the backend's seed).
pub fn create<B: CrateBackend>(config: ModelConfig, device: &B::Device) -> Loaded<B> {
    fn fresh<C, M>(config: C, model: M) -> Weights<C, M> {
        let path = PathBuf::from("(freshly initialised)");
        Weights {
            config,
            model,
            meta: HashMap::new(),
            path,
        }
    }
    match config {
        ModelConfig::Crate(c) => Loaded::Crate(fresh(c.clone(), c.init::<B>(device))),
        ModelConfig::Mae(c) => Loaded::Mae(fresh(c.clone(), c.init::<B>(device))),
        ModelConfig::Tost(c) => Loaded::Tost(fresh(c.clone(), c.init::<B>(device))),
        ModelConfig::Lm(c) => Loaded::Lm(fresh(c.clone(), c.init::<B>(device))),
        ModelConfig::Bert(c) => Loaded::Bert(fresh(c.clone(), c.init::<B>(device))),
    }
}

impl<B: CrateBackend> Loaded<B> {
    /// The config of the loaded model.
    pub fn config(&self) -> ModelConfig {
        match self {
            Loaded::Crate(w) => ModelConfig::Crate(w.config.clone()),
            Loaded::Mae(w) => ModelConfig::Mae(w.config.clone()),
            Loaded::Tost(w) => ModelConfig::Tost(w.config.clone()),
            Loaded::Lm(w) => ModelConfig::Lm(w.config.clone()),
            Loaded::Bert(w) => ModelConfig::Bert(w.config.clone()),
        }
    }

    /// The safetensors metadata the weights came with (empty for a torch file or a fresh model).
    pub fn meta(&self) -> &HashMap<String, String> {
        match self {
            Loaded::Crate(w) => &w.meta,
            Loaded::Mae(w) => &w.meta,
            Loaded::Tost(w) => &w.meta,
            Loaded::Lm(w) => &w.meta,
            Loaded::Bert(w) => &w.meta,
        }
    }

    /// The weights under the official PyTorch keys (a language model's as nanoGPT writes them).
    pub fn state_dict(&self) -> StateDict {
        use crate::weights::collect_state_dict;
        match self {
            Loaded::Crate(w) => collect_state_dict(&w.model),
            Loaded::Mae(w) => collect_state_dict(&w.model),
            Loaded::Tost(w) => collect_state_dict(&w.model),
            Loaded::Lm(w) => crate::weights::lm_state_dict(&w.model),
            Loaded::Bert(w) => collect_state_dict(&w.model),
        }
    }

    /// Write the weights to `path` as safetensors under the official keys, atomically, with the
    /// metadata they came with and the config under `config` (so [`load`] reads them back).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = self.meta().clone();
        let config = self.config();
        let json = config.to_json_pretty();
        meta.insert("config".into(), json);
        meta.insert("arch".into(), config.arch().name().to_string());
        crate::weights::write_safetensors(path, &self.state_dict(), Some(meta))
    }

    pub fn arch(&self) -> Arch {
        match self {
            Loaded::Crate(w) => w.config.arch,
            Loaded::Mae(w) => w.config.arch,
            Loaded::Tost(w) => w.config.arch,
            Loaded::Lm(w) => w.config.arch,
            Loaded::Bert(_) => Arch::CrateBert,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Loaded::Crate(w) => &w.path,
            Loaded::Mae(w) => &w.path,
            Loaded::Tost(w) => &w.path,
            Loaded::Lm(w) => &w.path,
            Loaded::Bert(w) => &w.path,
        }
    }

    /// `"{file} is a {kind}, not {want}"` with a hint where the model can be used instead.
    pub(crate) fn not(&self, want: &str) -> anyhow::Error {
        let (kind, hint) = match self {
            Loaded::Crate(w) => (format!("CRATE classifier ({})", w.config.arch), ""),
            Loaded::Mae(_) => (
                "CRATE-MAE".into(),
                ": use `whitebox forward`, `mae reconstruct`, `probe`, or `train --init-from` to \
                 fine-tune its encoder",
            ),
            Loaded::Tost(_) => (
                "ToST model".into(),
                " (ToST runs with train, eval, predict, forward, info)",
            ),
            Loaded::Lm(w) => (
                format!("language model ({})", w.config.arch),
                " (use `whitebox lm eval`, `lm generate` or `forward`)",
            ),
            Loaded::Bert(_) => (
                "CRATE-BERT model".into(),
                " (use `whitebox bert fill-mask`)",
            ),
        };
        anyhow::anyhow!("{} is a {kind}, not {want}{hint}", self.path().display())
    }

    /// The CRATE classifier (CRATE, CRATE-α or an MAE-encoder classifier), else an error.
    pub fn into_crate(self) -> Result<Weights<CrateConfig, Crate<B>>> {
        match self {
            Loaded::Crate(w) => Ok(w),
            other => Err(other.not("a CRATE classifier")),
        }
    }

    pub fn into_mae(self) -> Result<Weights<MaeConfig, CrateMae<B>>> {
        match self {
            Loaded::Mae(w) => Ok(w),
            other => Err(other.not("a CRATE-MAE")),
        }
    }

    pub fn into_tost(self) -> Result<Weights<TostConfig, Tost<B>>> {
        match self {
            Loaded::Tost(w) => Ok(w),
            other => Err(other.not("a ToST classifier")),
        }
    }

    pub fn into_lm(self) -> Result<Weights<LmConfig, CausalLm<B>>> {
        match self {
            Loaded::Lm(w) => Ok(w),
            other => Err(other.not("a language model")),
        }
    }

    pub fn into_bert(self) -> Result<Weights<BertConfig, CrateBert<B>>> {
        match self {
            Loaded::Bert(w) => Ok(w),
            other => Err(other.not("a CRATE-BERT model")),
        }
    }
}

impl<C, M> Weights<C, M> {
    /// Metadata entry `key` parsed as JSON (`None` when absent; an error naming the file when
    /// malformed).
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.meta
            .get(key)
            .map(|s| {
                serde_json::from_str(s).with_context(|| {
                    format!("{}: metadata `{key}` is malformed", self.path.display())
                })
            })
            .transpose()
    }

    /// The normalisation stored with the weights, checked against the model's `channels`.
    pub fn normalization(&self, channels: usize) -> Result<Option<Normalization>> {
        let n: Option<Normalization> = self.meta_json("normalization")?;
        if let Some(n) = &n {
            n.validate(channels)
                .with_context(|| format!("{}: metadata `normalization`", self.path.display()))?;
        }
        Ok(n)
    }

    /// [`Weights::normalization`], else (with a warning) mean 0.5 and std 0.5 per channel, the
    /// usual normalisation of pictures given as files.
    pub fn normalization_or_half(&self, channels: usize) -> Result<Normalization> {
        Ok(self.normalization(channels)?.unwrap_or_else(|| {
            tracing::warn!("no normalisation stored with the weights; using mean 0.5, std 0.5");
            Normalization {
                mean: vec![0.5; channels],
                std: vec![0.5; channels],
            }
        }))
    }

    /// The tokenizer stored with the weights (validated).
    pub fn stored_tokenizer(&self) -> Result<Option<Tokenizer>> {
        let t: Option<Tokenizer> = self.meta_json("tokenizer")?;
        if let Some(t) = &t {
            t.validate()
                .with_context(|| format!("{}: tokenizer metadata", self.path.display()))?;
        }
        Ok(t)
    }
}
