//! Pre-processing before quantization: refuse already-quantized models, run the graph optimizer
//! (Constant nodes to initializers, constant folding, BatchNorm and bias folding), and raise the
//! opset to 13 when per-channel weights need per-axis `DequantizeLinear`.

use onnx::ModelProto;
use onnx::optim::{Optimizer, Report};

use crate::error::QuantError;

/// What preparation did.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// The optimizer's report, when it ran.
    pub optimize: Option<Report>,
    /// Other changes (opset upgrade).
    pub notes: Vec<String>,
}

/// Fails with [`QuantError::AlreadyQuantized`] if the model carries any quantization.
pub fn check_float_model(model: &ModelProto) -> Result<(), QuantError> {
    let summary = onnx::inspect::summarize(model);
    match summary.quantization.format {
        "none" => Ok(()),
        f => Err(QuantError::AlreadyQuantized { format: f.to_owned() }),
    }
}

/// Prepares `model` in place for quantization. `per_axis` asks for opset 13.
pub fn prepare(
    model: &mut ModelProto,
    optimize: bool,
    per_axis: bool,
    max_steps: Option<usize>,
) -> Result<Prepared, QuantError> {
    check_float_model(model)?;
    let mut out = Prepared::default();
    if optimize {
        out.optimize = Some(Optimizer::standard().with_max_steps(max_steps).run(model)?);
    }
    let opset = onnx::opset::default_opset(model).unwrap_or(0);
    if opset < 10 {
        return Err(QuantError::Unsupported(format!(
            "the model imports opset {opset}; quantization needs opset 10 or newer (QuantizeLinear)"
        )));
    }
    if per_axis && opset < onnx::opset::PER_AXIS_OPSET {
        let notes = onnx::opset::upgrade_to_13(model).map_err(|e| {
            QuantError::Unsupported(format!(
                "per-channel weights need opset 13 and the model's opset {opset} could not be upgraded ({e}); \
                 quantize per tensor instead"
            ))
        })?;
        out.notes
            .push(format!("opset {opset} upgraded to 13 for per-channel weights"));
        out.notes.extend(notes);
    }
    Ok(out)
}
