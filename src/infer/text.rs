//! A loaded language model: its tokenizer, the loss on a text file and generation.

use anyhow::{ensure, Context, Result};
use std::path::Path;

use crate::model::lm::{self, CausalLm, LmConfig};
use crate::model::CrateBackend;
use crate::text::Tokenizer;
use crate::weights::Weights;

impl<B: CrateBackend> Weights<LmConfig, CausalLm<B>> {
    /// The tokenizer stored with the weights; official weights without one (a GPT-2 sized
    /// vocabulary) use GPT-2 BPE.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        if let Some(t) = self.stored_tokenizer()? {
            return Ok(t);
        }
        ensure!(
            self.config.vocab_size >= Tokenizer::Gpt2.vocab_size(),
            "{}: no tokenizer stored with these weights (vocabulary {})",
            self.path.display(),
            self.config.vocab_size
        );
        Ok(Tokenizer::Gpt2)
    }

    /// Mean next-token cross-entropy of the text file `path` (its tokenizer's ids, scored in
    /// windows of the context, `batch_size` windows at a time) and the number of predicted tokens.
    pub fn text_loss(&self, path: &Path, batch_size: usize) -> Result<(f64, usize)> {
        let text = crate::text::read_corpus(path)?;
        let ids = self
            .encode(&text)
            .with_context(|| path.display().to_string())?;
        lm::check_tokens(&ids, self.config.vocab_size)?;
        let device = Default::default();
        crate::train::lm::sequential_loss(&self.model, &ids, batch_size, &device)
    }

    /// Continue `prompt` by sampling (`opts`, seed `seed`), handing each piece of decoded text
    /// to `on_text` as it comes.
    pub fn generate_text(
        &self,
        prompt: &str,
        opts: &lm::Sampling,
        seed: u64,
        mut on_text: impl FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        let ids = self.encode(prompt).context("--prompt")?;
        ensure!(!ids.is_empty(), "--prompt is empty");
        ensure!(
            ids.len() <= self.config.block_size,
            "--prompt is {} tokens, longer than the model's context of {} (block_size)",
            ids.len(),
            self.config.block_size
        );
        opts.validate()?;
        let tok = self.tokenizer()?;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let mut dec = crate::text::StreamDecoder::default();
        self.model.generate(&ids, opts, &mut rng, |t| {
            on_text(&dec.push(&tok, t as u32)?)
        })?;
        Ok(())
    }

    /// The ids of `text` under the weights' tokenizer.
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self
            .tokenizer()?
            .encode(text)?
            .into_iter()
            .map(i64::from)
            .collect())
    }
}
