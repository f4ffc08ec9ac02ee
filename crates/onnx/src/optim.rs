//! Graph optimization before quantization (`edgemlops model optimize`): rewrite rules registered
//! per operator type, applied one patch at a time, with a step limit to bisect a bad rewrite.
//!
//! The standard rules are the ones a quantizer wants run first, as ONNX Runtime's Python
//! `quant_pre_process` does them: Constant nodes become initializers, constant subgraphs are folded,
//! Identity and inference Dropout disappear, BatchNormalization and bias `Add`s are folded into the
//! preceding convolution, and division by a constant becomes a multiplication (which has an int8
//! kernel). Every rule preserves what the model computes up to float rounding.

use std::collections::HashMap;

use crate::error::OnnxError;
use crate::fold::eval_node;
use crate::graph::{GraphIndex, attr_f, attr_i, is_constant_node, is_default_domain, tensor_as_f32};
use crate::patch::{Patch, remove_unused};
use crate::proto::{DataType, ModelProto, NodeProto, TensorProto};

/// A rewrite rule: looks at node `i` and returns the change to make, if any.
pub type RuleFn = fn(&GraphIndex<'_>, usize) -> Option<Patch>;

/// A named rule for some operator types (`*` matches every operator).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Short name, printed in the step log.
    pub name: &'static str,
    /// Operator types the rule looks at (default domain), or `["*"]`.
    pub op_types: &'static [&'static str],
    /// The rule.
    pub apply: RuleFn,
}

/// One applied rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Rule name.
    pub rule: &'static str,
    /// Name (or first output) of the node the rule matched.
    pub node: String,
    /// Its operator type.
    pub op_type: String,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Rewrites in the order they were applied.
    pub steps: Vec<Step>,
    /// Whether the step limit stopped the run before every rule was exhausted.
    pub stopped_at_limit: bool,
    /// Nodes before.
    pub nodes_before: usize,
    /// Nodes after.
    pub nodes_after: usize,
}

impl Report {
    /// How many steps each rule made, in rule order of first use.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, usize)> = Vec::new();
        for s in &self.steps {
            match out.iter_mut().find(|(r, _)| *r == s.rule) {
                Some((_, n)) => *n += 1,
                None => out.push((s.rule, 1)),
            }
        }
        out
    }
}

/// Applies rules until none matches (or the step limit is reached).
#[derive(Clone, Debug)]
pub struct Optimizer {
    by_op: HashMap<&'static str, Vec<Rule>>,
    any_op: Vec<Rule>,
    max_steps: Option<usize>,
}

impl Optimizer {
    /// An optimizer with the given rules.
    pub fn new(rules: &[Rule]) -> Self {
        let mut by_op: HashMap<&'static str, Vec<Rule>> = HashMap::new();
        let mut any_op = Vec::new();
        for r in rules {
            for op in r.op_types {
                if *op == "*" {
                    any_op.push(*r);
                } else {
                    by_op.entry(op).or_default().push(*r);
                }
            }
        }
        Self {
            by_op,
            any_op,
            max_steps: None,
        }
    }

    /// The pre-quantization rules (see the module documentation).
    pub fn standard() -> Self {
        Self::new(&STANDARD_RULES)
    }

    /// Stops after `n` rewrites (`None`: no limit).
    pub fn with_max_steps(mut self, n: Option<usize>) -> Self {
        self.max_steps = n;
        self
    }

    /// Rewrites the main graph of `model` in place.
    pub fn run(&self, model: &mut ModelProto) -> Result<Report, OnnxError> {
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| OnnxError::InvalidGraph("the model has no graph".into()))?;
        let mut report = Report {
            nodes_before: graph.node.len(),
            ..Default::default()
        };
        let mut start = 0;
        loop {
            if self.max_steps.is_some_and(|m| report.steps.len() >= m) {
                report.stopped_at_limit = self.next_match(graph, 0).is_some();
                break;
            }
            let Some((i, rule, patch)) = self.next_match(graph, start) else {
                if start == 0 {
                    break;
                }
                start = 0;
                continue;
            };
            let node = &graph.node[i];
            report.steps.push(Step {
                rule: rule.name,
                node: if node.name.is_empty() {
                    node.output.first().cloned().unwrap_or_default()
                } else {
                    node.name.clone()
                },
                op_type: node.op_type.clone(),
            });
            patch.apply(graph)?;
            // Nodes before `i` were already looked at and rules only change what they touch, so the
            // scan resumes near where it was; a full pass at the end catches what a rewrite enabled.
            start = i.saturating_sub(4);
        }
        remove_unused(graph);
        report.nodes_after = graph.node.len();
        Ok(report)
    }

    fn next_match(&self, graph: &crate::proto::GraphProto, start: usize) -> Option<(usize, Rule, Patch)> {
        let index = GraphIndex::new(graph);
        for (i, node) in graph.node.iter().enumerate().skip(start) {
            if !is_default_domain(&node.domain) {
                continue;
            }
            let specific = self.by_op.get(node.op_type.as_str()).into_iter().flatten();
            for rule in specific.chain(self.any_op.iter()) {
                if let Some(p) = (rule.apply)(&index, i)
                    && !p.is_empty()
                {
                    return Some((i, *rule, p));
                }
            }
        }
        None
    }
}

/// The rules of [`Optimizer::standard`], in priority order.
pub const STANDARD_RULES: [Rule; 6] = [
    Rule {
        name: "constant-to-initializer",
        op_types: &["Constant"],
        apply: constant_to_initializer,
    },
    Rule {
        name: "remove-identity",
        op_types: &["Identity", "Dropout"],
        apply: remove_identity,
    },
    Rule {
        name: "fold-batchnorm-into-conv",
        op_types: &["BatchNormalization"],
        apply: fold_batchnorm_into_conv,
    },
    Rule {
        name: "fold-add-into-conv-bias",
        op_types: &["Add"],
        apply: fold_add_into_conv_bias,
    },
    Rule {
        name: "div-by-constant-to-mul",
        op_types: &["Div"],
        apply: div_by_constant_to_mul,
    },
    Rule {
        name: "fold-constants",
        op_types: &["*"],
        apply: fold_constants,
    },
];

fn constant_to_initializer(ix: &GraphIndex<'_>, i: usize) -> Option<Patch> {
    let node = ix.node(i);
    let out = node.output.first()?;
    if !is_constant_node(node) || ix.is_graph_output(out) || ix.is_initializer(out) {
        return None;
    }
    let t = crate::graph::constant_node_value(node)?;
    Some(Patch {
        remove_nodes: vec![i],
        add_initializers: vec![t],
        ..Default::default()
    })
}

fn remove_identity(ix: &GraphIndex<'_>, i: usize) -> Option<Patch> {
    let node = ix.node(i);
    let input = node.input.first().filter(|s| !s.is_empty())?;
    let out = node.output.first()?;
    if node.op_type == "Dropout" {
        // Inference Dropout is the identity, as long as its mask output is not used.
        let mask_used = node
            .output
            .get(1)
            .is_some_and(|m| !m.is_empty() && !ix.consumers(m).is_empty());
        let training = node.input.get(2).is_some_and(|t| !t.is_empty());
        if mask_used || training || ix.is_graph_output(node.output.get(1).map_or("", String::as_str)) {
            return None;
        }
    }
    if !ix.is_graph_output(out) {
        return Some(Patch {
            remove_nodes: vec![i],
            replace_uses: vec![(out.clone(), input.clone())],
            ..Default::default()
        });
    }
    // The output names the model's interface: rename the producer's output instead, when the
    // producer's value is used only here.
    let (p, slot) = ix.producer(input)?;
    if !ix.only_read_by(input, i) || ix.is_graph_input(input) {
        return None;
    }
    let mut producer = ix.node(p).clone();
    producer.output[slot] = out.clone();
    Some(Patch {
        remove_nodes: vec![p, i],
        add_nodes: vec![producer],
        ..Default::default()
    })
}

/// The Conv producing `value`, if it is read only by node `reader`, with constant weights.
fn conv_feeding(ix: &GraphIndex<'_>, value: &str, reader: usize) -> Option<(usize, &'static str)> {
    let (c, _) = ix.producer(value)?;
    let conv = ix.node(c);
    if conv.op_type != "Conv" || !is_default_domain(&conv.domain) || !ix.only_read_by(value, reader) {
        return None;
    }
    let w = ix.constant(conv.input.get(1)?)?;
    (w.dtype() == Some(DataType::Float) && w.dims.len() >= 3).then_some((c, "Conv"))
}

fn conv_weights_and_bias(ix: &GraphIndex<'_>, conv: &NodeProto) -> Option<(Vec<i64>, Vec<f32>, Vec<f32>)> {
    let w = ix.constant(conv.input.get(1)?)?;
    let cout = usize::try_from(*w.dims.first()?).ok()?;
    let weights = w.values::<f32>().ok()?;
    let bias = match conv.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => ix.constant(b)?.values::<f32>().ok()?,
        None => vec![0.0; cout],
    };
    (bias.len() == cout).then(|| (w.dims.clone(), weights, bias))
}

/// A Conv with new weights and bias, writing `output`.
fn rebuilt_conv(
    ix: &GraphIndex<'_>,
    conv: &NodeProto,
    dims: &[i64],
    weights: &[f32],
    bias: &[f32],
    output: &str,
) -> (NodeProto, Vec<TensorProto>) {
    let mut fresh = ix.fresh();
    let base = if conv.name.is_empty() {
        output
    } else {
        conv.name.as_str()
    };
    let w_name = fresh.name(&format!("{base}.weight_folded"));
    let b_name = fresh.name(&format!("{base}.bias_folded"));
    let mut node = conv.clone();
    node.input = vec![conv.input[0].clone(), w_name.clone(), b_name.clone()];
    node.output = vec![output.to_owned()];
    (
        node,
        vec![
            TensorProto::from_values(w_name, dims, weights),
            TensorProto::from_values(b_name, &[bias.len() as i64], bias),
        ],
    )
}

fn fold_batchnorm_into_conv(ix: &GraphIndex<'_>, i: usize) -> Option<Patch> {
    let bn = ix.node(i);
    let extra_outputs = bn.output.iter().skip(1).any(|o| !o.is_empty());
    if bn.input.len() != 5 || extra_outputs || attr_i(bn, "training_mode", 0) != 0 {
        return None;
    }
    let (c, _) = conv_feeding(ix, &bn.input[0], i)?;
    let conv = ix.node(c);
    let param = |k: usize| ix.constant(&bn.input[k]).and_then(tensor_as_f32);
    let (scale, shift, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
    let eps = attr_f(bn, "epsilon", 1e-5);
    let (dims, mut weights, mut bias) = conv_weights_and_bias(ix, conv)?;
    let cout = bias.len();
    if [&scale, &shift, &mean, &var].iter().any(|v| v.len() != cout) {
        return None;
    }
    let per_out = weights.len() / cout;
    for o in 0..cout {
        let k = scale[o] / (var[o] + eps).sqrt();
        for w in &mut weights[o * per_out..(o + 1) * per_out] {
            *w *= k;
        }
        bias[o] = (bias[o] - mean[o]) * k + shift[o];
    }
    let (node, inits) = rebuilt_conv(ix, conv, &dims, &weights, &bias, &bn.output[0]);
    Some(Patch {
        remove_nodes: vec![c, i],
        add_nodes: vec![node],
        add_initializers: inits,
        ..Default::default()
    })
}

/// Per-channel values of a constant added to a Conv output of rank `rank` (`N, C, spatial...`):
/// a scalar, or a tensor whose only non-1 dimension lines up with the channel axis after
/// right-aligned broadcasting (`[C,1,1]`, `[1,C,1,1]`; a plain `[C]` would broadcast over the width).
fn per_channel_constant(t: &TensorProto, cout: usize, rank: usize) -> Option<Vec<f32>> {
    let values = tensor_as_f32(t)?;
    let r = t.dims.len();
    if r > rank {
        return None;
    }
    let channel = (r + 1).checked_sub(rank); // the constant's axis that meets the output's axis 1
    let fits = t
        .dims
        .iter()
        .enumerate()
        .all(|(k, &d)| d == 1 || (Some(k) == channel && d as usize == cout));
    if !fits {
        return None;
    }
    Some(if values.len() == 1 {
        vec![values[0]; cout]
    } else {
        values
    })
}

fn fold_add_into_conv_bias(ix: &GraphIndex<'_>, i: usize) -> Option<Patch> {
    let add = ix.node(i);
    if add.input.len() != 2 {
        return None;
    }
    let (x, c) = if ix.is_constant(&add.input[1]) {
        (&add.input[0], &add.input[1])
    } else {
        (&add.input[1], &add.input[0])
    };
    let (ci, _) = conv_feeding(ix, x, i)?;
    let conv = ix.node(ci);
    let (dims, weights, mut bias) = conv_weights_and_bias(ix, conv)?;
    let extra = per_channel_constant(ix.constant(c)?, bias.len(), dims.len())?;
    for (b, e) in bias.iter_mut().zip(extra) {
        *b += e;
    }
    let (node, inits) = rebuilt_conv(ix, conv, &dims, &weights, &bias, &add.output[0]);
    Some(Patch {
        remove_nodes: vec![ci, i],
        add_nodes: vec![node],
        add_initializers: inits,
        ..Default::default()
    })
}

fn div_by_constant_to_mul(ix: &GraphIndex<'_>, i: usize) -> Option<Patch> {
    let div = ix.node(i);
    let divisor = ix.constant(div.input.get(1)?)?;
    if divisor.dtype() != Some(DataType::Float) {
        return None;
    }
    let values = divisor.values::<f32>().ok()?;
    if values
        .iter()
        .any(|v| *v == 0.0 || !v.is_finite() || !(1.0 / v).is_finite())
    {
        return None;
    }
    let reciprocal: Vec<f32> = values.iter().map(|v| 1.0 / v).collect();
    let name = ix.fresh().name(&format!("{}_reciprocal", div.input[1]));
    let mut mul = div.clone();
    mul.op_type = "Mul".into();
    mul.input[1] = name.clone();
    Some(Patch {
        remove_nodes: vec![i],
        add_nodes: vec![mul],
        add_initializers: vec![TensorProto::from_values(name, &divisor.dims, &reciprocal)],
        ..Default::default()
    })
}

/// Operators that must not be folded even with constant inputs.
const NEVER_FOLD: &[&str] = &["Constant", "If", "Loop", "Scan", "RandomNormal", "RandomUniform"];

fn fold_constants(ix: &GraphIndex<'_>, i: usize) -> Option<Patch> {
    let node = ix.node(i);
    if NEVER_FOLD.contains(&node.op_type.as_str())
        || node.input.iter().all(String::is_empty)
        || node.output.iter().any(|o| ix.is_graph_output(o))
    {
        return None;
    }
    let inputs: Vec<Option<&TensorProto>> = node
        .input
        .iter()
        .map(|n| {
            if n.is_empty() {
                Some(None)
            } else {
                ix.constant(n).map(Some)
            }
        })
        .collect::<Option<_>>()?;
    let outputs = eval_node(node, &inputs)?;
    Some(Patch {
        remove_nodes: vec![i],
        add_initializers: outputs,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{GraphBuilder, attr_float, attr_int, attr_ints, attr_tensor};

    /// x → Conv(no bias) → BatchNorm → Add(const [1,C,1,1]) → Div(6) → Identity → output.
    fn exported_style() -> ModelProto {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &[1.into(), 2.into(), 3.into(), 3.into()]);
        let w = b.node(
            "Constant",
            "wc",
            &[],
            vec![attr_tensor(
                "value",
                TensorProto::from_values("", &[2, 2, 1, 1], &[1.0f32, 0.5, -1.0, 2.0]),
            )],
        );
        let conv = b.node(
            "Conv",
            "conv",
            &[&x, &w],
            vec![attr_ints("kernel_shape", &[1, 1]), attr_int("group", 1)],
        );
        let p =
            |b: &mut GraphBuilder, n: &str, v: [f32; 2]| b.initializer(TensorProto::from_values(n, &[2], &v));
        let (s, o, m, v) = (
            p(&mut b, "s", [2.0, 0.5]),
            p(&mut b, "o", [0.1, -0.2]),
            p(&mut b, "m", [0.3, 0.0]),
            p(&mut b, "v", [4.0, 1.0]),
        );
        let bn = b.node(
            "BatchNormalization",
            "bn",
            &[&conv, &s, &o, &m, &v],
            vec![attr_float("epsilon", 0.0)],
        );
        let shape = b.initializer(TensorProto::from_values("shape", &[4], &[1i64, 2, 1, 1]));
        let raw = b.initializer(TensorProto::from_values("raw", &[2], &[1.0f32, 3.0]));
        let bias = b.node("Reshape", "reshape", &[&raw, &shape], vec![]);
        let add = b.node("Add", "add", &[&bn, &bias], vec![]);
        let six = b.initializer(TensorProto::from_values("six", &[], &[6.0f32]));
        let div = b.node("Div", "div", &[&add, &six], vec![]);
        let out = b.node("Identity", "out", &[&div], vec![]);
        b.output(&out, DataType::Float, &[1.into(), 2.into(), 3.into(), 3.into()]);
        b.finish("")
    }

    #[test]
    fn exported_patterns_fold_to_one_conv_and_one_mul() {
        let mut m = exported_style();
        let r = Optimizer::standard().run(&mut m).unwrap();
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Conv", "Mul"], "steps: {:?}", r.steps);
        assert_eq!(g.node[1].output[0], "out", "the graph output keeps its name");
        let ix = GraphIndex::new(g);
        let b = ix.constant(&g.node[0].input[2]).unwrap().values::<f32>().unwrap();
        // bias = (0 - mean) * scale / sqrt(var) + offset + add
        assert!((b[0] - ((0.0 - 0.3) * 1.0 + 0.1 + 1.0)).abs() < 1e-6, "{b:?}");
        assert!((b[1] - (-0.2 + 3.0)).abs() < 1e-6, "{b:?}");
        let w = ix.constant(&g.node[0].input[1]).unwrap().values::<f32>().unwrap();
        assert_eq!(w, vec![1.0, 0.5, -0.5, 1.0]);
        assert!(
            g.initializer
                .iter()
                .all(|t| !["s", "raw", "shape"].contains(&t.name.as_str()))
        );
        crate::io::check_model(&m).unwrap();
    }

    #[test]
    fn the_step_limit_stops_early_and_says_so() {
        let mut m = exported_style();
        let all = Optimizer::standard().run(&mut m.clone()).unwrap();
        let r = Optimizer::standard().with_max_steps(Some(2)).run(&mut m).unwrap();
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.steps[..], all.steps[..2]);
        assert!(r.stopped_at_limit);
        crate::io::check_model(&m).unwrap();
    }
}
