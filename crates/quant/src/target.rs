//! Hardware classes and the quantization defaults that run fastest (at good accuracy) on each.
//!
//! The defaults come from measurements with ONNX Runtime 1.32 (see `bench/results/quantization.md`
//! and the numbers quoted on [`HardwareClass::defaults`]):
//!
//! - `x86_64` (AVX2, no VNNI; e.g. AMD Zen 3): MLAS's int8 GEMM multiplies unsigned activations by
//!   signed weights with `vpmaddubsw`, which adds two u8 × s8 products into a saturating 16-bit
//!   sum. U8S8 QDQ models fuse completely into `QLinearConv`; S8S8 models leave the residual
//!   branches in float (ResNet-50: 20 of 53 convolutions unfused) and run no faster than FP32. So:
//!   U8 activations, per-channel weights, and 7-bit weights (`reduce_range`): with full 8-bit
//!   per-channel weights the fused kernel saturates (a Gemm fixture: 20 % relative error fused vs 1 %
//!   in the unfused QDQ arithmetic; with 7-bit weights both are 1.4 %). S8 activations are run
//!   through the same u8 kernel and saturate the same way.
//! - `x86_64-vnni` (AVX512-VNNI or AVX-VNNI): `vpdpbusd` is also u8 × s8 and cannot saturate, so the
//!   same U8S8 choice, without any saturation concern.
//! - `aarch64` (Raspberry Pi 4 class): the int8 kernels are signed × signed (`smull`/`sdot`);
//!   ONNX Runtime recommends S8S8 on ARM and the paper's Pi 4 result is for signed int8 static.
//!   Not measured here (no ARM machine); chosen from those two sources.

use std::fmt;
use std::str::FromStr;

use infer::machine::MachineInfo;

use crate::params::QType;

/// A class of CPUs with the same best int8 format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum HardwareClass {
    /// x86-64 with AVX512-VNNI or AVX-VNNI.
    #[serde(rename = "x86_64-vnni")]
    X86Vnni,
    /// x86-64 with AVX2 and no VNNI.
    #[serde(rename = "x86_64")]
    X86,
    /// 64-bit ARM.
    #[serde(rename = "aarch64")]
    Aarch64,
}

/// `--target`: a class, or `auto` for this machine's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Detect from the machine running the command.
    #[default]
    Auto,
    /// A given class (to quantize for a device other than this machine).
    Class(HardwareClass),
}

impl Target {
    /// The hardware class this target stands for on `machine`.
    pub fn resolve(self, machine: &MachineInfo) -> HardwareClass {
        match self {
            Self::Auto => HardwareClass::detect(machine),
            Self::Class(c) => c,
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        s.parse().map(Self::Class)
    }
}

/// Defaults for a hardware class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TargetDefaults {
    /// Activation type of static quantization.
    pub activations: QType,
    /// Per-channel weights.
    pub per_channel: bool,
    /// 7-bit weights.
    pub reduce_range: bool,
    /// Why, in one line.
    pub reason: &'static str,
}

impl HardwareClass {
    /// Every class, for help texts.
    pub const ALL: [HardwareClass; 3] = [Self::X86Vnni, Self::X86, Self::Aarch64];

    /// The class of a machine.
    pub fn detect(machine: &MachineInfo) -> Self {
        match machine.arch.as_str() {
            "aarch64" | "arm64" => Self::Aarch64,
            _ if machine.has("avx512_vnni") || machine.has("avx_vnni") => Self::X86Vnni,
            _ => Self::X86,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::X86Vnni => "x86_64-vnni",
            Self::X86 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// The defaults for this class.
    pub fn defaults(self) -> TargetDefaults {
        match self {
            Self::X86Vnni => TargetDefaults {
                activations: QType::U8,
                per_channel: true,
                reduce_range: false,
                reason: "VNNI's vpdpbusd multiplies u8 by s8 without saturation: U8S8 per-channel",
            },
            Self::X86 => TargetDefaults {
                activations: QType::U8,
                per_channel: true,
                reduce_range: true,
                reason: "AVX2 int8 kernels are u8 x s8 (vpmaddubsw): U8S8 fuses fully (S8S8 measured no faster \
                         than FP32), 7-bit weights because 8-bit ones saturate the 16-bit pair sums",
            },
            Self::Aarch64 => TargetDefaults {
                activations: QType::S8,
                per_channel: true,
                reduce_range: false,
                reason: "ARM int8 kernels are s8 x s8 (ONNX Runtime's advice and the paper's Pi 4 result)",
            },
        }
    }
}

impl fmt::Display for HardwareClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HardwareClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown target '{s}' (auto, x86_64-vnni, x86_64, aarch64)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(arch: &str, features: &[&str]) -> MachineInfo {
        MachineInfo {
            cpu_model: "test".into(),
            cores: 2,
            arch: arch.into(),
            os: "linux".into(),
            memory_bytes: None,
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn classes_follow_the_cpu_features() {
        assert_eq!(
            HardwareClass::detect(&machine("x86_64", &["avx2", "fma"])),
            HardwareClass::X86
        );
        assert_eq!(
            HardwareClass::detect(&machine("x86_64", &["avx2", "avx512_vnni"])),
            HardwareClass::X86Vnni
        );
        assert_eq!(
            HardwareClass::detect(&machine("x86_64", &["avx_vnni"])),
            HardwareClass::X86Vnni
        );
        assert_eq!(
            HardwareClass::detect(&machine("aarch64", &["asimd"])),
            HardwareClass::Aarch64
        );
        assert_eq!(HardwareClass::Aarch64.defaults().activations, QType::S8);
        assert_eq!(HardwareClass::X86.defaults().activations, QType::U8);
        assert!(
            HardwareClass::X86.defaults().reduce_range && !HardwareClass::X86Vnni.defaults().reduce_range
        );
    }

    #[test]
    fn targets_parse() {
        assert_eq!("auto".parse(), Ok(Target::Auto));
        assert_eq!("x86_64-vnni".parse(), Ok(Target::Class(HardwareClass::X86Vnni)));
        assert!("riscv".parse::<Target>().unwrap_err().contains("aarch64"));
    }
}
