//! Reading and writing ONNX model files.
//!
//! Reading decodes the protobuf, checks that it is a model (a graph, opset imports, every value a
//! node reads is defined), and inlines tensors stored as external data, refusing locations that
//! escape the model's directory. Writing is atomic (temporary file in the target directory, then
//! rename), so a crash never leaves a half-written model under the final name.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use crate::error::OnnxError;
use crate::proto::{DataLocation, GraphProto, ModelProto, TensorProto};
use crate::walk;

/// Protobuf messages cannot exceed 2 GiB.
const PROTOBUF_LIMIT: usize = i32::MAX as usize;

/// Reads a model file, inlining external data that sits next to it.
pub fn read_model(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = fs::read(path).map_err(|e| OnnxError::io(path, e))?;
    let mut model = decode_unchecked(&bytes).map_err(|reason| OnnxError::NotOnnx {
        path: Some(path.to_owned()),
        reason,
    })?;
    check_model(&model).map_err(|e| match e {
        OnnxError::NotOnnx { reason, .. } => OnnxError::NotOnnx {
            path: Some(path.to_owned()),
            reason,
        },
        other => other,
    })?;
    let base = path.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    walk::for_each_tensor_mut(&mut model, &mut |t| resolve_external(t, &base))?;
    Ok(model)
}

/// Decodes a model from bytes; external data is refused (there is no directory to resolve it in).
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    let mut model = decode_unchecked(bytes).map_err(|reason| OnnxError::NotOnnx { path: None, reason })?;
    check_model(&model)?;
    walk::for_each_tensor_mut(&mut model, &mut |t| {
        if t.is_external() {
            return Err(OnnxError::ExternalData {
                tensor: t.name.clone(),
                reason: "the model refers to an external data file; load it from its path instead".into(),
            });
        }
        Ok(())
    })?;
    Ok(model)
}

/// Encodes a model to protobuf bytes.
pub fn encode_model(model: &ModelProto) -> Result<Vec<u8>, OnnxError> {
    let len = model.encoded_len();
    if len > PROTOBUF_LIMIT {
        return Err(OnnxError::TooLarge { bytes: len });
    }
    Ok(model.encode_to_vec())
}

/// Writes a model atomically: to a temporary file beside `path`, then renamed over it.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    let bytes = encode_model(model)?;
    write_atomic(path, &bytes)
}

/// Writes bytes to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        OnnxError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(OnnxError::io(path, e));
    }
    Ok(())
}

fn decode_unchecked(bytes: &[u8]) -> Result<ModelProto, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    ModelProto::decode(bytes).map_err(|e| format!("protobuf decoding failed ({e})"))
}

/// Checks that decoded protobuf is a usable model: graph, opsets, and every referenced value defined.
pub fn check_model(model: &ModelProto) -> Result<(), OnnxError> {
    let not_onnx = |reason: &str| OnnxError::NotOnnx {
        path: None,
        reason: reason.to_owned(),
    };
    if model.ir_version <= 0 {
        return Err(not_onnx("no IR version"));
    }
    let graph = model.graph.as_ref().ok_or_else(|| not_onnx("no graph"))?;
    if model.opset_import.is_empty() {
        return Err(not_onnx("no opset imports (the file may be truncated)"));
    }
    check_graph(graph)
}

/// Checks that every value a node or graph output refers to is defined in the graph.
fn check_graph(graph: &GraphProto) -> Result<(), OnnxError> {
    let mut defined: HashSet<&str> = HashSet::new();
    defined.extend(graph.input.iter().map(|v| v.name.as_str()));
    defined.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    defined.extend(
        graph
            .sparse_initializer
            .iter()
            .filter_map(|s| s.values.as_ref())
            .map(|t| t.name.as_str()),
    );
    for node in &graph.node {
        defined.extend(node.output.iter().map(String::as_str));
    }
    for node in &graph.node {
        if node.op_type.is_empty() {
            return Err(OnnxError::InvalidGraph(format!(
                "node '{}' has no operator type",
                node.name
            )));
        }
        for input in &node.input {
            if !input.is_empty() && !defined.contains(input.as_str()) {
                return Err(OnnxError::InvalidGraph(format!(
                    "node '{}' ({}) reads '{input}', which nothing defines",
                    node.name, node.op_type
                )));
            }
        }
    }
    if graph.output.is_empty() {
        return Err(OnnxError::InvalidGraph("the graph has no outputs".into()));
    }
    for output in &graph.output {
        if !defined.contains(output.name.as_str()) {
            return Err(OnnxError::InvalidGraph(format!(
                "graph output '{}' is not produced by any node",
                output.name
            )));
        }
    }
    Ok(())
}

fn resolve_external(t: &mut TensorProto, base: &Path) -> Result<(), OnnxError> {
    if !t.is_external() {
        return Ok(());
    }
    let err = |reason: String| OnnxError::ExternalData {
        tensor: t.name.clone(),
        reason,
    };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for entry in &t.external_data {
        match entry.key.as_str() {
            "location" => location = Some(entry.value.clone()),
            "offset" => {
                offset = entry
                    .value
                    .parse()
                    .map_err(|_| err(format!("bad offset '{}'", entry.value)))?;
            }
            "length" => {
                length = Some(
                    entry
                        .value
                        .parse::<u64>()
                        .map_err(|_| err(format!("bad length '{}'", entry.value)))?,
                );
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| err("no 'location' entry".into()))?;
    let rel = Path::new(&location);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(format!(
            "location '{location}' must be a plain relative path inside the model's directory"
        )));
    }
    let base_real = base
        .canonicalize()
        .map_err(|e| err(format!("{}: {e}", base.display())))?;
    let file = base_real.join(rel);
    let real = file
        .canonicalize()
        .map_err(|e| err(format!("{}: {e}", file.display())))?;
    if !real.starts_with(&base_real) {
        return Err(err(format!(
            "location '{location}' resolves outside the model's directory"
        )));
    }
    let expected = t.dtype().and_then(|d| d.bit_width()).map(|bits| {
        let n = t.num_elements().unwrap_or(0);
        (n * bits).div_ceil(8) as u64
    });
    let length = match (length, expected) {
        (Some(l), Some(e)) if l != e => {
            return Err(err(format!(
                "length {l} does not match the {e} bytes its type and shape need"
            )));
        }
        (Some(l), _) => l,
        (None, Some(e)) => e,
        (None, None) => return Err(err("no 'length' entry for a tensor of unknown size".into())),
    };
    let mut f = fs::File::open(&real).map_err(|e| err(format!("{}: {e}", real.display())))?;
    let file_len = f.metadata().map_err(|e| err(e.to_string()))?.len();
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(err(format!(
            "bytes {offset}..{} lie beyond the end of '{location}' ({file_len} bytes)",
            offset.saturating_add(length)
        )));
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| err(e.to_string()))?;
    let mut data = vec![0u8; usize::try_from(length).map_err(|_| err("length too large".into()))?];
    f.read_exact(&mut data).map_err(|e| err(e.to_string()))?;
    t.raw_data = data;
    t.external_data.clear();
    t.data_location = DataLocation::Default as i32;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, GraphBuilder};
    use crate::proto::{DataType, StringStringEntryProto};

    fn tiny_model() -> ModelProto {
        let mut b = GraphBuilder::new("tiny");
        let x = b.input("x", DataType::Float, &[Dim::Fixed(1), Dim::Fixed(4)]);
        let w = b.initializer(TensorProto::from_values("w", &[4], &[1.0f32, 2.0, 3.0, 4.0]));
        let y = b.node("Mul", "mul", &[&x, &w], vec![]);
        b.output(&y, DataType::Float, &[Dim::Fixed(1), Dim::Fixed(4)]);
        b.finish("test")
    }

    fn externalize(model: &mut ModelProto, location: &str, offset: u64, length: u64) {
        let t = &mut model.graph.as_mut().unwrap().initializer[0];
        t.raw_data.clear();
        t.data_location = DataLocation::External as i32;
        t.external_data = vec![
            StringStringEntryProto {
                key: "location".into(),
                value: location.into(),
            },
            StringStringEntryProto {
                key: "offset".into(),
                value: offset.to_string(),
            },
            StringStringEntryProto {
                key: "length".into(),
                value: length.to_string(),
            },
        ];
    }

    #[test]
    fn write_then_read_gives_the_same_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let model = tiny_model();
        write_model(&model, &path).unwrap();
        assert_eq!(read_model(&path).unwrap(), model);
    }

    #[test]
    fn external_data_is_inlined_from_the_models_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut payload = vec![0u8; 8];
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        fs::write(dir.path().join("weights.bin"), &payload).unwrap();
        let mut model = tiny_model();
        externalize(&mut model, "weights.bin", 8, 16);
        let path = dir.path().join("m.onnx");
        fs::write(&path, model.encode_to_vec()).unwrap();
        let read = read_model(&path).unwrap();
        assert_eq!(read, tiny_model());
    }

    #[test]
    fn external_data_outside_the_models_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("model");
        fs::create_dir(&sub).unwrap();
        fs::write(dir.path().join("secret.bin"), [0u8; 16]).unwrap();
        for location in ["../secret.bin", "/etc/passwd"] {
            let mut model = tiny_model();
            externalize(&mut model, location, 0, 16);
            let path = sub.join("m.onnx");
            fs::write(&path, model.encode_to_vec()).unwrap();
            let e = read_model(&path).unwrap_err().to_string();
            assert!(e.contains("inside the model's directory"), "{location}: {e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.bin"), sub.join("link.bin")).unwrap();
            let mut model = tiny_model();
            externalize(&mut model, "link.bin", 0, 16);
            let path = sub.join("m.onnx");
            fs::write(&path, model.encode_to_vec()).unwrap();
            let e = read_model(&path).unwrap_err().to_string();
            assert!(e.contains("outside the model's directory"), "{e}");
        }
    }

    #[test]
    fn external_data_past_the_end_of_its_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("w.bin"), [0u8; 10]).unwrap();
        let mut model = tiny_model();
        externalize(&mut model, "w.bin", 0, 16);
        let path = dir.path().join("m.onnx");
        fs::write(&path, model.encode_to_vec()).unwrap();
        let e = read_model(&path).unwrap_err().to_string();
        assert!(e.contains("beyond the end"), "{e}");
    }

    #[test]
    fn decoding_bytes_with_external_data_is_refused() {
        let mut model = tiny_model();
        externalize(&mut model, "w.bin", 0, 16);
        let e = decode_model(&model.encode_to_vec()).unwrap_err().to_string();
        assert!(e.contains("external data"), "{e}");
    }

    #[test]
    fn text_and_truncated_files_are_not_models() {
        let e = decode_model(b"rising-pin-zqhzst\n").unwrap_err().to_string();
        assert!(e.starts_with("not an ONNX model"), "{e}");
        let bytes = tiny_model().encode_to_vec();
        for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            let e = decode_model(&bytes[..cut]).unwrap_err().to_string();
            assert!(
                e.contains("not an ONNX model") || e.contains("invalid graph"),
                "cut {cut}: {e}"
            );
        }
        assert!(decode_model(b"").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn a_node_reading_an_undefined_value_is_an_invalid_graph() {
        let mut model = tiny_model();
        model.graph.as_mut().unwrap().node[0].input[1] = "missing".into();
        let e = decode_model(&model.encode_to_vec()).unwrap_err().to_string();
        assert!(e.contains("'missing'"), "{e}");
    }

    #[test]
    fn writes_replace_the_target_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        fs::write(&path, b"old").unwrap();
        write_model(&tiny_model(), &path).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
        assert_eq!(read_model(&path).unwrap(), tiny_model());
    }
}
