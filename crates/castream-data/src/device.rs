//! The one place a compute device is chosen: the CLI's `--device` (and a spec's `device`) parse
//! into a [`DeviceChoice`], which becomes a candle [`Device`] here and is passed down as a value.
//!
//! `cuda` and `cuda:N` parse in every build, so a flag or a spec is checked the same everywhere;
//! only [`DeviceChoice::device`] needs the `cuda` feature (candle's CUDA backend).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{DataError, Result};

/// Where tensors live: the CPU, or the CUDA device of an ordinal (needs the `cuda` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// `cuda` (= `cuda:0`) or `cuda:N`.
    Cuda(usize),
}

impl DeviceChoice {
    /// One of each kind, for listings (`cuda:0` stands for every ordinal).
    pub const ALL: [DeviceChoice; 2] = [DeviceChoice::Cpu, DeviceChoice::Cuda(0)];

    /// The valid spellings, for messages.
    pub fn keys() -> String {
        "cpu, cuda, cuda:N (N = 0, 1, …)".to_string()
    }

    /// The canonical spelling of `--device` and specs: `cpu` or `cuda:N` (`cuda` parses as
    /// `cuda:0` and prints so).
    pub fn key(self) -> String {
        match self {
            DeviceChoice::Cpu => "cpu".to_string(),
            DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        }
    }

    pub fn is_cpu(self) -> bool {
        self == DeviceChoice::Cpu
    }

    /// The candle device. A CUDA choice fails in a build without the `cuda` feature, and on a
    /// machine without that device or without an NVIDIA driver, with a message that says so.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => cuda(n),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| {
        DataError::Device(format!(
            "`--device cuda:{n}`: cannot open CUDA device {n} ({e}). There is no CUDA device {n}, or the NVIDIA \
             driver (libcuda) is missing. Fix: check `nvidia-smi` (ordinals start at 0), or use `--device cpu`"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    Err(DataError::Device(format!(
        "`--device cuda:{n}`: this build has no CUDA support; Fix: build with `cargo build --release --features cuda` \
         on a machine with the CUDA toolkit (docs/paper-profile.md)"
    )))
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.key())
    }
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let unknown = || format!("unknown device `{s}`: choose one of {}", DeviceChoice::keys());
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(unknown)?;
                // Digits only: `usize::from_str` would take `+1`.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(unknown());
                }
                n.parse().map(DeviceChoice::Cuda).map_err(|_| unknown())
            }
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.key()
    }
}

/// What cache entries computed on `device` add to their names: nothing on the CPU, `-cuda` on a
/// GPU, whose sums run in another order, so that results of one device never stand in for another's.
pub fn cache_tag(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "",
        Device::Cuda(_) => "-cuda",
        Device::Metal(_) => "-metal",
    }
}

/// The CPU: for code that runs before any device is chosen (tests, examples) and for data that
/// is always read on the host.
pub fn cpu() -> Device {
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spellings_parse_and_print_back() {
        let cases = [("cpu", DeviceChoice::Cpu), ("cuda:0", DeviceChoice::Cuda(0)), ("cuda:1", DeviceChoice::Cuda(1))];
        for (s, d) in cases {
            assert_eq!(s.parse::<DeviceChoice>().unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        // `cuda` is ordinal 0, printed in the canonical form.
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(DeviceChoice::Cuda(0).to_string(), "cuda:0");
        assert_eq!("cuda:12".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(12));
        assert_eq!(format!("[{:<6}]", DeviceChoice::Cpu), "[cpu   ]");
        assert_eq!(DeviceChoice::default(), DeviceChoice::Cpu);
    }

    #[test]
    fn device_unknown_spellings_list_the_valid_ones() {
        for s in ["cuda:x", "gpu", "cuda:", "cuda:-1", "cuda:+1", "CUDA", "cpu:0", ""] {
            let err = s.parse::<DeviceChoice>().unwrap_err();
            assert_eq!(err, format!("unknown device `{s}`: choose one of cpu, cuda, cuda:N (N = 0, 1, …)"));
        }
    }

    #[test]
    fn device_serialises_as_its_spelling() {
        let all = [DeviceChoice::Cpu, DeviceChoice::Cuda(0), DeviceChoice::Cuda(3)];
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(json, r#"["cpu","cuda:0","cuda:3"]"#);
        assert_eq!(serde_json::from_str::<Vec<DeviceChoice>>(&json).unwrap(), all);
        let err = serde_json::from_str::<DeviceChoice>("\"gpu\"").unwrap_err().to_string();
        assert!(err.contains("cpu, cuda, cuda:N"), "{err}");
    }

    #[test]
    fn device_cpu_is_always_available() {
        assert!(DeviceChoice::Cpu.device().unwrap().is_cpu());
        assert!(cpu().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn device_cuda_without_the_feature_says_how_to_build_it() {
        let err = DeviceChoice::Cuda(0).device().unwrap_err().to_string();
        assert_eq!(
            err,
            "`--device cuda:0`: this build has no CUDA support; Fix: build with `cargo build --release --features cuda` \
             on a machine with the CUDA toolkit (docs/paper-profile.md)"
        );
        assert!(DeviceChoice::Cuda(2).device().unwrap_err().to_string().starts_with("`--device cuda:2`"));
    }
}
