//! Running loaded models: one forward pass on tensors or a file ([`forward`]), evaluation on a
//! test split and prediction of pictures ([`classify`]), the loss on a text and generation
//! ([`text`]). It reads models through [`crate::weights`] and batches through [`crate::train`]'s
//! data path; nothing below it imports it.

pub mod classify;
pub mod forward;
pub mod text;

pub use classify::{ClassifierShape, ImageClassifier};
