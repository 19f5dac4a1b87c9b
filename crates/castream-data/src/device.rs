//! The one place a compute device is chosen: the CLI's `--device` (and a spec's `device`) parse
//! into a [`DeviceChoice`], which becomes a candle [`Device`] here and is passed down as a value.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// Where tensors live. Only the CPU is built today; the paper profile adds CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    #[default]
    Cpu,
}

impl DeviceChoice {
    pub fn device(self) -> Device {
        match self {
            DeviceChoice::Cpu => Device::Cpu,
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Cpu => "cpu",
        })
    }
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            other => Err(format!("unknown device `{other}`: this build supports `cpu`")),
        }
    }
}

/// The CPU: for code that runs before any device is chosen (tests, examples) and for data that
/// is always read on the host.
pub fn cpu() -> Device {
    DeviceChoice::Cpu.device()
}
