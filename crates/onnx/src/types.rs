//! Element-type inference: which values of a graph are float tensors.
//!
//! Quantization needs to know which activations are floats (exported graphs also compute integer
//! shapes with `Add`/`Mul`); it does not need shapes. Types come from declared inputs, outputs,
//! `value_info`, constants, and a rule per operator for the rest.

use std::collections::HashMap;

use crate::graph::{attr_i, attribute, constant_node_value, is_default_domain};
use crate::proto::{DataType, GraphProto, ValueInfoProto, type_proto};

/// The element type of every value whose type is declared or follows from an operator rule.
pub fn infer_elem_types(graph: &GraphProto) -> HashMap<String, DataType> {
    let mut types: HashMap<String, DataType> = HashMap::new();
    let declared = graph.input.iter().chain(&graph.output).chain(&graph.value_info);
    for v in declared {
        if let Some(t) = declared_type(v) {
            types.insert(v.name.clone(), t);
        }
    }
    for t in &graph.initializer {
        if let Some(d) = t.dtype() {
            types.insert(t.name.clone(), d);
        }
    }
    for node in &graph.node {
        let input = |i: usize| node.input.get(i).and_then(|n| types.get(n)).copied();
        let first_known = || node.input.iter().find_map(|n| types.get(n)).copied();
        let default_domain = is_default_domain(&node.domain);
        let outs: Vec<Option<DataType>> = match node.op_type.as_str() {
            _ if !default_domain => vec![None; node.output.len()],
            "Constant" => vec![constant_node_value(node).and_then(|t| t.dtype())],
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => vec![Some(DataType::Int64)],
            "Cast" => vec![
                i32::try_from(attr_i(node, "to", 0))
                    .ok()
                    .and_then(DataType::from_raw),
            ],
            "CastLike" => vec![input(1)],
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or"
            | "Xor" | "IsNaN" | "IsInf" => vec![Some(DataType::Bool)],
            "QuantizeLinear" => vec![input(2).or(Some(DataType::Uint8))],
            "DequantizeLinear" => vec![Some(DataType::Float)],
            "DynamicQuantizeLinear" => vec![
                Some(DataType::Uint8),
                Some(DataType::Float),
                Some(DataType::Uint8),
            ],
            "MatMulInteger" | "ConvInteger" => vec![Some(DataType::Int32)],
            "ConstantOfShape" => vec![
                attribute(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .and_then(|t| t.dtype())
                    .or(Some(DataType::Float)),
            ],
            "Where" => vec![input(1).or(input(2))],
            "TopK" => vec![input(0), Some(DataType::Int64)],
            "MaxPool" => vec![input(0), Some(DataType::Int64)],
            "Dropout" => vec![input(0), Some(DataType::Bool)],
            "RandomNormal" | "RandomUniform" | "EyeLike" => vec![
                i32::try_from(attr_i(node, "dtype", 1))
                    .ok()
                    .and_then(DataType::from_raw),
            ],
            "If" | "Loop" | "Scan" => vec![None; node.output.len()],
            "Split" => vec![first_known(); node.output.len()],
            "BatchNormalization" | "LayerNormalization" => vec![input(0); node.output.len()],
            _ => vec![first_known(); node.output.len()],
        };
        for (name, t) in node.output.iter().zip(outs) {
            if let Some(t) = t
                && !name.is_empty()
            {
                types.entry(name.clone()).or_insert(t);
            }
        }
    }
    types
}

fn declared_type(v: &ValueInfoProto) -> Option<DataType> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => {
            DataType::from_raw(t.elem_type).filter(|d| *d != DataType::Undefined)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, GraphBuilder, attr_int};
    use crate::proto::TensorProto;

    #[test]
    fn shape_arithmetic_is_integer_and_activations_are_float() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &[Dim::Fixed(1), Dim::Fixed(4)]);
        let s = b.node("Shape", "s", &[&x], vec![]);
        let two = b.initializer(TensorProto::from_values("two", &[], &[2i64]));
        let m = b.node("Mul", "m", &[&s, &two], vec![]);
        let r = b.node("Relu", "r", &[&x], vec![]);
        let c = b.node("Cast", "c", &[&m], vec![attr_int("to", 1)]);
        b.output(&r, DataType::Float, &[Dim::Fixed(1), Dim::Fixed(4)]);
        b.output(&c, DataType::Float, &[Dim::Fixed(2)]);
        let model = b.finish("");
        let t = infer_elem_types(model.graph.as_ref().unwrap());
        assert_eq!(t["m"], DataType::Int64);
        assert_eq!(t["r"], DataType::Float);
        assert_eq!(t["c"], DataType::Float);
    }
}
