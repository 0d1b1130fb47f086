//! The model families a config names in its `"arch"` field, and a classifier's pooling; both
//! serialise to the strings of the config files and weights metadata (`"crate-alpha"`, `"cls"`).

use serde::{Deserialize, Serialize};

/// A model family: which config struct describes it and which model `init` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// The CRATE classifier (`model/crate.py`), [`super::CrateConfig`].
    #[serde(rename = "crate")]
    Crate,
    /// CRATE-α (overcomplete ISTA with a decoding dictionary, conv tokenizer), [`super::CrateConfig`].
    #[serde(rename = "crate-alpha")]
    CrateAlpha,
    /// A classifier on a CRATE-MAE encoder (conv tokenizer, the encoder's λ), [`super::CrateConfig`].
    #[serde(rename = "crate-mae-encoder")]
    CrateMaeEncoder,
    /// CRATE-MAE (masked autoencoder), [`super::mae::MaeConfig`].
    #[serde(rename = "crate-mae")]
    CrateMae,
    /// The ToST classifier (TSSA), [`super::tost::TostConfig`].
    #[serde(rename = "tost")]
    Tost,
    /// Causal CRATE with a complete dictionary (crate-lm `crate.py`), [`super::lm::LmConfig`].
    #[serde(rename = "crate-lm")]
    CrateLm,
    /// Causal CRATE with the overcomplete dictionary (crate-lm `crate_overcomplete.py`).
    #[serde(rename = "crate-lm-overcomplete")]
    CrateLmOvercomplete,
    /// The nanoGPT GPT baseline.
    #[serde(rename = "gpt")]
    Gpt,
    /// ToST's causal TSSA language model.
    #[serde(rename = "tost-lm")]
    TostLm,
    /// CRATE-BERT (masked LM), [`super::bert::BertConfig`].
    #[serde(rename = "crate-bert")]
    CrateBert,
}

impl Arch {
    pub const ALL: [Arch; 10] = [
        Arch::Crate,
        Arch::CrateAlpha,
        Arch::CrateMaeEncoder,
        Arch::CrateMae,
        Arch::Tost,
        Arch::CrateLm,
        Arch::CrateLmOvercomplete,
        Arch::Gpt,
        Arch::TostLm,
        Arch::CrateBert,
    ];

    /// The `"arch"` string of the config files.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Crate => "crate",
            Arch::CrateAlpha => "crate-alpha",
            Arch::CrateMaeEncoder => "crate-mae-encoder",
            Arch::CrateMae => "crate-mae",
            Arch::Tost => "tost",
            Arch::CrateLm => "crate-lm",
            Arch::CrateLmOvercomplete => "crate-lm-overcomplete",
            Arch::Gpt => "gpt",
            Arch::TostLm => "tost-lm",
            Arch::CrateBert => "crate-bert",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                anyhow::anyhow!(
                    "arch {s:?} is unknown (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

impl PartialEq<&str> for Arch {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// How a classifier reads its tokens into one feature: the cls token or the mean of all tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    #[default]
    Cls,
    Mean,
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pool::Cls => "cls",
            Pool::Mean => "mean",
        })
    }
}
