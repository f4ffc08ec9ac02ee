//! Raising a model's default-domain opset to 13, the first with per-axis Quantize/DequantizeLinear.
//!
//! Between opsets 11 and 13 a few operators changed how they take arguments: `Squeeze`,
//! `Unsqueeze`, `Split` and `ReduceSum` moved their `axes`/`split` attribute to an input, `Dropout`
//! moved `ratio` to an input, and `Softmax`, `LogSoftmax` and `Hardmax` stopped flattening their
//! input to 2-D. Those nodes are rewritten so the model computes the same thing at opset 13; the
//! softmax family becomes `Flatten → op(axis=-1) → Reshape` unless the declared rank shows that the
//! old and the new meaning agree. Models below opset 11 are not upgraded.

use std::collections::HashMap;

use crate::builder::attr_int;
use crate::error::OnnxError;
use crate::graph::is_default_domain;
use crate::proto::{GraphProto, ModelProto, NodeProto, TensorProto, type_proto};

/// The opset that per-axis quantization needs.
pub const PER_AXIS_OPSET: i64 = 13;

/// The version of the default ONNX domain the model imports.
pub fn default_opset(model: &ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| is_default_domain(&o.domain))
        .map(|o| o.version)
}

/// Upgrades the default-domain opset from 11 or 12 to 13; a model already at 13 or above is left
/// alone. Returns one line per rewritten node kind.
pub fn upgrade_to_13(model: &mut ModelProto) -> Result<Vec<String>, OnnxError> {
    let from = default_opset(model).ok_or_else(|| OnnxError::NotOnnx {
        path: None,
        reason: "no default-domain opset import".into(),
    })?;
    if from >= PER_AXIS_OPSET {
        return Ok(Vec::new());
    }
    if from < 11 {
        return Err(OnnxError::InvalidGraph(format!(
            "opset {from} cannot be upgraded automatically (11 or newer can)"
        )));
    }
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::InvalidGraph("the model has no graph".into()))?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut counter = 0usize;
    upgrade_graph(graph, &mut counts, &mut counter);
    for o in &mut model.opset_import {
        if is_default_domain(&o.domain) {
            o.version = PER_AXIS_OPSET;
        }
    }
    model.ir_version = model.ir_version.max(7);
    let mut notes: Vec<String> = counts
        .into_iter()
        .map(|(op, n)| format!("{n} {op} node(s) rewritten for opset 13"))
        .collect();
    notes.sort();
    Ok(notes)
}

fn declared_rank(graph: &GraphProto, name: &str) -> Option<usize> {
    graph
        .input
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.output)
        .find(|v| v.name == name)
        .and_then(|v| match v.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => t.shape.as_ref().map(|s| s.dim.len()),
            _ => None,
        })
}

fn take_attr(node: &mut NodeProto, name: &str) -> Option<crate::proto::AttributeProto> {
    let pos = node.attribute.iter().position(|a| a.name == name)?;
    Some(node.attribute.remove(pos))
}

fn upgrade_graph(graph: &mut GraphProto, counts: &mut HashMap<String, usize>, counter: &mut usize) {
    let nodes = std::mem::take(&mut graph.node);
    let mut out = Vec::with_capacity(nodes.len());
    let mut new_inits = Vec::new();
    for mut node in nodes {
        for a in &mut node.attribute {
            for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                upgrade_graph(g, counts, counter);
            }
        }
        if !is_default_domain(&node.domain) {
            out.push(node);
            continue;
        }
        let mut fresh = |base: &str| {
            *counter += 1;
            format!("{base}__opset13_{counter}")
        };
        let op = node.op_type.clone();
        match op.as_str() {
            "Squeeze" | "Unsqueeze" | "ReduceSum" | "Split" => {
                let attr = if op == "Split" { "split" } else { "axes" };
                if let Some(a) = take_attr(&mut node, attr) {
                    let name = fresh(&format!("{}_{attr}", node.name));
                    new_inits.push(TensorProto::from_values(
                        name.clone(),
                        &[a.ints.len() as i64],
                        &a.ints,
                    ));
                    if node.input.is_empty() {
                        node.input.push(String::new());
                    }
                    node.input.truncate(1);
                    node.input.push(name);
                    *counts.entry(op.clone()).or_default() += 1;
                }
                out.push(node);
            }
            "Dropout" => {
                if take_attr(&mut node, "ratio").is_some() {
                    *counts.entry(op.clone()).or_default() += 1;
                }
                out.push(node);
            }
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = take_attr(&mut node, "axis").map_or(1, |a| a.i);
                let rank = node.input.first().and_then(|x| declared_rank(graph, x));
                let last = axis == -1 || rank.is_some_and(|r| axis == r as i64 - 1);
                if last {
                    node.attribute.push(attr_int("axis", -1));
                    out.push(node);
                    continue;
                }
                *counts.entry(op.clone()).or_default() += 1;
                let x = node.input[0].clone();
                let y = node.output[0].clone();
                let shape = fresh(&format!("{x}_shape"));
                let flat = fresh(&format!("{x}_2d"));
                let soft = fresh(&format!("{y}_2d"));
                let mk = |op: &str, name: String, inputs: Vec<String>, output: String, attrs| NodeProto {
                    op_type: op.into(),
                    name,
                    input: inputs,
                    output: vec![output],
                    attribute: attrs,
                    ..Default::default()
                };
                out.push(mk(
                    "Shape",
                    fresh("shape"),
                    vec![x.clone()],
                    shape.clone(),
                    vec![],
                ));
                out.push(mk(
                    "Flatten",
                    fresh("flatten"),
                    vec![x],
                    flat.clone(),
                    vec![attr_int("axis", axis)],
                ));
                node.input[0] = flat;
                node.output[0] = soft.clone();
                node.attribute.push(attr_int("axis", -1));
                out.push(node);
                out.push(mk("Reshape", fresh("reshape"), vec![soft, shape], y, vec![]));
            }
            _ => out.push(node),
        }
    }
    graph.node = out;
    graph.initializer.extend(new_inits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, GraphBuilder, attr_ints};
    use crate::proto::DataType;

    #[test]
    fn attribute_arguments_become_inputs_and_softmax_keeps_its_meaning() {
        let mut b = GraphBuilder::new("g");
        b.opset("", 11);
        let x = b.input(
            "x",
            DataType::Float,
            &[Dim::Fixed(2), Dim::Fixed(3), Dim::Fixed(4)],
        );
        let u = b.node("Unsqueeze", "u", &[&x], vec![attr_ints("axes", &[0])]);
        let s = b.node("Squeeze", "s", &[&u], vec![attr_ints("axes", &[0])]);
        let sm = b.node("Softmax", "sm", &[&s], vec![]);
        b.output(
            &sm,
            DataType::Float,
            &[Dim::Fixed(2), Dim::Fixed(3), Dim::Fixed(4)],
        );
        let mut m = b.finish("");
        let notes = upgrade_to_13(&mut m).unwrap();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert_eq!(default_opset(&m), Some(13));
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            ["Unsqueeze", "Squeeze", "Shape", "Flatten", "Softmax", "Reshape"]
        );
        assert_eq!(g.node[0].input.len(), 2);
        assert!(g.node[0].attribute.is_empty());
        assert_eq!(g.node.last().unwrap().output[0], "sm");
        crate::io::check_model(&m).unwrap();
    }

    #[test]
    fn old_opsets_are_refused_and_new_ones_left_alone() {
        let mut b = GraphBuilder::new("g");
        b.opset("", 9);
        let x = b.input("x", DataType::Float, &[Dim::Fixed(2)]);
        let r = b.node("Relu", "r", &[&x], vec![]);
        b.output(&r, DataType::Float, &[Dim::Fixed(2)]);
        let mut m = b.finish("");
        assert!(upgrade_to_13(&mut m).is_err());
        m.opset_import[0].version = 17;
        assert!(upgrade_to_13(&mut m).unwrap().is_empty());
    }
}
