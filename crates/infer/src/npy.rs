//! NumPy `.npy` files (format versions 1 to 3) to and from [`Tensor`]s: the exchange format for
//! calibration and evaluation data, and for test vectors.
//!
//! Only C-ordered little-endian arrays of the element types a [`Tensor`] holds are supported;
//! anything else is a clear error rather than a misread.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use crate::tensor::{ElementType, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// What went wrong reading or writing an `.npy` file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an `.npy` array this reader supports.
    #[error("{}not a supported .npy array: {reason}", prefix(.path))]
    Format {
        /// The file, when the bytes came from one.
        path: Option<PathBuf>,
        /// What was wrong.
        reason: String,
    },
}

fn prefix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or(String::new(), |p| format!("{}: ", p.display()))
}

fn format_err(reason: impl Into<String>) -> NpyError {
    NpyError::Format {
        path: None,
        reason: reason.into(),
    }
}

/// Reads an `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode_npy(&bytes).map_err(|e| match e {
        NpyError::Format { reason, .. } => NpyError::Format {
            path: Some(path.to_owned()),
            reason,
        },
        other => other,
    })
}

/// Writes an `.npy` file (version 1.0) through a temporary file and a rename.
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<(), NpyError> {
    let io = |source| NpyError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = std::fs::write(&tmp, encode_npy(tensor)).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

fn descr(dtype: ElementType) -> &'static str {
    match dtype {
        ElementType::F32 => "<f4",
        ElementType::F64 => "<f8",
        ElementType::U8 => "|u1",
        ElementType::I8 => "|i1",
        ElementType::I32 => "<i4",
        ElementType::I64 => "<i8",
        ElementType::Bool => "|b1",
    }
}

/// Encodes a tensor as `.npy` (version 1.0) bytes.
pub fn encode_npy(tensor: &Tensor) -> Vec<u8> {
    let shape = tensor.shape();
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}",
        descr(tensor.dtype())
    );
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + tensor.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match tensor {
        Tensor::F32(a) => a.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Tensor::F64(a) => a.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Tensor::U8(a) => out.extend(a.iter().copied()),
        Tensor::I8(a) => a.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Tensor::I32(a) => a.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Tensor::I64(a) => a.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Tensor::Bool(a) => out.extend(a.iter().map(|&b| u8::from(b))),
    }
    out
}

/// Decodes `.npy` bytes.
pub fn decode_npy(bytes: &[u8]) -> Result<Tensor, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(format_err("no .npy magic (\\x93NUMPY)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format_err(format!("unknown format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| format_err("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| format_err("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| format_err("header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| format_err("header has no 'fortran_order'"))?;
    if fortran.trim() != "False" {
        return Err(format_err(
            "Fortran-ordered arrays are not supported (save with C order)",
        ));
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| format_err("header has no 'shape'"))?;
    let shape: Vec<usize> = shape_text
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format_err(format!("bad shape {shape_text}")))
        })
        .collect::<Result<_, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format_err("shape overflows"))?;
    let data = &bytes[start + header_len..];
    let (dtype, width) = match descr {
        "<f4" => (ElementType::F32, 4),
        "<f8" => (ElementType::F64, 8),
        "|u1" | "<u1" | "u1" => (ElementType::U8, 1),
        "|i1" | "<i1" | "i1" => (ElementType::I8, 1),
        "<i4" => (ElementType::I32, 4),
        "<i8" => (ElementType::I64, 8),
        "|b1" => (ElementType::Bool, 1),
        other if other.starts_with('>') => {
            return Err(format_err(format!("big-endian data ({other}) is not supported")));
        }
        other => return Err(format_err(format!("element type {other} is not supported"))),
    };
    let expected = n
        .checked_mul(width)
        .ok_or_else(|| format_err("shape overflows"))?;
    if data.len() != expected {
        return Err(format_err(format!(
            "data has {} bytes, shape {shape:?} of {descr} needs {expected}",
            data.len()
        )));
    }
    let arr = |v| ArrayD::from_shape_vec(shape.clone(), v).expect("length checked against the shape");
    macro_rules! le {
        ($t:ty) => {
            data.chunks_exact(width)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk has the element width")))
                .collect::<Vec<$t>>()
        };
    }
    Ok(match dtype {
        ElementType::F32 => Tensor::F32(arr(le!(f32))),
        ElementType::F64 => Tensor::F64(ArrayD::from_shape_vec(shape.clone(), le!(f64)).expect("checked")),
        ElementType::U8 => Tensor::U8(ArrayD::from_shape_vec(shape.clone(), data.to_vec()).expect("checked")),
        ElementType::I8 => Tensor::I8(ArrayD::from_shape_vec(shape.clone(), le!(i8)).expect("checked")),
        ElementType::I32 => Tensor::I32(ArrayD::from_shape_vec(shape.clone(), le!(i32)).expect("checked")),
        ElementType::I64 => Tensor::I64(ArrayD::from_shape_vec(shape.clone(), le!(i64)).expect("checked")),
        ElementType::Bool => Tensor::Bool(
            ArrayD::from_shape_vec(shape.clone(), data.iter().map(|&b| b != 0).collect()).expect("checked"),
        ),
    })
}

/// The text of `key`'s value in the header's Python dict literal (up to the next top-level comma).
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_round_trip(t: &Tensor) {
        let bytes = encode_npy(t);
        let header_end = 10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        assert_eq!(header_end % 64, 0, "header padded to 64 bytes");
        assert_eq!(&decode_npy(&bytes).unwrap(), t);
    }

    #[test]
    fn every_element_type_round_trips() {
        let shape = vec![2, 3];
        check_round_trip(&Tensor::F32(
            ArrayD::from_shape_vec(shape.clone(), vec![0.5, -1.0, 2.0, 3.25, 1e-8, f32::MAX]).unwrap(),
        ));
        check_round_trip(&Tensor::F64(
            ArrayD::from_shape_vec(shape.clone(), vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.0]).unwrap(),
        ));
        check_round_trip(&Tensor::U8(
            ArrayD::from_shape_vec(shape.clone(), vec![0, 1, 2, 200, 254, 255]).unwrap(),
        ));
        check_round_trip(&Tensor::I8(
            ArrayD::from_shape_vec(shape.clone(), vec![-128, -1, 0, 1, 2, 127]).unwrap(),
        ));
        check_round_trip(&Tensor::I32(
            ArrayD::from_shape_vec(shape.clone(), vec![-5, 0, 7, 1 << 30, 3, 4]).unwrap(),
        ));
        check_round_trip(&Tensor::I64(
            ArrayD::from_shape_vec(shape.clone(), vec![-5, 0, 7, 1 << 40, 3, 4]).unwrap(),
        ));
        check_round_trip(&Tensor::Bool(
            ArrayD::from_shape_vec(shape, vec![true, false, true, true, false, false]).unwrap(),
        ));
        check_round_trip(&Tensor::F32(
            ArrayD::from_shape_vec(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
        ));
        check_round_trip(&Tensor::F32(ArrayD::from_shape_vec(vec![0, 3], vec![]).unwrap()));
    }

    #[test]
    fn numpy_written_bytes_are_read() {
        // np.save of np.arange(3, dtype=np.float32).reshape(1, 3): a version 1.0 header.
        let mut bytes = b"\x93NUMPY\x01\x00v\x00".to_vec();
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }".to_owned();
        header.push_str(&" ".repeat(118 - header.len() - 1));
        header.push('\n');
        bytes.extend_from_slice(header.as_bytes());
        for v in [0.0f32, 1.0, 2.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let t = decode_npy(&bytes).unwrap();
        assert_eq!(t.shape(), &[1, 3]);
        assert_eq!(t.to_f64_vec(), vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn unsupported_or_broken_files_say_why() {
        let t = Tensor::F32(ArrayD::from_shape_vec(vec![2], vec![1.0, 2.0]).unwrap());
        let good = encode_npy(&t);
        let e = decode_npy(&good[..good.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("data has 7 bytes"), "{e}");
        let edit = |from: &[u8], to: &[u8]| {
            let at = good.windows(from.len()).position(|w| w == from).unwrap();
            let mut b = good.clone();
            b[at..at + to.len()].copy_from_slice(to);
            b
        };
        let e = decode_npy(&edit(b"False", b"True ")).unwrap_err().to_string();
        assert!(e.contains("Fortran"), "{e}");
        let e = decode_npy(&edit(b"<f4", b">f4")).unwrap_err().to_string();
        assert!(e.contains("big-endian"), "{e}");
        assert!(
            decode_npy(b"PK\x03\x04 a zip file")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_npy(&p, &t).unwrap();
        assert_eq!(read_npy(&p).unwrap(), t);
        std::fs::write(&p, b"junk").unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
    }
}
