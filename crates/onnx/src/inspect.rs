//! The model summary behind `edgemlops model inspect`: interface, opsets, operators, parameters,
//! and whether (and how) the model is quantized.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::proto::tensor_shape_proto::dimension;
use crate::proto::{
    DataType, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto, type_proto,
};
use crate::tensor::dtype_name;
use crate::walk;

/// Everything `inspect` reports about a model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    /// IR version of the file.
    pub ir_version: i64,
    /// Tool that wrote the model.
    pub producer: Producer,
    /// Graph name.
    pub graph_name: String,
    /// Imported operator sets.
    pub opsets: Vec<Opset>,
    /// Graph inputs that are not initializers (what a caller feeds).
    pub inputs: Vec<ValueSummary>,
    /// Graph outputs.
    pub outputs: Vec<ValueSummary>,
    /// Nodes in the graph, subgraphs included.
    pub node_count: usize,
    /// Node count per operator (`domain.Op` outside the default domain).
    pub op_histogram: BTreeMap<String, usize>,
    /// Stored tensors: initializers and Constant-node values.
    pub parameters: Parameters,
    /// The quantization the graph carries.
    pub quantization: Quantization,
    /// `metadata_props` of the model.
    pub metadata: BTreeMap<String, String>,
}

/// Producer name and version.
#[derive(Clone, Debug, Serialize)]
pub struct Producer {
    /// `producer_name`.
    pub name: String,
    /// `producer_version`.
    pub version: String,
}

/// One imported operator set.
#[derive(Clone, Debug, Serialize)]
pub struct Opset {
    /// Domain (`ai.onnx` for the default one).
    pub domain: String,
    /// Version.
    pub version: i64,
}

/// A graph input or output.
#[derive(Clone, Debug, Serialize)]
pub struct ValueSummary {
    /// Value name.
    pub name: String,
    /// Element type (`float32`, `uint8`, ...) or the kind of non-tensor type.
    pub dtype: String,
    /// Dimensions: numbers, names of symbolic dimensions, or `null` when unknown; `null` shape when unranked.
    pub shape: Option<Vec<ShapeDim>>,
}

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ShapeDim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size.
    Symbolic(String),
    /// Unknown.
    Unknown(Option<()>),
}

impl std::fmt::Display for ShapeDim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(v) => write!(f, "{v}"),
            Self::Symbolic(s) => f.write_str(s),
            Self::Unknown(_) => f.write_str("?"),
        }
    }
}

/// Parameter statistics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Parameters {
    /// Total elements.
    pub count: u64,
    /// Total payload bytes.
    pub bytes: u64,
    /// Tensors stored as initializers.
    pub initializers: usize,
    /// Tensors stored as Constant-node values.
    pub constants: usize,
    /// Per element type.
    pub by_dtype: BTreeMap<String, DtypeStats>,
}

/// Parameter statistics for one element type.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DtypeStats {
    /// Tensors.
    pub tensors: usize,
    /// Elements.
    pub count: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// How the model is quantized.
#[derive(Clone, Debug, Serialize)]
pub struct Quantization {
    /// `none`, `qdq`, `qoperator`, `dynamic`, or `mixed`.
    pub format: &'static str,
    /// Element type of quantized activations in QDQ models (`int8`/`uint8`), if any.
    pub activation_dtype: Option<String>,
    /// Element types of stored integer weights feeding quantized operators.
    pub weight_dtypes: Vec<String>,
    /// Quantization-related nodes (Q/DQ pairs, QLinear*, *Integer, DynamicQuantize*).
    pub quantized_nodes: usize,
}

const QOPERATOR_OPS: &[&str] = &["QGemm", "QAttention", "QEmbedLayerNormalization"];
const DYNAMIC_OPS: &[&str] = &[
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
];

fn is_qoperator(op: &str) -> bool {
    op.starts_with("QLinear") || QOPERATOR_OPS.contains(&op)
}

/// Summarizes a model.
pub fn summarize(model: &ModelProto) -> ModelSummary {
    let empty = GraphProto::default();
    let graph = model.graph.as_ref().unwrap_or(&empty);
    let init_names: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();

    let mut nodes: Vec<&NodeProto> = Vec::new();
    let mut params = Parameters::default();
    walk::for_each_graph(graph, &mut |g| {
        nodes.extend(g.node.iter());
        for t in &g.initializer {
            add_param(&mut params, t);
            params.initializers += 1;
        }
        for s in &g.sparse_initializer {
            if let Some(values) = &s.values {
                add_param(&mut params, values);
                params.initializers += 1;
            }
        }
        for n in g
            .node
            .iter()
            .filter(|n| n.op_type == "Constant" && n.domain.is_empty())
        {
            for a in &n.attribute {
                if let Some(t) = &a.t {
                    add_param(&mut params, t);
                    params.constants += 1;
                }
            }
        }
    });

    let mut op_histogram = BTreeMap::new();
    for n in &nodes {
        let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}.{}", n.domain, n.op_type)
        };
        *op_histogram.entry(key).or_insert(0) += 1;
    }

    ModelSummary {
        ir_version: model.ir_version,
        producer: Producer {
            name: model.producer_name.clone(),
            version: model.producer_version.clone(),
        },
        graph_name: graph.name.clone(),
        opsets: model
            .opset_import
            .iter()
            .map(|o| Opset {
                domain: if o.domain.is_empty() {
                    "ai.onnx".into()
                } else {
                    o.domain.clone()
                },
                version: o.version,
            })
            .collect(),
        inputs: graph
            .input
            .iter()
            .filter(|v| !init_names.contains(v.name.as_str()))
            .map(value_summary)
            .collect(),
        outputs: graph.output.iter().map(value_summary).collect(),
        node_count: nodes.len(),
        op_histogram,
        parameters: params,
        quantization: quantization(graph, &nodes),
        metadata: model
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
    }
}

fn add_param(params: &mut Parameters, t: &TensorProto) {
    let count = t.num_elements().unwrap_or(0) as u64;
    let bytes = t.payload_bytes() as u64;
    params.count += count;
    params.bytes += bytes;
    let e = params.by_dtype.entry(dtype_name(t.data_type)).or_default();
    e.tensors += 1;
    e.count += count;
    e.bytes += bytes;
}

fn value_summary(v: &ValueInfoProto) -> ValueSummary {
    let (dtype, shape) = describe_type(v.r#type.as_ref());
    ValueSummary {
        name: v.name.clone(),
        dtype,
        shape,
    }
}

fn describe_type(t: Option<&TypeProto>) -> (String, Option<Vec<ShapeDim>>) {
    match t.and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(tt)) => {
            let shape = tt.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(dimension::Value::DimValue(v)) => ShapeDim::Fixed(*v),
                        Some(dimension::Value::DimParam(p)) if !p.is_empty() => ShapeDim::Symbolic(p.clone()),
                        _ => ShapeDim::Unknown(None),
                    })
                    .collect()
            });
            (dtype_name(tt.elem_type), shape)
        }
        Some(type_proto::Value::SequenceType(_)) => ("sequence".into(), None),
        Some(type_proto::Value::MapType(_)) => ("map".into(), None),
        Some(type_proto::Value::OptionalType(_)) => ("optional".into(), None),
        Some(type_proto::Value::SparseTensorType(st)) => {
            (format!("sparse {}", dtype_name(st.elem_type)), None)
        }
        Some(type_proto::Value::OpaqueType(_)) => ("opaque".into(), None),
        None => ("unknown".into(), None),
    }
}

fn quantization(graph: &GraphProto, nodes: &[&NodeProto]) -> Quantization {
    let qdq = nodes
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"))
        .count();
    let qop = nodes.iter().filter(|n| is_qoperator(&n.op_type)).count();
    let dynamic = nodes
        .iter()
        .filter(|n| DYNAMIC_OPS.contains(&n.op_type.as_str()))
        .count();
    let format = match (qdq > 0, qop > 0, dynamic > 0) {
        (false, false, false) => "none",
        (true, false, false) => "qdq",
        (false, true, false) => "qoperator",
        (false, false, true) => "dynamic",
        _ => "mixed",
    };
    // Activation type: the zero point of a QuantizeLinear fed by computation (not a weight).
    let initializer = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let activation_dtype = nodes
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear" && initializer(&n.input[0]).is_none())
        .filter_map(|n| n.input.get(2).and_then(|zp| initializer(zp)))
        .map(|zp| dtype_name(zp.data_type))
        .next();
    let mut weight_dtypes: Vec<String> = graph
        .initializer
        .iter()
        .filter(|t| {
            t.dtype().is_some_and(|d| {
                matches!(
                    d,
                    DataType::Int8 | DataType::Uint8 | DataType::Int4 | DataType::Uint4
                )
            }) && t.num_elements().unwrap_or(0) > 1
        })
        .map(|t| dtype_name(t.data_type))
        .collect();
    weight_dtypes.sort();
    weight_dtypes.dedup();
    Quantization {
        format,
        activation_dtype,
        weight_dtypes,
        quantized_nodes: qdq + qop + dynamic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, GraphBuilder};

    #[test]
    fn symbolic_dims_and_constant_weights_are_reported() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &["batch".into(), Dim::Fixed(3)]);
        let c = b.node(
            "Constant",
            "w",
            &[],
            vec![crate::builder::attr_tensor(
                "value",
                TensorProto::from_values("w", &[3], &[1.0f32, 2.0, 3.0]),
            )],
        );
        let y = b.node("Mul", "mul", &[&x, &c], vec![]);
        b.output(&y, DataType::Float, &["batch".into(), Dim::Fixed(3)]);
        let s = summarize(&b.finish(""));
        assert_eq!(
            s.inputs[0].shape,
            Some(vec![ShapeDim::Symbolic("batch".into()), ShapeDim::Fixed(3)])
        );
        assert_eq!(
            (s.parameters.count, s.parameters.constants, s.parameters.bytes),
            (3, 1, 12)
        );
        assert_eq!(s.quantization.format, "none");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["inputs"][0]["shape"], serde_json::json!(["batch", 3]));
        assert_eq!(json["op_histogram"]["Mul"], 1);
    }

    #[test]
    fn qdq_models_report_their_activation_type() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &[Dim::Fixed(4)]);
        let s = b.initializer(TensorProto::from_values("s", &[], &[0.1f32]));
        let zp = b.initializer(TensorProto::from_values("zp", &[], &[128u8]));
        let q = b.node("QuantizeLinear", "q", &[&x, &s, &zp], vec![]);
        let dq = b.node("DequantizeLinear", "dq", &[&q, &s, &zp], vec![]);
        b.output(&dq, DataType::Float, &[Dim::Fixed(4)]);
        let summary = summarize(&b.finish(""));
        assert_eq!(summary.quantization.format, "qdq");
        assert_eq!(summary.quantization.activation_dtype.as_deref(), Some("uint8"));
        assert_eq!(summary.quantization.quantized_nodes, 2);
    }
}
