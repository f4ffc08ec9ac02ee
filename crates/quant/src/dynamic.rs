//! Dynamic quantization: int8 weights stored ahead of time, activations quantized at run time by
//! `DynamicQuantizeLinear` (uint8, per batch), as ONNX Runtime's `quantize_dynamic` does it.
//!
//! `MatMul` and `Gemm` become `DynamicQuantizeLinear → MatMulInteger → Cast → Mul` (+ `Add` for a
//! bias), the pattern ONNX Runtime fuses into `DynamicQuantizeMatMul`; `Conv` becomes
//! `ConvInteger → Cast → Mul → Add`. The scale product `x_scale × w_scale` is one small `Mul`, so
//! the large tensor is scaled once. No calibration data is needed.

use std::collections::{BTreeMap, HashMap};

use onnx::builder::attr_int;
use onnx::graph::{GraphIndex, attr_i, attribute, is_default_domain, tensor_as_f32};
use onnx::opset::default_opset;
use onnx::patch::Patch;
use onnx::proto::{DataType, ModelProto, NodeProto, TensorProto};
use onnx::types::infer_elem_types;

use crate::error::QuantError;
use crate::params::{QParams, QType, quantize_along, ranges_along};
use crate::qdq::{excluded_by, node_label};

/// Settings of dynamic quantization.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DynamicConfig {
    /// One weight scale per output channel.
    pub per_channel: bool,
    /// 7-bit weights.
    pub reduce_range: bool,
    /// Node names, output names or operator types to keep in float.
    pub exclude: Vec<String>,
}

/// What dynamic quantization did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DynamicReport {
    /// Quantized nodes per operator type.
    pub quantized_ops: BTreeMap<String, usize>,
    /// Nodes left in float, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Operators dynamic quantization rewrites.
pub const DYNAMIC_OPS: [&str; 3] = ["Conv", "MatMul", "Gemm"];

struct Emit<'a, 'g> {
    fresh: onnx::graph::FreshNames<'a, 'g>,
    patch: Patch,
}

impl Emit<'_, '_> {
    fn init<T: onnx::tensor::Element>(&mut self, base: &str, dims: &[i64], values: &[T]) -> String {
        let name = self.fresh.name(base);
        self.patch
            .add_initializers
            .push(TensorProto::from_values(name.clone(), dims, values));
        name
    }

    fn node(
        &mut self,
        op: &str,
        base: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attrs: Vec<onnx::proto::AttributeProto>,
    ) {
        let name = self.fresh.name(base);
        self.patch.add_nodes.push(NodeProto {
            op_type: op.into(),
            name,
            input: inputs,
            output: outputs,
            attribute: attrs,
            ..Default::default()
        });
    }
}

/// Quantizes the Conv, MatMul and Gemm nodes with constant weights.
pub fn quantize_dynamic(
    model: &ModelProto,
    cfg: &DynamicConfig,
) -> Result<(ModelProto, DynamicReport), QuantError> {
    let opset = default_opset(model).unwrap_or(0);
    if opset < 11 {
        return Err(QuantError::Unsupported(format!(
            "dynamic quantization needs opset 11 (DynamicQuantizeLinear); the model has opset {opset}"
        )));
    }
    let mut model = model.clone();
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| QuantError::Unsupported("no graph".into()))?;
    let ix = GraphIndex::new(g);
    let types = infer_elem_types(g);
    let mut e = Emit {
        fresh: ix.fresh(),
        patch: Patch::default(),
    };
    let mut report = DynamicReport::default();
    let mut dq_inputs: HashMap<String, (String, String, String)> = HashMap::new();
    let is_float_act = |n: &str| types.get(n) == Some(&DataType::Float) && !ix.is_constant(n);
    let float_const = |n: &str| ix.constant(n).filter(|t| t.dtype() == Some(DataType::Float));

    for (i, n) in g.node.iter().enumerate() {
        if !DYNAMIC_OPS.contains(&n.op_type.as_str()) || !is_default_domain(&n.domain) {
            continue;
        }
        if excluded_by(n, &cfg.exclude) {
            report.skipped.push((node_label(n), "excluded".into()));
            continue;
        }
        let skip = |why: &str| (node_label(n), why.to_owned());
        let x = &n.input[0];
        if !is_float_act(x) {
            report.skipped.push(skip("input is not a float activation"));
            continue;
        }
        let Some(w) = n.input.get(1).and_then(|w| float_const(w)) else {
            report.skipped.push(skip("weights are not a float constant"));
            continue;
        };
        let bias_name = n.input.get(2).filter(|b| !b.is_empty());
        let bias = match bias_name {
            Some(b) => match float_const(b).and_then(tensor_as_f32) {
                Some(v) => Some(v),
                None => {
                    report.skipped.push(skip("bias is not a float constant"));
                    continue;
                }
            },
            None => None,
        };
        // Weights in the layout the integer op reads, and the per-channel axis.
        let (dims, values, axis) = match n.op_type.as_str() {
            "Conv" if w.dims.len() >= 3 => (w.dims.clone(), w.values::<f32>()?, 0usize),
            "MatMul" if w.dims.len() == 2 => (w.dims.clone(), w.values::<f32>()?, 1),
            "Gemm" if w.dims.len() == 2 => {
                let gemm_ok = attr_i(n, "transA", 0) == 0
                    && attribute(n, "alpha").is_none_or(|a| a.f == 1.0)
                    && attribute(n, "beta").is_none_or(|a| a.f == 1.0);
                if !gemm_ok {
                    report.skipped.push(skip("transA, alpha or beta not supported"));
                    continue;
                }
                let v = w.values::<f32>()?;
                if attr_i(n, "transB", 0) != 0 {
                    let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
                    let mut t = vec![0f32; v.len()];
                    for r in 0..rows {
                        for c in 0..cols {
                            t[c * rows + r] = v[r * cols + c];
                        }
                    }
                    (vec![w.dims[1], w.dims[0]], t, 1)
                } else {
                    (w.dims.clone(), v, 1)
                }
            }
            _ => {
                report.skipped.push(skip("unsupported weight shape"));
                continue;
            }
        };
        let channels = dims[axis] as usize;
        if bias.as_ref().is_some_and(|b| b.len() != channels) {
            report
                .skipped
                .push(skip("bias length does not match the output channels"));
            continue;
        }
        let udims: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
        let per_axis = (cfg.per_channel && channels > 1).then_some(axis);
        let wp: Vec<QParams> = ranges_along(&values, &udims, per_axis)
            .into_iter()
            .map(|(lo, hi)| QParams::from_range(lo, hi, QType::S8, true, cfg.reduce_range))
            .collect();
        let ints: Vec<i8> = quantize_along(&values, &udims, per_axis, &wp)
            .into_iter()
            .map(|q| q as i8)
            .collect();
        let base = node_label(n);
        let wq = e.init(&format!("{}_quantized", n.input[1]), &dims, &ints);
        let scales: Vec<f32> = wp.iter().map(|p| p.scale).collect();
        // Per-channel scales broadcast over the output: [C, 1, 1] for a 2-D Conv, [N] for MatMul.
        let scale_dims: Vec<i64> = match (scales.len(), n.op_type.as_str()) {
            (1, _) => vec![],
            (c, "Conv") => std::iter::once(c as i64)
                .chain(std::iter::repeat_n(1, dims.len() - 2))
                .collect(),
            (c, _) => vec![c as i64],
        };
        let ws = e.init(&format!("{}_scale", n.input[1]), &scale_dims, &scales);

        let (xq, xs, xzp) = match dq_inputs.get(x) {
            Some(v) => v.clone(),
            None => {
                let outs = (
                    e.fresh.name(&format!("{x}_quantized")),
                    e.fresh.name(&format!("{x}_scale")),
                    e.fresh.name(&format!("{x}_zero_point")),
                );
                e.node(
                    "DynamicQuantizeLinear",
                    &format!("{x}_DynamicQuantizeLinear"),
                    vec![x.clone()],
                    vec![outs.0.clone(), outs.1.clone(), outs.2.clone()],
                    vec![],
                );
                dq_inputs.insert(x.clone(), outs.clone());
                outs
            }
        };
        let int_out = e.fresh.name(&format!("{base}_output_int32"));
        let (op, attrs) = if n.op_type == "Conv" {
            ("ConvInteger", n.attribute.clone())
        } else {
            ("MatMulInteger", vec![])
        };
        e.node(
            op,
            &format!("{base}_quant"),
            vec![xq, wq, xzp],
            vec![int_out.clone()],
            attrs,
        );
        let cast_out = e.fresh.name(&format!("{base}_output_float"));
        e.node(
            "Cast",
            &format!("{base}_cast"),
            vec![int_out],
            vec![cast_out.clone()],
            vec![attr_int("to", DataType::Float as i64)],
        );
        let scale = e.fresh.name(&format!("{base}_scales"));
        e.node(
            "Mul",
            &format!("{base}_scales_mul"),
            vec![xs, ws],
            vec![scale.clone()],
            vec![],
        );
        let y = n.output[0].clone();
        match bias {
            None => e.node(
                "Mul",
                &format!("{base}_output_scale"),
                vec![cast_out, scale],
                vec![y],
                vec![],
            ),
            Some(b) => {
                let scaled = e.fresh.name(&format!("{base}_output_scaled"));
                e.node(
                    "Mul",
                    &format!("{base}_output_scale"),
                    vec![cast_out, scale],
                    vec![scaled.clone()],
                    vec![],
                );
                let b_dims: Vec<i64> = if n.op_type == "Conv" {
                    std::iter::once(b.len() as i64)
                        .chain(std::iter::repeat_n(1, dims.len() - 2))
                        .collect()
                } else {
                    vec![b.len() as i64]
                };
                let b_name = e.init(
                    &format!("{}_broadcast", bias_name.map_or("bias", String::as_str)),
                    &b_dims,
                    &b,
                );
                e.node(
                    "Add",
                    &format!("{base}_bias_add"),
                    vec![scaled, b_name],
                    vec![y],
                    vec![],
                );
            }
        }
        e.patch.remove_nodes.push(i);
        *report.quantized_ops.entry(n.op_type.clone()).or_default() += 1;
    }
    let patch = std::mem::take(&mut e.patch);
    drop(e);
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| QuantError::Unsupported("no graph".into()))?;
    patch.apply(graph)?;
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx::builder::{Dim, GraphBuilder, attr_ints};

    fn model() -> ModelProto {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &["n".into(), 2.into(), 4.into(), 4.into()]);
        let w = b.initializer(TensorProto::from_values(
            "w",
            &[3, 2, 1, 1],
            &[1.0f32, -1.0, 0.5, 0.25, 2.0, 0.0],
        ));
        let cb = b.initializer(TensorProto::from_values("cb", &[3], &[0.1f32, 0.2, 0.3]));
        let c = b.node(
            "Conv",
            "conv",
            &[&x, &w, &cb],
            vec![attr_ints("kernel_shape", &[1, 1])],
        );
        let flat = b.node("Flatten", "flat", &[&c], vec![attr_int("axis", 1)]);
        let fw = b.initializer(TensorProto::from_values("fw", &[5, 48], &vec![0.01f32; 240]));
        let fb = b.initializer(TensorProto::from_values("fb", &[5], &[0.0f32; 5]));
        let y = b.node("Gemm", "fc", &[&flat, &fw, &fb], vec![attr_int("transB", 1)]);
        b.output(&y, DataType::Float, &["n".into(), Dim::Fixed(5)]);
        b.finish("")
    }

    #[test]
    fn conv_and_gemm_become_integer_ops_with_one_scale_product() {
        let cfg = DynamicConfig {
            per_channel: true,
            ..Default::default()
        };
        let (q, report) = quantize_dynamic(&model(), &cfg).unwrap();
        onnx::io::check_model(&q).unwrap();
        assert_eq!(report.quantized_ops.get("Conv"), Some(&1));
        assert_eq!(report.quantized_ops.get("Gemm"), Some(&1));
        let g = q.graph.as_ref().unwrap();
        let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(
            (
                count("DynamicQuantizeLinear"),
                count("ConvInteger"),
                count("MatMulInteger")
            ),
            (2, 1, 1)
        );
        assert_eq!((count("Cast"), count("Add")), (2, 2));
        let ix = GraphIndex::new(g);
        // Conv weight scales broadcast as [C, 1, 1]; Gemm's B was transposed to [K, N], scales [N].
        let conv = g.node.iter().find(|n| n.op_type == "ConvInteger").unwrap();
        let wq = ix.constant(&conv.input[1]).unwrap();
        assert_eq!(wq.values::<i8>().unwrap(), vec![127, -127, 127, 64, 127, 0]);
        assert_eq!(conv.input.len(), 3, "symmetric weights need no zero point");
        let mm = g.node.iter().find(|n| n.op_type == "MatMulInteger").unwrap();
        assert_eq!(ix.constant(&mm.input[1]).unwrap().dims, vec![48, 5]);
        let scales: Vec<&TensorProto> = g
            .initializer
            .iter()
            .filter(|t| t.name.ends_with("_scale") && t.dtype() == Some(DataType::Float))
            .collect();
        assert!(scales.iter().any(|t| t.dims == [3, 1, 1]) && scales.iter().any(|t| t.dims == [5]));
        assert_eq!(
            g.node.last().map(|n| n.output[0].as_str()),
            Some("fc"),
            "output name kept"
        );
    }

    #[test]
    fn old_opsets_and_excluded_nodes() {
        let mut m = model();
        m.opset_import[0].version = 10;
        assert!(quantize_dynamic(&m, &DynamicConfig::default()).is_err());
        let cfg = DynamicConfig {
            exclude: vec!["Conv".into()],
            ..Default::default()
        };
        let (_, r) = quantize_dynamic(&model(), &cfg).unwrap();
        assert_eq!(r.quantized_ops.get("Conv"), None);
        assert!(r.skipped.iter().any(|(n, why)| n == "conv" && why == "excluded"));
    }
}
