//! Visiting every graph, node and tensor of a model, subgraphs and functions included.

use crate::error::OnnxError;
use crate::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// Calls `f` on every tensor stored in the model: initializers, sparse initializers, tensor-valued
/// node attributes (Constant values among them), in subgraphs, functions and training graphs too.
pub fn for_each_tensor_mut(
    model: &mut ModelProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    if let Some(g) = model.graph.as_mut() {
        graph_tensors_mut(g, f)?;
    }
    for func in &mut model.functions {
        for node in &mut func.node {
            node_tensors_mut(node, f)?;
        }
    }
    for info in &mut model.training_info {
        for g in [info.initialization.as_mut(), info.algorithm.as_mut()]
            .into_iter()
            .flatten()
        {
            graph_tensors_mut(g, f)?;
        }
    }
    Ok(())
}

fn graph_tensors_mut(
    g: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    for t in &mut g.initializer {
        f(t)?;
    }
    for s in &mut g.sparse_initializer {
        for t in [s.values.as_mut(), s.indices.as_mut()].into_iter().flatten() {
            f(t)?;
        }
    }
    for node in &mut g.node {
        node_tensors_mut(node, f)?;
    }
    Ok(())
}

fn node_tensors_mut(
    node: &mut NodeProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    for a in &mut node.attribute {
        attribute_tensors_mut(a, f)?;
    }
    Ok(())
}

fn attribute_tensors_mut(
    a: &mut AttributeProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    if let Some(t) = a.t.as_mut() {
        f(t)?;
    }
    for t in &mut a.tensors {
        f(t)?;
    }
    for s in a.sparse_tensor.iter_mut().chain(a.sparse_tensors.iter_mut()) {
        for t in [s.values.as_mut(), s.indices.as_mut()].into_iter().flatten() {
            f(t)?;
        }
    }
    for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
        graph_tensors_mut(g, f)?;
    }
    Ok(())
}

/// Calls `f` on the main graph and on every subgraph held in node attributes (If/Loop/Scan bodies),
/// depth first, parents before children.
pub fn for_each_graph<'a>(graph: &'a GraphProto, f: &mut dyn FnMut(&'a GraphProto)) {
    f(graph);
    for node in &graph.node {
        for a in &node.attribute {
            for g in a.g.iter().chain(a.graphs.iter()) {
                for_each_graph(g, f);
            }
        }
    }
}
