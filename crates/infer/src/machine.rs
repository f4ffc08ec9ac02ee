//! Facts about the machine a model runs on: CPU model, cores, memory, and the instruction-set
//! features that decide which int8 kernels are fast (VNNI on x86, dot-product on ARM).

/// What the machine is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    /// CPU model name (`/proc/cpuinfo`), or the architecture when unknown.
    pub cpu_model: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// Operating system.
    pub os: String,
    /// Total memory in bytes, if known.
    pub memory_bytes: Option<u64>,
    /// Relevant CPU features present (`avx2`, `avx512_vnni`, `avx_vnni`, `asimddp`, `i8mm`, ...).
    pub features: Vec<String>,
}

/// Features that matter for choosing int8 formats.
const INTERESTING: [&str; 10] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
];

impl MachineInfo {
    /// Reads the facts of this machine.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self::from_proc(&cpuinfo, &meminfo)
    }

    /// Parses `/proc/cpuinfo` and `/proc/meminfo` contents.
    pub fn from_proc(cpuinfo: &str, meminfo: &str) -> Self {
        let field = |key: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
        let present: Vec<&str> = flags.split_whitespace().collect();
        let features = INTERESTING
            .iter()
            .filter(|f| present.contains(f))
            .map(|f| (*f).to_owned())
            .collect();
        let memory_bytes = meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        });
        let arch = std::env::consts::ARCH.to_owned();
        Self {
            cpu_model: field("model name")
                .or_else(|| field("Model"))
                .unwrap_or_else(|| arch.clone()),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            arch,
            os: std::env::consts::OS.to_owned(),
            memory_bytes,
            features,
        }
    }

    /// Whether a CPU feature is present.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_and_arm_cpuinfo_are_understood() {
        let x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512_vnni sse\n";
        let m = MachineInfo::from_proc(x86, "MemTotal:       16384 kB\n");
        assert_eq!(m.cpu_model, "AMD EPYC");
        assert_eq!(m.features, vec!["avx2", "fma", "avx512_vnni"]);
        assert!(m.has("avx512_vnni") && !m.has("avx_vnni"));
        assert_eq!(m.memory_bytes, Some(16 * 1024 * 1024));
        let arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 asimddp\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        let m = MachineInfo::from_proc(arm, "");
        assert_eq!(m.cpu_model, "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(m.features, vec!["asimd", "asimddp"]);
    }
}
