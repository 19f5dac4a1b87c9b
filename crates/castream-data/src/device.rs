//! The one place a compute device is chosen: the CLI's `--device` (and a spec's `device`) parse
//! into a [`DeviceChoice`], which becomes a candle [`Device`] here and is passed down as a value.

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// Where tensors live. Only the CPU is built today; the paper profile adds CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum DeviceChoice {
    #[default]
    Cpu,
}

impl DeviceChoice {
    pub const ALL: [DeviceChoice; 1] = [DeviceChoice::Cpu];

    /// The spelling of `--device` and specs.
    pub fn key(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
        }
    }

    pub fn device(self) -> Device {
        match self {
            DeviceChoice::Cpu => Device::Cpu,
        }
    }
}

crate::keyed!(DeviceChoice, "device", key);

/// The CPU: for code that runs before any device is chosen (tests, examples) and for data that
/// is always read on the host.
pub fn cpu() -> Device {
    DeviceChoice::Cpu.device()
}
