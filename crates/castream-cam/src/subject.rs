//! What a CAM method explains: a [`CamModel`] with the input normalisation it was trained with
//! (Score-CAM and the metrics mask images in pixel space), and the class each map explains.

use candle_core::{DType, Device, Result, Tensor};
use castream_data::normalise::Normalisation;

use crate::model::{Activations, CamModel};
use crate::network::{Network, Pooling};

/// A model to explain and its input normalisation.
pub struct Subject<'a> {
    pub model: Box<dyn CamModel + 'a>,
    pub normalisation: Normalisation,
}

impl<'a> Subject<'a> {
    /// Any model: `Subject::new(&my_model, normalisation)`.
    pub fn new(model: impl CamModel + 'a, normalisation: Normalisation) -> Subject<'a> {
        Subject { model: Box::new(model), normalisation }
    }

    /// A castream network explained at its last stage.
    pub fn of(pooling: Pooling<'a>, normalisation: Normalisation) -> Subject<'a> {
        Subject::new(Network::new(pooling), normalisation)
    }

    pub fn activations(&self, x: &Tensor) -> Result<Activations> {
        self.model.activations(x)
    }

    pub fn logits_from(&self, acts: &Activations, a: &Tensor) -> Result<Tensor> {
        self.model.logits_from(acts, a)
    }

    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.model.logits(x)
    }

    /// The predicted class of every image.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.logits(x)?.argmax(1)?.to_vec1()
    }
}

/// Which class each map explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetClass {
    /// The label (the authors' choice, the default).
    #[default]
    GroundTruth,
    /// The network's top-1 prediction.
    Predicted,
}

impl TargetClass {
    /// The class per image: `labels` for the ground truth, the argmax otherwise.
    pub fn resolve(self, subject: &Subject, x: &Tensor, labels: &[u32]) -> Result<Vec<u32>> {
        match self {
            TargetClass::GroundTruth => Ok(labels.to_vec()),
            TargetClass::Predicted => subject.predict(x),
        }
    }
}

/// `(B, 1)` u32 indices for `gather`.
pub(crate) fn class_index(classes: &[u32], device: &Device) -> Result<Tensor> {
    Tensor::from_slice(classes, (classes.len(), 1), device)?.to_dtype(DType::U32)
}
