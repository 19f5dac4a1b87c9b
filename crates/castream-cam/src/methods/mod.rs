//! Every method, one file each, and the registry that names them. Adding a method is its file
//! plus one variant here.

mod ablation_cam;
mod cam;
mod grad_cam;
mod grad_cam_pp;
mod hires_cam;
mod layer_cam;
mod raw_attention;
mod score_cam;
mod xgrad_cam;

use std::fmt;
use std::str::FromStr;

use castream_stream::AttentionSelect;
use serde::{Deserialize, Serialize};

pub use ablation_cam::AblationCam;
pub use cam::Cam;
pub use grad_cam::GradCam;
pub use grad_cam_pp::GradCamPlusPlus;
pub use hires_cam::HiResCam;
pub use layer_cam::LayerCam;
pub use raw_attention::RawAttention;
pub use score_cam::ScoreCam;
pub use xgrad_cam::XGradCam;

use crate::method::CamMethod;

/// A method by name, as specs and the CLI spell it (`grad-cam`, `score-cam`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Cam,
    GradCam,
    GradCamPlusPlus,
    ScoreCam,
    HiResCam,
    XGradCam,
    LayerCam,
    AblationCam,
    RawAttention,
}

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
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions { chunk: 128, channels: None, attention: AttentionSelect::Last }
    }
}

impl Method {
    pub const ALL: [Method; 9] = [
        Method::Cam,
        Method::GradCam,
        Method::GradCamPlusPlus,
        Method::ScoreCam,
        Method::HiResCam,
        Method::XGradCam,
        Method::LayerCam,
        Method::AblationCam,
        Method::RawAttention,
    ];

    /// The spelling of specs and the CLI.
    pub fn key(self) -> &'static str {
        match self {
            Method::Cam => "cam",
            Method::GradCam => "grad-cam",
            Method::GradCamPlusPlus => "grad-cam-plus-plus",
            Method::ScoreCam => "score-cam",
            Method::HiResCam => "hi-res-cam",
            Method::XGradCam => "x-grad-cam",
            Method::LayerCam => "layer-cam",
            Method::AblationCam => "ablation-cam",
            Method::RawAttention => "raw-attention",
        }
    }

    pub fn build(self, options: &MethodOptions) -> Box<dyn CamMethod> {
        match self {
            Method::Cam => Box::new(Cam),
            Method::GradCam => Box::new(GradCam),
            Method::GradCamPlusPlus => Box::new(GradCamPlusPlus),
            Method::ScoreCam => Box::new(ScoreCam { chunk: options.chunk, channels: options.channels }),
            Method::HiResCam => Box::new(HiResCam),
            Method::XGradCam => Box::new(XGradCam),
            Method::LayerCam => Box::new(LayerCam),
            Method::AblationCam => Box::new(AblationCam { chunk: options.chunk }),
            Method::RawAttention => Box::new(RawAttention { select: options.attention }),
        }
    }

    /// Whether the method explains this pooling (CAM needs GAP, raw attention needs CA).
    pub fn applies_to(self, ca: bool) -> bool {
        match self {
            Method::Cam => !ca,
            Method::RawAttention => ca,
            _ => true,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.build(&MethodOptions::default()).name())
    }
}

impl FromStr for Method {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Method> {
        Method::ALL.into_iter().find(|m| m.key() == s).ok_or_else(|| {
            let keys: Vec<&str> = Method::ALL.iter().map(|m| m.key()).collect();
            anyhow::anyhow!("unknown CAM method `{s}`: choose one of {}", keys.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_serde_names_and_parse_back() {
        for m in Method::ALL {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.key()));
            assert_eq!(m.key().parse::<Method>().unwrap(), m);
        }
        let err = "gradcam".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("grad-cam, "), "{err}");
    }
}
