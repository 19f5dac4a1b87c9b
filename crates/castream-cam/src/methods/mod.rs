//! Every method, one file each, and the registry that names them. Adding a method is its file,
//! one variant and one [`REGISTRY`] entry here.

mod ablation_cam;
mod cam;
mod grad_cam;
mod grad_cam_pp;
mod hires_cam;
mod layer_cam;
mod opti_cam;
mod raw_attention;
mod score_cam;
mod xgrad_cam;

use castream_stream::AttentionSelect;
use serde::{Deserialize, Serialize};

pub use ablation_cam::AblationCam;
pub use cam::Cam;
pub use grad_cam::GradCam;
pub use grad_cam_pp::GradCamPlusPlus;
pub use hires_cam::HiResCam;
pub use layer_cam::LayerCam;
pub use opti_cam::OptiCam;
pub use raw_attention::RawAttention;
pub use score_cam::ScoreCam;
pub use xgrad_cam::XGradCam;

use crate::method::CamMethod;

/// A method by name; [`REGISTRY`] gives its key (as specs and the CLI spell it), display name,
/// what it applies to and its constructor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Method {
    Cam,
    GradCam,
    GradCamPlusPlus,
    ScoreCam,
    HiResCam,
    XGradCam,
    LayerCam,
    AblationCam,
    OptiCam,
    RawAttention,
}

/// What a method needs of the model it explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Activations and logits: any [`crate::CamModel`].
    Activations,
    /// Logits that are a linear layer on the global average of the target layer: GAP only.
    LinearGapHead,
    /// The model's own attention: CA only.
    Attention,
}

/// One registered method.
pub struct MethodInfo {
    pub method: Method,
    /// The spelling of specs and the CLI.
    pub key: &'static str,
    /// The name tables and figures print.
    pub name: &'static str,
    pub needs: Needs,
    pub build: fn(&MethodOptions) -> Box<dyn CamMethod>,
}

/// Every method, once. The CLI, the spec parser, the tables, `bench --cam` and docs/cam.md read it.
pub const REGISTRY: [MethodInfo; 10] = [
    MethodInfo { method: Method::Cam, key: "cam", name: "CAM", needs: Needs::LinearGapHead, build: |_| Box::new(Cam) },
    MethodInfo {
        method: Method::GradCam,
        key: "grad-cam",
        name: "Grad-CAM",
        needs: Needs::Activations,
        build: |_| Box::new(GradCam),
    },
    MethodInfo {
        method: Method::GradCamPlusPlus,
        key: "grad-cam-plus-plus",
        name: "Grad-CAM++",
        needs: Needs::Activations,
        build: |o| Box::new(GradCamPlusPlus { eps: o.grad_cam_pp_eps }),
    },
    MethodInfo {
        method: Method::ScoreCam,
        key: "score-cam",
        name: "Score-CAM",
        needs: Needs::Activations,
        build: |o| Box::new(ScoreCam { chunk: o.chunk, channels: o.channels, upsampling: o.score_cam_upsampling }),
    },
    MethodInfo {
        method: Method::HiResCam,
        key: "hi-res-cam",
        name: "HiResCAM",
        needs: Needs::Activations,
        build: |_| Box::new(HiResCam),
    },
    MethodInfo {
        method: Method::XGradCam,
        key: "x-grad-cam",
        name: "XGrad-CAM",
        needs: Needs::Activations,
        build: |_| Box::new(XGradCam),
    },
    MethodInfo {
        method: Method::LayerCam,
        key: "layer-cam",
        name: "Layer-CAM",
        needs: Needs::Activations,
        build: |_| Box::new(LayerCam),
    },
    MethodInfo {
        method: Method::AblationCam,
        key: "ablation-cam",
        name: "Ablation-CAM",
        needs: Needs::Activations,
        build: |o| Box::new(AblationCam { chunk: o.chunk }),
    },
    MethodInfo {
        method: Method::OptiCam,
        key: "opti-cam",
        name: "Opti-CAM",
        needs: Needs::Activations,
        build: |o| Box::new(OptiCam { iterations: o.opti_cam_iterations, learning_rate: o.opti_cam_learning_rate }),
    },
    MethodInfo {
        method: Method::RawAttention,
        key: "raw-attention",
        name: "raw attention",
        needs: Needs::Attention,
        build: |o| Box::new(RawAttention { select: o.attention }),
    },
];

/// Settings of the methods that have any.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodOptions {
    /// Score-CAM masked images / Ablation-CAM ablated activations per forward pass.
    pub chunk: usize,
    /// Score-CAM: score only this many channels per image (highest mean activation); unset = all.
    pub channels: Option<usize>,
    /// Raw attention: which block or combination.
    pub attention: AttentionSelect,
    /// Score-CAM: how each channel is resized to the input before it masks it.
    pub score_cam_upsampling: Upsampling,
    /// Grad-CAM++: the `eps` in the denominator of `alpha`.
    pub grad_cam_pp_eps: f64,
    /// Opti-CAM: Adam steps per image.
    pub opti_cam_iterations: usize,
    /// Opti-CAM: Adam's learning rate.
    pub opti_cam_learning_rate: f64,
}

/// The authors' Grad-CAM++ `eps`: float64's machine epsilon (`sys.float_info.epsilon` in their
/// code; pytorch-grad-cam uses 1e-6, which can dominate `alpha` where gradients are small).
pub const AUTHORS_GRAD_CAM_PP_EPS: f64 = f64::EPSILON;

/// How Score-CAM resizes a channel `A^k` to the input before it masks the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Upsampling {
    /// `align_corners = true`: the corner pixels coincide (the authors' `nn.UpsamplingBilinear2d`).
    #[default]
    AlignCorners,
    /// `align_corners = false`: pixel centres at half-pixel offsets (`F.interpolate`'s default,
    /// pytorch-grad-cam's and OpenCV's resize; every other upsampling in castream).
    HalfPixel,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            chunk: 128,
            channels: None,
            attention: AttentionSelect::Last,
            score_cam_upsampling: Upsampling::AlignCorners,
            grad_cam_pp_eps: AUTHORS_GRAD_CAM_PP_EPS,
            opti_cam_iterations: OptiCam::ITERATIONS,
            opti_cam_learning_rate: OptiCam::LEARNING_RATE,
        }
    }
}

impl MethodOptions {
    /// Most masked images (ablated activations) per forward pass.
    pub const MAX_CHUNK: usize = 4096;
    /// Most channels Score-CAM may score per image (ResNet-50's last stage has 2048).
    pub const MAX_CHANNELS: usize = 8192;

    /// The valid ranges (docs/specs.md, "Valid ranges"): `chunk` 1 to [`Self::MAX_CHUNK`],
    /// `channels` unset (every channel) or 1 to [`Self::MAX_CHANNELS`]. Experiment files
    /// (`protocol.cam`) and `castream explain` (`--chunk`, `--channels`) both check here.
    pub fn validate(&self) -> Result<(), castream_data::valid::OutOfRange> {
        use castream_data::valid::in_range;
        in_range("chunk", self.chunk, 1..=Self::MAX_CHUNK, 128)?;
        in_range("opti_cam_iterations", self.opti_cam_iterations, 1..=10_000, OptiCam::ITERATIONS)?;
        if !(self.opti_cam_learning_rate.is_finite()
            && self.opti_cam_learning_rate > 0.0
            && self.opti_cam_learning_rate <= 10.0)
        {
            return Err(castream_data::valid::OutOfRange::new(
                "opti_cam_learning_rate",
                self.opti_cam_learning_rate,
                "above 0, at most 10 (the official code's is 0.1)",
                OptiCam::LEARNING_RATE,
            ));
        }
        // 0 is out: where g² underflows to 0 the denominator would be 0 too.
        if !(self.grad_cam_pp_eps.is_finite() && self.grad_cam_pp_eps > 0.0 && self.grad_cam_pp_eps <= 1.0) {
            return Err(castream_data::valid::OutOfRange::new(
                "grad_cam_pp_eps",
                self.grad_cam_pp_eps,
                "above 0, at most 1 (the authors' value is 2.220446049250313e-16, pytorch-grad-cam's 1e-6)",
                AUTHORS_GRAD_CAM_PP_EPS,
            ));
        }
        match self.channels {
            Some(n) => in_range("channels", n, 1..=Self::MAX_CHANNELS, 256),
            None => Ok(()),
        }
    }
}

impl Method {
    /// Every method, in registry order.
    pub const ALL: [Method; REGISTRY.len()] = {
        let mut all = [Method::Cam; REGISTRY.len()];
        let mut i = 0;
        while i < REGISTRY.len() {
            all[i] = REGISTRY[i].method;
            i += 1;
        }
        all
    };

    pub fn info(self) -> &'static MethodInfo {
        REGISTRY.iter().find(|e| e.method == self).expect("every method is registered (tested)")
    }

    pub fn key(self) -> &'static str {
        self.info().key
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn build(self, options: &MethodOptions) -> Box<dyn CamMethod> {
        (self.info().build)(options)
    }

    /// Whether the method explains this pooling (CAM needs GAP's linear head, raw attention CA's
    /// attention).
    pub fn applies_to(self, pooling: PoolingKind) -> bool {
        match self.info().needs {
            Needs::Activations => true,
            Needs::LinearGapHead => pooling == PoolingKind::Gap,
            Needs::Attention => pooling == PoolingKind::Ca,
        }
    }
}

castream_data::keyed!(Method, "CAM method", name);

/// How the backbone's last feature map is pooled, as a typed value: the original GAP network or
/// the same frozen backbone with CA-Stream. [`PoolingKind::ALL`] is the poolings' registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum PoolingKind {
    Gap,
    Ca,
}

impl PoolingKind {
    pub const ALL: [PoolingKind; 2] = [PoolingKind::Gap, PoolingKind::Ca];

    /// The spelling of specs and the CLI.
    pub fn key(self) -> &'static str {
        match self {
            PoolingKind::Gap => "gap",
            PoolingKind::Ca => "ca",
        }
    }

    /// The name tables print.
    pub fn label(self) -> &'static str {
        match self {
            PoolingKind::Gap => "GAP",
            PoolingKind::Ca => "CA",
        }
    }
}

castream_data::keyed!(PoolingKind, "pooling", label);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_registered_once_and_keys_parse_back() {
        let mut seen = std::collections::BTreeSet::new();
        for e in &REGISTRY {
            assert!(seen.insert(e.method), "{:?} registered twice", e.method);
            assert_eq!((e.build)(&MethodOptions::default()).name(), e.name, "{}", e.key);
        }
        assert_eq!(seen.len(), 10, "a variant is missing from REGISTRY");
        for m in Method::ALL {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.key()));
            assert_eq!(m.key().parse::<Method>().unwrap(), m);
        }
        let err = "gradcam".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("grad-cam, "), "{err}");
    }
}
