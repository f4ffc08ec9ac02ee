//! Human-readable numbers for terminal output.

/// `102.1 MB`-style size (decimal units, as disk sizes are usually quoted).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `25,530,472`-style integer.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_read_naturally() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(102_123_456), "102.1 MB");
        assert_eq!(thousands(25_530_472), "25,530,472");
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(100_000), "100,000");
    }
}
