//! Image classifiers of either family (CRATE, ToST) and frozen features from a loaded model:
//! evaluation on a test split and prediction of pictures.

use anyhow::{ensure, Context, Result};
use std::path::Path;

use crate::data::{Format, Normalization, Split};
use crate::model::features::Features;
use crate::model::tost::Tost;
use crate::model::{Crate, CrateBackend};
use crate::train::image_run::{check_shape, load_split};
use crate::train::EvalResult;
use crate::weights::{Loaded, Weights};

/// Input shape `[channels, height, width]` and number of classes of an image classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifierShape {
    pub input: [usize; 3],
    pub num_classes: usize,
}

/// An image classifier of either family: CRATE (MSSA) or ToST (TSSA).
#[allow(clippy::large_enum_variant)] // one per loaded model
pub enum ImageClassifier<B: CrateBackend> {
    Crate(Crate<B>),
    Tost(Tost<B>),
}

impl<B: CrateBackend> ImageClassifier<B> {
    /// Logits `[n, classes]` of images `[n, c, h, w]` (inference).
    pub fn forward(&self, x: burn::tensor::Tensor<B, 4>) -> burn::tensor::Tensor<B, 2> {
        match self {
            ImageClassifier::Crate(m) => m.forward(x),
            ImageClassifier::Tost(m) => m.forward(x),
        }
    }
}

impl<B: CrateBackend> Weights<ClassifierShape, ImageClassifier<B>> {
    /// Top-1, top-5 and mean loss on the first `limit` test images of `data` (normalised as the
    /// weights were trained, else with the training split's statistics), batches of `batch_size`.
    pub fn evaluate_test_split(
        &self,
        data: &Path,
        format: Format,
        limit: Option<usize>,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<EvalResult> {
        ensure!(batch_size > 0, "--batch-size must be at least 1");
        let shape = self.config.input;
        let test = load_split(data, format, Split::Test, limit)?;
        check_shape(shape, &test, data)?;
        test.check_labels(self.config.num_classes)
            .with_context(|| format!("{}: test split", data.display()))?;
        let norm = self.normalization_or_train(shape[0], data, format)?;
        let r = crate::train::evaluate_with(
            |x| self.model.forward(x),
            &test,
            &norm,
            batch_size,
            device,
        )?;
        ensure!(
            r.loss.is_finite(),
            "{}: the model's outputs on the test split of {} are not finite (loss {}): the weights \
             or their stored normalisation give NaN or infinite values",
            self.path.display(),
            data.display(),
            r.loss
        );
        Ok(r)
    }

    /// The class names stored with the weights, else the class indices.
    pub fn class_names(&self) -> Result<Vec<String>> {
        let k = self.config.num_classes;
        let names: Vec<String> = self
            .meta_json("class_names")?
            .unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect());
        ensure!(
            names.len() == k,
            "{}: metadata `class_names` names {} classes but the model has {k}",
            self.path.display(),
            names.len()
        );
        Ok(names)
    }

    /// The `k` most likely classes of a PNG/JPEG picture (resized to the model's input and
    /// normalised by `norm`), with their probabilities, most likely first.
    pub fn predict_file(
        &self,
        path: &Path,
        norm: &Normalization,
        k: usize,
        device: &B::Device,
    ) -> Result<Vec<(String, f32)>> {
        let [c, s, _] = self.config.input;
        let px = norm.apply_chw(&crate::data::folder::read_image(path, c, s)?);
        let x = burn::tensor::Tensor::<B, 4>::from_data(
            burn::tensor::TensorData::new(px, [1, c, s, s]),
            device,
        );
        let probs = burn::tensor::activation::softmax(self.model.forward(x), 1);
        let p: Vec<f32> = probs.into_data().convert::<f32>().to_vec().unwrap();
        ensure!(
            p.iter().all(|v| v.is_finite()),
            "{}: the model's outputs on {} are not finite: the weights or their stored \
             normalisation give NaN or infinite values",
            self.path.display(),
            path.display()
        );
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&i, &j| p[j].total_cmp(&p[i]));
        let names = self.class_names()?;
        Ok(order
            .into_iter()
            .take(k.max(1))
            .map(|i| (names.get(i).cloned().unwrap_or_else(|| i.to_string()), p[i]))
            .collect())
    }
}

impl<B: CrateBackend> Loaded<B> {
    /// An image classifier of either family (CRATE or ToST), else an error.
    pub fn into_image_classifier(self) -> Result<Weights<ClassifierShape, ImageClassifier<B>>> {
        ensure!(
            self.meta().get("head").map(String::as_str) != Some("untrained"),
            "{} is a self-supervised backbone (`dino train`): its classifier head was never \
             trained; use `knn` or `probe` on it, or `train --init-from` to fine-tune it",
            self.path().display()
        );
        Ok(match self {
            Loaded::Crate(w) => Weights {
                config: ClassifierShape {
                    input: [w.config.channels, w.config.image_size, w.config.image_size],
                    num_classes: w.config.num_classes,
                },
                model: ImageClassifier::Crate(w.model),
                meta: w.meta,
                path: w.path,
            },
            Loaded::Tost(w) => Weights {
                config: ClassifierShape {
                    input: w.config.input_shape(),
                    num_classes: w.config.num_classes,
                },
                model: ImageClassifier::Tost(w.model),
                meta: w.meta,
                path: w.path,
            },
            other => return Err(other.not("a classifier")),
        })
    }
}

impl<B: CrateBackend> Loaded<B> {
    /// The frozen-feature view of a CRATE (head input `LN(cls)`) or a CRATE-MAE encoder (cls
    /// feature), with the input shape `[channels, height, width]` it takes; else an error.
    pub fn into_features(self) -> Result<Weights<[usize; 3], Features<B>>> {
        Ok(match self {
            Loaded::Crate(w) => Weights {
                config: [w.config.channels, w.config.image_size, w.config.image_size],
                model: Features::Crate(w.model),
                meta: w.meta,
                path: w.path,
            },
            Loaded::Mae(w) => Weights {
                config: [w.config.in_chans, w.config.img_size, w.config.img_size],
                model: Features::Mae(w.model),
                meta: w.meta,
                path: w.path,
            },
            other => return Err(other.not("a CRATE or CRATE-MAE to take features from")),
        })
    }
}

impl<C, M> Weights<C, M> {
    /// [`Weights::normalization`], else (with a warning) the statistics of the training split of
    /// the images in `data`, the normalisation a run on them would have stored.
    pub fn normalization_or_train(
        &self,
        channels: usize,
        data: &Path,
        format: Format,
    ) -> Result<Normalization> {
        if let Some(n) = self.normalization(channels)? {
            return Ok(n);
        }
        tracing::warn!(
            "no normalisation stored with the weights; using the train split's statistics"
        );
        let train = load_split(data, format, Split::Train, None)?;
        Ok(Normalization::from_set(&train))
    }
}
