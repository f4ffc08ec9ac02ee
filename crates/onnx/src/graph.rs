//! A read-only index over one graph: who produces and who reads each value, which values are
//! constants (initializers or Constant nodes), and fresh names for rewrites.
//!
//! Rewriting passes ([`crate::optim`], the quantizer) look nodes up through this index and describe
//! their change as a [`crate::patch::Patch`]; they never mutate the graph while holding it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::proto::{AttributeProto, DataType, GraphProto, NodeProto, TensorProto};

/// Producers, consumers and constants of a graph.
#[derive(Debug)]
pub struct GraphIndex<'g> {
    graph: &'g GraphProto,
    producer: HashMap<&'g str, (usize, usize)>,
    consumers: HashMap<&'g str, Vec<usize>>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    constant_nodes: HashMap<&'g str, Cow<'g, TensorProto>>,
    graph_inputs: HashSet<&'g str>,
    graph_outputs: HashSet<&'g str>,
    names: HashSet<&'g str>,
}

impl<'g> GraphIndex<'g> {
    /// Indexes `graph`.
    pub fn new(graph: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut constant_nodes = HashMap::new();
        let mut names: HashSet<&str> = HashSet::new();
        for (i, node) in graph.node.iter().enumerate() {
            names.insert(node.name.as_str());
            for (k, out) in node.output.iter().enumerate() {
                if !out.is_empty() {
                    producer.insert(out.as_str(), (i, k));
                    names.insert(out.as_str());
                }
            }
            for input in node_reads(node) {
                let list = consumers.entry(input).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
            if is_constant_node(node)
                && let Some(out) = node.output.first()
                && let Some(t) = constant_node_tensor(node)
            {
                constant_nodes.insert(out.as_str(), t);
            }
        }
        let initializers: HashMap<&str, &TensorProto> =
            graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        names.extend(initializers.keys().copied());
        let graph_inputs: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
        names.extend(graph_inputs.iter().copied());
        let graph_outputs: HashSet<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
        Self {
            graph,
            producer,
            consumers,
            initializers,
            constant_nodes,
            graph_inputs,
            graph_outputs,
            names,
        }
    }

    /// The indexed graph.
    pub fn graph(&self) -> &'g GraphProto {
        self.graph
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &'g NodeProto {
        &self.graph.node[i]
    }

    /// The node producing `value` and the output slot, if a node does.
    pub fn producer(&self, value: &str) -> Option<(usize, usize)> {
        self.producer.get(value).copied()
    }

    /// The node producing `value`, if a node does.
    pub fn producer_node(&self, value: &str) -> Option<&'g NodeProto> {
        self.producer(value).map(|(i, _)| self.node(i))
    }

    /// Indices of the nodes that read `value` (each once), in graph order. Reads inside subgraphs
    /// count as reads by the node holding the subgraph.
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map_or(&[], Vec::as_slice)
    }

    /// Whether `value` is a graph output.
    pub fn is_graph_output(&self, value: &str) -> bool {
        self.graph_outputs.contains(value)
    }

    /// Whether `value` is a graph input.
    pub fn is_graph_input(&self, value: &str) -> bool {
        self.graph_inputs.contains(value)
    }

    /// Whether `value` is an initializer.
    pub fn is_initializer(&self, value: &str) -> bool {
        self.initializers.contains_key(value)
    }

    /// The constant value of `value`: an initializer or the output of a Constant node.
    ///
    /// Initializers that are also graph inputs (old exporters list every weight as an input) count
    /// as constants: they are the weights the model was trained with.
    pub fn constant(&self, value: &str) -> Option<&TensorProto> {
        self.initializers
            .get(value)
            .copied()
            .or_else(|| self.constant_nodes.get(value).map(|c| &**c))
    }

    /// Whether `value` holds a constant.
    pub fn is_constant(&self, value: &str) -> bool {
        self.constant(value).is_some()
    }

    /// Whether `value` is used only by node `node` and is not a graph output.
    pub fn only_read_by(&self, value: &str, node: usize) -> bool {
        !self.is_graph_output(value) && self.consumers(value) == [node]
    }

    /// A name not used by any value, initializer, input or node of the graph, derived from `base`.
    /// Names handed out by the same `fresh` are not repeated.
    pub fn fresh(&self) -> FreshNames<'_, 'g> {
        FreshNames {
            index: self,
            taken: HashSet::new(),
        }
    }

    /// Every name in use (values, initializers, inputs, node names).
    pub fn name_in_use(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// Hands out names that are new to a graph.
#[derive(Debug)]
pub struct FreshNames<'i, 'g> {
    index: &'i GraphIndex<'g>,
    taken: HashSet<String>,
}

impl FreshNames<'_, '_> {
    /// `base`, or `base_1`, `base_2`, ... whichever is free first.
    pub fn name(&mut self, base: &str) -> String {
        let mut candidate = base.to_owned();
        let mut n = 1;
        while self.index.name_in_use(&candidate) || self.taken.contains(&candidate) {
            candidate = format!("{base}_{n}");
            n += 1;
        }
        self.taken.insert(candidate.clone());
        candidate
    }
}

/// Every value a node reads: its inputs, and the outer-scope values its subgraphs refer to.
pub fn node_reads(node: &NodeProto) -> Vec<&str> {
    let mut out: Vec<&str> = node
        .input
        .iter()
        .filter(|s| !s.is_empty())
        .map(String::as_str)
        .collect();
    for a in &node.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            out.extend(outer_scope_reads(g));
        }
    }
    out
}

/// Names a subgraph reads that it does not define itself.
pub fn outer_scope_reads(g: &GraphProto) -> Vec<&str> {
    let mut defined: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name.as_str()));
    for n in &g.node {
        defined.extend(n.output.iter().map(String::as_str));
    }
    let mut out = Vec::new();
    for n in &g.node {
        for r in node_reads(n) {
            if !defined.contains(r) {
                out.push(r);
            }
        }
    }
    for o in &g.output {
        if !defined.contains(o.name.as_str()) {
            out.push(o.name.as_str());
        }
    }
    out
}

/// Whether `node` is an ONNX `Constant`.
pub fn is_constant_node(node: &NodeProto) -> bool {
    node.op_type == "Constant" && is_default_domain(&node.domain)
}

/// Whether a node domain is the default ONNX domain.
pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The tensor a Constant node holds, borrowed when it is a `value` tensor (its name may differ
/// from the node's output name).
fn constant_node_tensor(node: &NodeProto) -> Option<Cow<'_, TensorProto>> {
    let a = node.attribute.first()?;
    match (a.name.as_str(), a.t.as_ref()) {
        ("value", Some(t)) => Some(Cow::Borrowed(t)),
        _ => constant_node_value(node).map(Cow::Owned),
    }
}

/// The tensor a Constant node produces, from whichever `value*` attribute it carries, named after
/// the node's output.
pub fn constant_node_value(node: &NodeProto) -> Option<TensorProto> {
    let name = node.output.first()?.clone();
    let a = node.attribute.first()?;
    let mut t = match a.name.as_str() {
        "value" => a.t.clone()?,
        "value_float" => TensorProto::from_values("", &[], &[a.f]),
        "value_floats" => TensorProto::from_values("", &[a.floats.len() as i64], &a.floats),
        "value_int" => TensorProto::from_values("", &[], &[a.i]),
        "value_ints" => TensorProto::from_values("", &[a.ints.len() as i64], &a.ints),
        _ => return None,
    };
    t.name = name;
    Some(t)
}

/// Attribute `name` of `node`.
pub fn attribute<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// Integer attribute `name`, or `default`.
pub fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).map_or(default, |a| a.i)
}

/// Float attribute `name`, or `default`.
pub fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attribute(node, name).map_or(default, |a| a.f)
}

/// Integer-list attribute `name` (`None` when absent).
pub fn attr_ints<'n>(node: &'n NodeProto, name: &str) -> Option<&'n [i64]> {
    attribute(node, name).map(|a| a.ints.as_slice())
}

/// Reads a constant as f32 values, whatever float or integer type it is stored in.
pub fn tensor_as_f32(t: &TensorProto) -> Option<Vec<f32>> {
    Some(match t.dtype()? {
        DataType::Float => t.values::<f32>().ok()?,
        DataType::Double => t.values::<f64>().ok()?.into_iter().map(|v| v as f32).collect(),
        DataType::Int64 => t.values::<i64>().ok()?.into_iter().map(|v| v as f32).collect(),
        DataType::Int32 => t.values::<i32>().ok()?.into_iter().map(|v| v as f32).collect(),
        _ => return None,
    })
}

/// Reads a constant as i64 values (for shapes, axes and indices).
pub fn tensor_as_i64(t: &TensorProto) -> Option<Vec<i64>> {
    Some(match t.dtype()? {
        DataType::Int64 => t.values::<i64>().ok()?,
        DataType::Int32 => t.values::<i32>().ok()?.into_iter().map(i64::from).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, GraphBuilder, attr_tensor};

    #[test]
    fn producers_consumers_and_both_kinds_of_constant_are_indexed() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &[Dim::Fixed(2)]);
        let w = b.initializer(TensorProto::from_values("w", &[2], &[1.0f32, 2.0]));
        let c = b.node(
            "Constant",
            "c",
            &[],
            vec![attr_tensor(
                "value",
                TensorProto::from_values("", &[2], &[3.0f32, 4.0]),
            )],
        );
        let m = b.node("Mul", "m", &[&x, &w], vec![]);
        let a = b.node("Add", "a", &[&m, &c], vec![]);
        let r = b.node("Relu", "r", &[&m], vec![]);
        b.output(&a, DataType::Float, &[Dim::Fixed(2)]);
        b.output(&r, DataType::Float, &[Dim::Fixed(2)]);
        let model = b.finish("");
        let g = model.graph.as_ref().unwrap();
        let ix = GraphIndex::new(g);
        assert_eq!(ix.consumers("m"), &[2, 3]);
        assert_eq!(ix.producer("a"), Some((2, 0)));
        assert_eq!(ix.constant("w").unwrap().values::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(ix.constant("c").unwrap().values::<f32>().unwrap(), vec![3.0, 4.0]);
        assert!(ix.constant("x").is_none() && !ix.only_read_by("m", 2) && ix.is_graph_output("a"));
        let mut fresh = ix.fresh();
        assert_eq!(fresh.name("m"), "m_1");
        assert_eq!(fresh.name("m"), "m_2");
        assert_eq!(fresh.name("new"), "new");
    }
}
