//! A description of a graph change, applied in one step: nodes removed and added, initializers
//! removed and added, and uses of one value redirected to another.
//!
//! Passes compute a [`Patch`] from a read-only [`crate::graph::GraphIndex`] and the caller applies
//! it, so a pass can be tested on what it *would* do, and a sequence of patches can be cut short
//! to find the one that broke a model. After applying, nodes are re-sorted topologically (stable:
//! untouched nodes keep their order) and values nothing reads any more are removed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::error::OnnxError;
use crate::graph::node_reads;
use crate::proto::{GraphProto, NodeProto, TensorProto};

/// One graph change.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    /// Indices (in the graph the patch was computed on) of nodes to remove.
    pub remove_nodes: Vec<usize>,
    /// Nodes to add.
    pub add_nodes: Vec<NodeProto>,
    /// Initializers to add (a name already present is replaced).
    pub add_initializers: Vec<TensorProto>,
    /// Initializers to remove.
    pub remove_initializers: Vec<String>,
    /// `(from, to)`: every node that was in the graph and read `from` reads `to` instead. Added
    /// nodes are taken as written (a pass names their inputs itself), and graph outputs are not
    /// renamed.
    pub replace_uses: Vec<(String, String)>,
}

impl Patch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove_nodes.is_empty()
            && self.add_nodes.is_empty()
            && self.add_initializers.is_empty()
            && self.remove_initializers.is_empty()
            && self.replace_uses.is_empty()
    }

    /// Applies the patch to `graph` (the graph it was computed on), re-sorts the nodes and removes
    /// what became unused. Fails if the result reads a value nothing defines or has a cycle.
    pub fn apply(self, graph: &mut GraphProto) -> Result<(), OnnxError> {
        let remove: HashSet<usize> = self.remove_nodes.into_iter().collect();
        let old = std::mem::take(&mut graph.node);
        let mut nodes: Vec<(NodeProto, (usize, usize))> = old
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !remove.contains(i))
            .map(|(i, n)| (n, (i, 0)))
            .collect();
        let renames: HashMap<String, String> = self.replace_uses.into_iter().collect();
        if !renames.is_empty() {
            for (n, _) in &mut nodes {
                rename_reads(n, &renames);
            }
        }
        // New nodes go right after the last original node they depend on.
        let position: HashMap<String, usize> = nodes
            .iter()
            .flat_map(|(n, (i, _))| n.output.iter().map(move |o| (o.clone(), *i)))
            .collect();
        for (k, n) in self.add_nodes.into_iter().enumerate() {
            let after = n
                .input
                .iter()
                .filter_map(|i| position.get(i))
                .max()
                .copied()
                .unwrap_or(0);
            nodes.push((n, (after, k + 1)));
        }
        let drop: HashSet<String> = self.remove_initializers.into_iter().collect();
        graph.initializer.retain(|t| !drop.contains(&t.name));
        for t in self.add_initializers {
            match graph.initializer.iter_mut().find(|x| x.name == t.name) {
                Some(existing) => *existing = t,
                None => graph.initializer.push(t),
            }
        }
        graph.node = topological_order(nodes, graph)?;
        remove_unused(graph);
        Ok(())
    }
}

fn rename_reads(node: &mut NodeProto, renames: &HashMap<String, String>) {
    for input in &mut node.input {
        if let Some(to) = renames.get(input.as_str()) {
            *input = to.clone();
        }
    }
    for a in &mut node.attribute {
        for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
            rename_outer_reads(g, renames);
        }
    }
}

fn rename_outer_reads(g: &mut GraphProto, renames: &HashMap<String, String>) {
    let mut defined: HashSet<String> = g.input.iter().map(|v| v.name.clone()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name.clone()));
    for n in &g.node {
        defined.extend(n.output.iter().cloned());
    }
    let outer: HashMap<String, String> = renames
        .iter()
        .filter(|(from, _)| !defined.contains(*from))
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    if outer.is_empty() {
        return;
    }
    for n in &mut g.node {
        rename_reads(n, &outer);
    }
    for o in &mut g.output {
        if let Some(to) = outer.get(&o.name) {
            o.name = to.clone();
        }
    }
}

/// Kahn's algorithm, picking the ready node with the smallest key, so the original order survives
/// wherever the dependencies allow.
fn topological_order(
    nodes: Vec<(NodeProto, (usize, usize))>,
    graph: &GraphProto,
) -> Result<Vec<NodeProto>, OnnxError> {
    let mut available: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    available.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, (n, _)) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), i).is_some() {
                return Err(OnnxError::InvalidGraph(format!(
                    "value '{o}' is produced by two nodes"
                )));
            }
        }
    }
    let mut waiting = vec![0usize; nodes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, (n, _)) in nodes.iter().enumerate() {
        let deps: BTreeSet<usize> = node_reads(n)
            .into_iter()
            .filter_map(|r| match producer.get(r) {
                Some(&p) => Some(Ok(p)),
                None if available.contains(r) => None,
                None => Some(Err(r)),
            })
            .collect::<Result<_, _>>()
            .map_err(|r| {
                OnnxError::InvalidGraph(format!(
                    "node '{}' ({}) reads '{r}', which nothing defines",
                    n.name, n.op_type
                ))
            })?;
        waiting[i] = deps.len();
        for d in deps {
            dependents[d].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<((usize, usize), usize)>> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| waiting[*i] == 0)
        .map(|(i, (_, key))| Reverse((*key, i)))
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse((_, i))) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(Reverse((nodes[d].1, d)));
            }
        }
    }
    if order.len() != nodes.len() {
        return Err(OnnxError::InvalidGraph("the graph has a cycle".into()));
    }
    let mut slots: Vec<Option<NodeProto>> = nodes.into_iter().map(|(n, _)| Some(n)).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// Removes nodes whose outputs nothing reads (and that are not graph outputs), initializers
/// nothing reads, and value_info entries of values that no longer exist.
pub fn remove_unused(graph: &mut GraphProto) {
    let outputs: HashSet<String> = graph.output.iter().map(|v| v.name.clone()).collect();
    loop {
        let read: HashSet<&str> = graph.node.iter().flat_map(node_reads).collect();
        let dead: Vec<usize> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                !n.output.is_empty()
                    && n.output
                        .iter()
                        .all(|o| o.is_empty() || (!read.contains(o.as_str()) && !outputs.contains(o)))
            })
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            break;
        }
        let dead: HashSet<usize> = dead.into_iter().collect();
        let mut i = 0;
        graph.node.retain(|_| {
            let keep = !dead.contains(&i);
            i += 1;
            keep
        });
    }
    let read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(node_reads)
        .map(str::to_owned)
        .chain(outputs.iter().cloned())
        .collect();
    let unused: HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| !read.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    graph.initializer.retain(|t| !unused.contains(&t.name));
    // Old exporters list weights as graph inputs too; an input that only named a removed weight goes with it.
    graph.input.retain(|v| !unused.contains(&v.name));
    let mut defined: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    defined.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    defined.extend(
        graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str)),
    );
    let defined: HashSet<String> = defined.into_iter().map(str::to_owned).collect();
    graph.value_info.retain(|v| defined.contains(&v.name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, GraphBuilder};
    use crate::graph::GraphIndex;
    use crate::proto::DataType;

    fn chain() -> GraphProto {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &[Dim::Fixed(2)]);
        let w = b.initializer(TensorProto::from_values("w", &[2], &[1.0f32, 2.0]));
        let m = b.node("Mul", "m", &[&x, &w], vec![]);
        let i = b.node("Identity", "i", &[&m], vec![]);
        let r = b.node("Relu", "r", &[&i], vec![]);
        b.output(&r, DataType::Float, &[Dim::Fixed(2)]);
        b.finish("").graph.unwrap()
    }

    #[test]
    fn removing_a_node_and_redirecting_its_readers_keeps_the_graph_valid() {
        let mut g = chain();
        let ix = GraphIndex::new(&g);
        let (i, _) = ix.producer("i").unwrap();
        let patch = Patch {
            remove_nodes: vec![i],
            replace_uses: vec![("i".into(), "m".into())],
            ..Default::default()
        };
        patch.apply(&mut g).unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Mul", "Relu"]);
        assert_eq!(g.node[1].input, ["m"]);
    }

    #[test]
    fn added_nodes_are_placed_after_what_they_read_and_dead_code_goes() {
        let mut g = chain();
        let patch = Patch {
            // A node that reads the Relu's input and replaces the graph's only reader of Mul: the
            // Identity and Relu become dead once nothing reads them... except Relu is the output.
            add_nodes: vec![NodeProto {
                op_type: "Neg".into(),
                name: "neg".into(),
                input: vec!["m".into()],
                output: vec!["n".into()],
                ..Default::default()
            }],
            replace_uses: vec![("i".into(), "n".into())],
            ..Default::default()
        };
        patch.apply(&mut g).unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            ["Mul", "Neg", "Relu"],
            "Identity is dead, Neg sits before its reader"
        );
        crate::io::check_model(&crate::proto::ModelProto {
            ir_version: 8,
            opset_import: vec![crate::proto::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(g),
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn a_patch_reading_an_undefined_value_is_refused() {
        let mut g = chain();
        let patch = Patch {
            replace_uses: vec![("m".into(), "nowhere".into())],
            ..Default::default()
        };
        let e = patch.apply(&mut g).unwrap_err().to_string();
        assert!(e.contains("'nowhere'"), "{e}");
    }
}
