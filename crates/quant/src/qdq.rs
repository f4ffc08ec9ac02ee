//! Static quantization in QDQ format: `QuantizeLinear → DequantizeLinear` pairs around the
//! activations of the operators ONNX Runtime has int8 kernels for, int8 weights behind a
//! `DequantizeLinear`, int32 biases whose scale is input scale × weight scale.
//!
//! Planning ([`plan`]) decides, with one rule per operator type, which nodes to quantize and which
//! tensors need calibrated ranges; applying ([`apply`]) turns the plan and the ranges into one
//! [`Patch`]. The graph keeps the float operators: ONNX Runtime's QDQ fusions recognise
//! `DQ → Conv → Q` and run `QLinearConv` (and likewise MatMul, Gemm, Add, Mul, pooling, Concat,
//! Sigmoid, LeakyRelu), and drop `DQ → op → Q` around data movement (Reshape, Transpose, MaxPool,
//! ...) whose input and output share parameters. A ReLU (or a Clip whose bounds contain 0) right
//! after a quantized node is removed: an asymmetric range starting at 0 clamps exactly like it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use onnx::builder::attr_int;
use onnx::graph::{GraphIndex, attr_i, attribute, is_default_domain, tensor_as_f32};
use onnx::patch::Patch;
use onnx::proto::{DataType, ModelProto, NodeProto, TensorProto};
use onnx::types::infer_elem_types;

use crate::error::QuantError;
use crate::params::{QParams, QType, quantize_along, ranges_along};

/// Settings of static quantization.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StaticConfig {
    /// Activation type: `S8` gives S8S8 (signed activations and weights), `U8` gives U8S8.
    pub activations: QType,
    /// Symmetric activation ranges (zero point in the middle); ReLU folding needs asymmetric.
    pub activations_symmetric: bool,
    /// Symmetric weight ranges (zero point 0), what the int8 kernels expect.
    pub weights_symmetric: bool,
    /// One scale per output channel for Conv, Gemm and MatMul weights.
    pub per_channel: bool,
    /// 7-bit weights, against `vpmaddubsw` saturation on x86 without VNNI.
    pub reduce_range: bool,
    /// Node names, output names or operator types to keep in float.
    pub exclude: Vec<String>,
}

impl Default for StaticConfig {
    fn default() -> Self {
        Self {
            activations: QType::U8,
            activations_symmetric: false,
            weights_symmetric: true,
            per_channel: true,
            reduce_range: false,
            exclude: Vec::new(),
        }
    }
}

/// How a node input is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A calibrated activation.
    Activation,
    /// Int8 weights; `axis` is the per-channel axis.
    Weight { axis: usize },
    /// Int32 bias: scale = scale of input `activation` × scale of input `weight`.
    Bias { activation: usize, weight: usize },
    /// A constant operand of an elementwise op, quantized like an activation from its own range.
    ConstActivation,
    /// Left as it is (shapes, optional inputs).
    Keep,
}

/// What happens to a quantized node's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Quantized with its own calibrated range (the fused kernel writes integers).
    Quantized,
    /// May stay float (Gemm and MatMul have float-output int8 kernels).
    FloatAllowed,
    /// Quantized with its input's parameters (data movement).
    SharesInput,
}

#[derive(Clone, Debug)]
struct NodePlan {
    roles: Vec<Role>,
    output: Output,
}

/// Where a quantized tensor's parameters come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ParamSource {
    /// The calibrated range of the named tensor (itself, or the folded ReLU's output).
    Range(String),
    /// The parameters of another quantized tensor.
    SameAs(String),
}

/// What static quantization will do to a model.
#[derive(Clone, Debug)]
pub struct StaticPlan {
    config: StaticConfig,
    nodes: BTreeMap<usize, NodePlan>,
    /// Folded activation node → (its input, its output).
    folds: BTreeMap<usize, (String, String)>,
    /// Folded activation output → the tensor that now carries its value.
    alias: HashMap<String, String>,
    quantized: BTreeMap<String, ParamSource>,
    /// Tensors whose calibrated ranges are needed.
    pub calibrate: Vec<String>,
    /// Nodes left in float with the reason (excluded, unsupported case).
    pub skipped: Vec<(String, String)>,
}

impl StaticPlan {
    /// Number of nodes that will run quantized (Relu/Clip folds not counted).
    pub fn quantized_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Indices of the nodes quantized for their arithmetic (not data movement), in graph order.
    pub fn compute_nodes(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|(_, p)| p.output != Output::SharesInput)
            .map(|(&i, _)| i)
            .collect()
    }

    /// The settings the plan was made with.
    pub fn config(&self) -> &StaticConfig {
        &self.config
    }
}

/// Operators quantized for their arithmetic (ONNX Runtime has fused int8 kernels for them).
pub const COMPUTE_OPS: [&str; 12] = [
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Sigmoid",
    "LeakyRelu",
    "Softmax",
];

/// Data-movement operators: quantized when their input is, with the same parameters.
pub const MOVEMENT_OPS: [&str; 7] = [
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Resize",
];

/// Activations folded into the preceding quantized node's output range.
pub const FOLDED_OPS: [&str; 2] = ["Relu", "Clip"];

/// A node's display name: its name, or its first output when unnamed.
pub fn node_label(n: &NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

/// Whether an `--exclude` entry matches the node (name, any output name, or operator type).
pub fn excluded_by(n: &NodeProto, exclude: &[String]) -> bool {
    exclude
        .iter()
        .any(|e| *e == n.name || *e == n.op_type || n.output.iter().any(|o| o == e))
}

/// Checks that every `--exclude` entry names something in the model.
pub fn check_excludes(model: &ModelProto, exclude: &[String]) -> Result<(), QuantError> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| QuantError::Unsupported("no graph".into()))?;
    for e in exclude {
        if !g.node.iter().any(|n| excluded_by(n, std::slice::from_ref(e))) {
            return Err(QuantError::UnknownExclude { pattern: e.clone() });
        }
    }
    Ok(())
}

struct Ctx<'a, 'g> {
    ix: &'a GraphIndex<'g>,
    types: &'a HashMap<String, DataType>,
}

impl Ctx<'_, '_> {
    fn is_float(&self, name: &str) -> bool {
        !name.is_empty() && self.types.get(name) == Some(&DataType::Float)
    }

    fn float_activation(&self, name: &str) -> bool {
        self.is_float(name) && !self.ix.is_constant(name)
    }

    fn float_constant(&self, name: &str) -> Option<&TensorProto> {
        self.ix
            .constant(name)
            .filter(|t| t.dtype() == Some(DataType::Float) && !t.is_external())
    }
}

type Rule = fn(&Ctx<'_, '_>, &NodeProto) -> Result<NodePlan, &'static str>;

fn rule_for(op: &str) -> Option<Rule> {
    Some(match op {
        "Conv" | "ConvTranspose" => conv_rule,
        "Gemm" => gemm_rule,
        "MatMul" => matmul_rule,
        "Add" | "Mul" | "Concat" => elementwise_rule,
        "AveragePool" | "GlobalAveragePool" | "Sigmoid" | "LeakyRelu" | "Softmax" => unary_rule,
        _ => return None,
    })
}

fn conv_rule(c: &Ctx<'_, '_>, n: &NodeProto) -> Result<NodePlan, &'static str> {
    let x = n.input.first().ok_or("no input")?;
    if !c.float_activation(x) {
        return Err("input is not a float activation");
    }
    let w = c
        .float_constant(n.input.get(1).ok_or("no weight")?)
        .ok_or("weights are not a float constant")?;
    if w.dims.len() < 3 {
        return Err("weights have fewer than 3 dimensions");
    }
    let axis = if n.op_type == "ConvTranspose" {
        if attr_i(n, "group", 1) != 1 {
            return Err("grouped ConvTranspose");
        }
        1
    } else {
        0
    };
    let mut roles = vec![Role::Activation, Role::Weight { axis }];
    if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
        let bias = c.float_constant(b).ok_or("bias is not a float constant")?;
        if bias.dims != [w.dims[axis]] {
            return Err("bias shape does not match the output channels");
        }
        roles.push(Role::Bias {
            activation: 0,
            weight: 1,
        });
    }
    Ok(NodePlan {
        roles,
        output: Output::Quantized,
    })
}

fn gemm_rule(c: &Ctx<'_, '_>, n: &NodeProto) -> Result<NodePlan, &'static str> {
    if attr_i(n, "transA", 0) != 0 {
        return Err("transposed A");
    }
    if attribute(n, "alpha").is_some_and(|a| a.f != 1.0) || attribute(n, "beta").is_some_and(|a| a.f != 1.0) {
        return Err("alpha or beta is not 1");
    }
    let a = n.input.first().ok_or("no input")?;
    if !c.float_activation(a) {
        return Err("input is not a float activation");
    }
    let b = c
        .float_constant(n.input.get(1).ok_or("no B")?)
        .ok_or("B is not a float constant")?;
    if b.dims.len() != 2 {
        return Err("B is not a matrix");
    }
    let axis = if attr_i(n, "transB", 0) != 0 { 0 } else { 1 };
    let mut roles = vec![Role::Activation, Role::Weight { axis }];
    if let Some(name) = n.input.get(2).filter(|s| !s.is_empty()) {
        let bias = c.float_constant(name).ok_or("C is not a float constant")?;
        if bias.dims != [b.dims[axis]] {
            return Err("C is not a vector over the output columns");
        }
        roles.push(Role::Bias {
            activation: 0,
            weight: 1,
        });
    }
    Ok(NodePlan {
        roles,
        output: Output::FloatAllowed,
    })
}

fn matmul_rule(c: &Ctx<'_, '_>, n: &NodeProto) -> Result<NodePlan, &'static str> {
    let (a, b) = (
        n.input.first().ok_or("no input")?,
        n.input.get(1).ok_or("no second input")?,
    );
    if !c.float_activation(a) {
        return Err("input is not a float activation");
    }
    let second = if let Some(w) = c.float_constant(b) {
        if w.dims.len() != 2 {
            return Err("constant B is not a matrix");
        }
        Role::Weight { axis: 1 }
    } else if c.float_activation(b) {
        Role::Activation
    } else {
        return Err("B is neither a float constant nor a float activation");
    };
    Ok(NodePlan {
        roles: vec![Role::Activation, second],
        output: Output::FloatAllowed,
    })
}

fn elementwise_rule(c: &Ctx<'_, '_>, n: &NodeProto) -> Result<NodePlan, &'static str> {
    if n.op_type != "Concat" && n.input.len() != 2 {
        return Err("not two inputs");
    }
    let mut roles = Vec::new();
    let mut activations = 0;
    for i in &n.input {
        if c.float_activation(i) {
            roles.push(Role::Activation);
            activations += 1;
        } else if c.float_constant(i).is_some() {
            roles.push(Role::ConstActivation);
        } else {
            return Err("an input is not float");
        }
    }
    if activations == 0 {
        return Err("only constant inputs");
    }
    Ok(NodePlan {
        roles,
        output: Output::Quantized,
    })
}

fn unary_rule(c: &Ctx<'_, '_>, n: &NodeProto) -> Result<NodePlan, &'static str> {
    if !c.float_activation(n.input.first().ok_or("no input")?) {
        return Err("input is not a float activation");
    }
    if n.op_type == "Softmax" {
        return Err("Softmax stays float (its int8 kernel needs a fixed output range)");
    }
    if n.output.len() != 1 {
        return Err("more than one output");
    }
    Ok(NodePlan {
        roles: vec![Role::Activation],
        output: Output::Quantized,
    })
}

/// Clip bounds when both are constants (inputs since opset 11, attributes before).
fn clip_bounds(c: &Ctx<'_, '_>, n: &NodeProto) -> Option<(f32, f32)> {
    if n.op_type == "Relu" {
        return Some((0.0, f32::INFINITY));
    }
    let get = |slot: usize, attr: &str, default: f32| -> Option<f32> {
        match n.input.get(slot).filter(|s| !s.is_empty()) {
            Some(name) => tensor_as_f32(c.ix.constant(name)?)?.first().copied(),
            None => Some(attribute(n, attr).map_or(default, |a| a.f)),
        }
    };
    Some((get(1, "min", f32::NEG_INFINITY)?, get(2, "max", f32::INFINITY)?))
}

/// Plans static quantization of `model` (which should have been prepared: constants as
/// initializers, BatchNorm folded).
pub fn plan(model: &ModelProto, config: &StaticConfig) -> Result<StaticPlan, QuantError> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| QuantError::Unsupported("no graph".into()))?;
    let ix = GraphIndex::new(g);
    let types = infer_elem_types(g);
    let c = Ctx {
        ix: &ix,
        types: &types,
    };
    let mut nodes: BTreeMap<usize, NodePlan> = BTreeMap::new();
    let mut skipped = Vec::new();

    // 1. Compute operators.
    for (i, n) in g.node.iter().enumerate() {
        if !is_default_domain(&n.domain) {
            continue;
        }
        let Some(rule) = rule_for(&n.op_type) else {
            continue;
        };
        if excluded_by(n, &config.exclude) {
            skipped.push((node_label(n), "excluded".to_owned()));
            continue;
        }
        match rule(&c, n) {
            Ok(p) => {
                nodes.insert(i, p);
            }
            Err(why) => skipped.push((node_label(n), why.to_owned())),
        }
    }

    // 2. ReLU / Clip folded into the quantized node before them (chains like ReLU → Clip too).
    let mut folds: BTreeMap<usize, (String, String)> = BTreeMap::new();
    let mut alias: HashMap<String, String> = HashMap::new();
    if !config.activations_symmetric {
        for (i, n) in g.node.iter().enumerate() {
            if !FOLDED_OPS.contains(&n.op_type.as_str())
                || !is_default_domain(&n.domain)
                || excluded_by(n, &config.exclude)
            {
                continue;
            }
            let (Some(x), Some(y)) = (n.input.first(), n.output.first()) else {
                continue;
            };
            let t = alias.get(x).cloned().unwrap_or_else(|| x.clone());
            let Some((p, _)) = ix.producer(&t) else { continue };
            let producer_quantized = nodes
                .get(&p)
                .is_some_and(|np| matches!(np.output, Output::Quantized | Output::FloatAllowed));
            let bounds_ok = clip_bounds(&c, n).is_some_and(|(lo, hi)| lo <= 0.0 && hi >= 0.0);
            if producer_quantized && bounds_ok && ix.only_read_by(x, i) && !ix.is_graph_output(y) {
                if let Some(np) = nodes.get_mut(&p) {
                    np.output = Output::Quantized;
                }
                folds.insert(i, (t.clone(), y.clone()));
                alias.insert(y.clone(), t);
            }
        }
    }
    let canon = |name: &str| -> String { alias.get(name).cloned().unwrap_or_else(|| name.to_owned()) };

    // Quantized tensors so far: activation inputs and quantized outputs of compute nodes.
    let mut quantized: BTreeMap<String, ParamSource> = BTreeMap::new();
    let range_key = |t: &str| -> String {
        // A folded activation's input carries the activation's output range.
        folds
            .values()
            .rfind(|(input, _)| input == t)
            .map_or_else(|| t.to_owned(), |(_, out)| out.clone())
    };
    for (&i, np) in &nodes {
        let n = &g.node[i];
        for (slot, role) in np.roles.iter().enumerate() {
            if *role == Role::Activation {
                let t = canon(&n.input[slot]);
                quantized
                    .entry(t.clone())
                    .or_insert_with(|| ParamSource::Range(range_key(&t)));
            }
        }
        if np.output == Output::Quantized {
            let t = n.output[0].clone();
            quantized
                .entry(t.clone())
                .or_insert_with(|| ParamSource::Range(range_key(&t)));
        }
    }

    // 3. Data movement after (or before) quantized tensors, in graph order.
    for (i, n) in g.node.iter().enumerate() {
        if !MOVEMENT_OPS.contains(&n.op_type.as_str())
            || !is_default_domain(&n.domain)
            || nodes.contains_key(&i)
        {
            continue;
        }
        let Some(x) = n.input.first().map(|x| canon(x)) else {
            continue;
        };
        let Some(y) = n.output.first() else { continue };
        let single_output = n
            .output
            .iter()
            .skip(1)
            .all(|o| o.is_empty() || ix.consumers(o).is_empty());
        if !quantized.contains_key(&x) || !c.float_activation(&x) || !single_output {
            continue;
        }
        if excluded_by(n, &config.exclude) {
            skipped.push((node_label(n), "excluded".to_owned()));
            continue;
        }
        let mut roles = vec![Role::Activation];
        roles.resize(n.input.len(), Role::Keep);
        nodes.insert(
            i,
            NodePlan {
                roles,
                output: Output::SharesInput,
            },
        );
        quantized.insert(y.clone(), ParamSource::SameAs(x));
    }

    let mut calibrate: BTreeSet<String> = BTreeSet::new();
    for src in quantized.values() {
        if let ParamSource::Range(r) = src {
            calibrate.insert(r.clone());
        }
    }
    Ok(StaticPlan {
        config: config.clone(),
        nodes,
        folds,
        alias,
        quantized,
        calibrate: calibrate.into_iter().collect(),
        skipped,
    })
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StaticReport {
    /// Quantized nodes per operator type.
    pub quantized_ops: BTreeMap<String, usize>,
    /// ReLU/Clip nodes folded into quantized ranges.
    pub folded_activations: usize,
    /// Activation tensors with a Q/DQ pair.
    pub quantized_tensors: usize,
    /// Weight tensors stored as int8.
    pub int8_weights: usize,
    /// Nodes left in float, with the reason.
    pub skipped: Vec<(String, String)>,
}

struct Builder<'a, 'g> {
    fresh: onnx::graph::FreshNames<'a, 'g>,
    patch: Patch,
}

impl Builder<'_, '_> {
    fn scalar_or_vector<T: onnx::tensor::Element>(&mut self, base: &str, values: &[T]) -> String {
        let name = self.fresh.name(base);
        let dims: Vec<i64> = if values.len() == 1 {
            vec![]
        } else {
            vec![values.len() as i64]
        };
        self.patch
            .add_initializers
            .push(TensorProto::from_values(name.clone(), &dims, values));
        name
    }

    fn node(
        &mut self,
        op: &str,
        name_base: &str,
        inputs: Vec<String>,
        output_base: &str,
        axis: Option<usize>,
    ) -> String {
        let out = self.fresh.name(output_base);
        let name = self.fresh.name(name_base);
        self.patch.add_nodes.push(NodeProto {
            op_type: op.into(),
            name,
            input: inputs,
            output: vec![out.clone()],
            attribute: axis.map(|a| attr_int("axis", a as i64)).into_iter().collect(),
            ..Default::default()
        });
        out
    }

    /// Scale and zero-point initializers for `params` of element type `qtype`.
    fn param_tensors(&mut self, base: &str, params: &[QParams], zp_type: DataType) -> (String, String) {
        let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        let scale = self.scalar_or_vector(&format!("{base}_scale"), &scales);
        let zps: Vec<i32> = params.iter().map(|p| p.zero_point).collect();
        let zp = match zp_type {
            DataType::Int8 => self.scalar_or_vector(
                &format!("{base}_zero_point"),
                &zps.iter().map(|&z| z as i8).collect::<Vec<_>>(),
            ),
            DataType::Uint8 => self.scalar_or_vector(
                &format!("{base}_zero_point"),
                &zps.iter().map(|&z| z as u8).collect::<Vec<_>>(),
            ),
            _ => self.scalar_or_vector(&format!("{base}_zero_point"), &zps),
        };
        (scale, zp)
    }

    /// A quantized constant behind a DequantizeLinear; returns the DQ output.
    fn const_dq(
        &mut self,
        base: &str,
        dims: &[i64],
        ints: &[i32],
        qtype: DataType,
        params: &[QParams],
        axis: Option<usize>,
    ) -> String {
        let q_name = self.fresh.name(&format!("{base}_quantized"));
        let t = match qtype {
            DataType::Int8 => TensorProto::from_values(
                q_name.clone(),
                dims,
                &ints.iter().map(|&v| v as i8).collect::<Vec<_>>(),
            ),
            DataType::Uint8 => TensorProto::from_values(
                q_name.clone(),
                dims,
                &ints.iter().map(|&v| v as u8).collect::<Vec<_>>(),
            ),
            _ => TensorProto::from_values(q_name.clone(), dims, ints),
        };
        self.patch.add_initializers.push(t);
        let (scale, zp) = self.param_tensors(base, params, qtype);
        let axis = axis.filter(|_| params.len() > 1);
        self.node(
            "DequantizeLinear",
            &format!("{base}_DequantizeLinear"),
            vec![q_name, scale, zp],
            &format!("{base}_dequantized"),
            axis,
        )
    }
}

/// Applies a plan with calibrated `ranges` (as [`crate::calibrate::CalibrationStats::ranges`]
/// returns them) and returns the quantized model.
pub fn apply(
    model: &ModelProto,
    plan: &StaticPlan,
    ranges: &HashMap<String, (f32, f32)>,
) -> Result<(ModelProto, StaticReport), QuantError> {
    let cfg = &plan.config;
    let mut model = model.clone();
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| QuantError::Unsupported("no graph".into()))?;
    let ix = GraphIndex::new(g);
    let mut b = Builder {
        fresh: ix.fresh(),
        patch: Patch::default(),
    };
    let mut report = StaticReport {
        skipped: plan.skipped.clone(),
        folded_activations: plan.folds.len(),
        ..Default::default()
    };
    let act_type = cfg.activations.data_type();

    // Parameters of every quantized tensor.
    let mut params: HashMap<String, QParams> = HashMap::new();
    fn resolve(
        t: &str,
        plan: &StaticPlan,
        ranges: &HashMap<String, (f32, f32)>,
        cfg: &StaticConfig,
        memo: &mut HashMap<String, QParams>,
        depth: usize,
    ) -> Result<QParams, QuantError> {
        if let Some(p) = memo.get(t) {
            return Ok(*p);
        }
        let p = match plan.quantized.get(t) {
            Some(ParamSource::Range(r)) => {
                let &(lo, hi) = ranges.get(r).ok_or_else(|| {
                    QuantError::Calibration(format!("no calibrated range for tensor '{r}'"))
                })?;
                QParams::from_range(lo, hi, cfg.activations, cfg.activations_symmetric, false)
            }
            Some(ParamSource::SameAs(u)) if depth < 10_000 => resolve(u, plan, ranges, cfg, memo, depth + 1)?,
            _ => {
                return Err(QuantError::Calibration(format!(
                    "tensor '{t}' has no quantization parameters"
                )));
            }
        };
        memo.insert(t.to_owned(), p);
        Ok(p)
    }
    for t in plan.quantized.keys() {
        resolve(t, plan, ranges, cfg, &mut params, 0)?;
    }

    // Q/DQ pairs for activations; graph outputs keep their name on the DQ side.
    let mut dq_of: HashMap<String, String> = HashMap::new();
    let mut renamed_outputs: HashMap<String, String> = HashMap::new();
    for t in plan.quantized.keys() {
        let p = params[t];
        let (scale, zp) = b.param_tensors(t, &[p], act_type);
        let source = if ix.is_graph_output(t) {
            let float = b.fresh.name(&format!("{t}_float"));
            renamed_outputs.insert(t.clone(), float.clone());
            float
        } else {
            t.clone()
        };
        let q = b.node(
            "QuantizeLinear",
            &format!("{t}_QuantizeLinear"),
            vec![source, scale.clone(), zp.clone()],
            &format!("{t}_quantized"),
            None,
        );
        let dq_out = if ix.is_graph_output(t) {
            t.clone()
        } else {
            b.fresh.name(&format!("{t}_dequantized"))
        };
        b.patch.add_nodes.push(NodeProto {
            op_type: "DequantizeLinear".into(),
            name: b.fresh.name(&format!("{t}_DequantizeLinear")),
            input: vec![q, scale, zp],
            output: vec![dq_out.clone()],
            ..Default::default()
        });
        dq_of.insert(t.clone(), dq_out);
        report.quantized_tensors += 1;
    }

    // Weights, biases and constant operands of quantized nodes.
    let mut weight_cache: HashMap<(String, Option<usize>), (Vec<QParams>, String)> = HashMap::new();
    let mut const_cache: HashMap<String, String> = HashMap::new();
    let mut new_inputs: HashMap<usize, Vec<String>> = HashMap::new();
    for (&i, np) in &plan.nodes {
        let n = &g.node[i];
        let mut inputs = n.input.clone();
        let mut weight_params: HashMap<usize, (Vec<QParams>, Option<usize>)> = HashMap::new();
        // Weights first: biases need their scales.
        for (slot, role) in np.roles.iter().enumerate() {
            let Role::Weight { axis } = *role else { continue };
            let w = ix
                .constant(&n.input[slot])
                .ok_or_else(|| QuantError::Unsupported(format!("weight of {}", node_label(n))))?;
            let dims: Vec<usize> = w.dims.iter().map(|&d| d.max(0) as usize).collect();
            let values = w.values::<f32>()?;
            let axis = (cfg.per_channel && dims.get(axis).is_some_and(|&d| d > 1)).then_some(axis);
            let mut wp: Vec<QParams> = ranges_along(&values, &dims, axis)
                .into_iter()
                .map(|(lo, hi)| {
                    QParams::from_range(lo, hi, QType::S8, cfg.weights_symmetric, cfg.reduce_range)
                })
                .collect();
            // An int32 bias must not overflow: widen a channel's weight scale if its bias needs it.
            if let Some(bias_slot) = np
                .roles
                .iter()
                .position(|r| matches!(r, Role::Bias { weight, .. } if *weight == slot))
            {
                let act = canon_param(plan, &params, &n.input[0])?;
                if let Some(bias) = ix.constant(&n.input[bias_slot]).and_then(tensor_as_f32) {
                    let limit = f64::from(i32::MAX) * 0.5;
                    for (ch, &bv) in bias.iter().enumerate() {
                        let k = if wp.len() == 1 { 0 } else { ch };
                        let s = f64::from(act.scale) * f64::from(wp[k].scale);
                        if f64::from(bv).abs() / s > limit {
                            wp[k].scale = (f64::from(bv).abs() / limit / f64::from(act.scale)) as f32;
                        }
                    }
                }
            }
            let key = (n.input[slot].clone(), axis);
            let dq = match weight_cache.get(&key) {
                Some((cached, dq)) if *cached == wp => dq.clone(),
                _ => {
                    let ints = quantize_along(&values, &dims, axis, &wp);
                    let dq = b.const_dq(&n.input[slot], &w.dims, &ints, DataType::Int8, &wp, axis);
                    report.int8_weights += 1;
                    weight_cache.insert(key, (wp.clone(), dq.clone()));
                    dq
                }
            };
            inputs[slot] = dq;
            weight_params.insert(slot, (wp, axis));
        }
        for (slot, role) in np.roles.iter().enumerate() {
            match *role {
                Role::Activation => {
                    let t = plan.alias.get(&n.input[slot]).unwrap_or(&n.input[slot]);
                    inputs[slot] = dq_of.get(t).cloned().unwrap_or_else(|| t.clone());
                }
                Role::Bias { activation, weight } => {
                    let act = canon_param(plan, &params, &n.input[activation])?;
                    let (wp, _) = &weight_params[&weight];
                    let bias = ix
                        .constant(&n.input[slot])
                        .and_then(tensor_as_f32)
                        .ok_or_else(|| QuantError::Unsupported(format!("bias of {}", node_label(n))))?;
                    let bp: Vec<QParams> = wp
                        .iter()
                        .map(|w| QParams {
                            scale: act.scale * w.scale,
                            zero_point: 0,
                            qmin: i32::MIN + 1,
                            qmax: i32::MAX,
                        })
                        .collect();
                    let axis = (bp.len() > 1).then_some(0);
                    let ints = quantize_along(&bias, &[bias.len()], axis, &bp);
                    inputs[slot] = b.const_dq(
                        &n.input[slot],
                        &[bias.len() as i64],
                        &ints,
                        DataType::Int32,
                        &bp,
                        axis,
                    );
                }
                Role::ConstActivation => {
                    let name = n.input[slot].clone();
                    let dq = match const_cache.get(&name) {
                        Some(dq) => dq.clone(),
                        None => {
                            let t = ix
                                .constant(&name)
                                .ok_or_else(|| QuantError::Unsupported(format!("constant {name}")))?;
                            let values = tensor_as_f32(t)
                                .ok_or_else(|| QuantError::Unsupported(format!("constant {name}")))?;
                            let (lo, hi) = ranges_along(&values, &[values.len()], None)[0];
                            let p = QParams::from_range(
                                lo,
                                hi,
                                cfg.activations,
                                cfg.activations_symmetric,
                                false,
                            );
                            let ints = quantize_along(&values, &[values.len()], None, &[p]);
                            let dq = b.const_dq(&name, &t.dims, &ints, act_type, &[p], None);
                            const_cache.insert(name.clone(), dq.clone());
                            dq
                        }
                    };
                    inputs[slot] = dq;
                }
                Role::Weight { .. } | Role::Keep => {}
            }
        }
        *report.quantized_ops.entry(n.op_type.clone()).or_default() += 1;
        new_inputs.insert(i, inputs);
    }

    // Rewrite every node that reads a quantized tensor, a folded output, or writes a renamed output.
    for (i, n) in g.node.iter().enumerate() {
        if plan.folds.contains_key(&i) {
            b.patch.remove_nodes.push(i);
            continue;
        }
        let inputs = new_inputs.remove(&i).unwrap_or_else(|| {
            n.input
                .iter()
                .map(|x| {
                    let t = plan.alias.get(x).unwrap_or(x);
                    dq_of.get(t).cloned().unwrap_or_else(|| t.clone())
                })
                .collect()
        });
        let outputs: Vec<String> = n
            .output
            .iter()
            .map(|o| renamed_outputs.get(o).cloned().unwrap_or_else(|| o.clone()))
            .collect();
        let subgraph_reads = n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty());
        if inputs != n.input || outputs != n.output {
            if subgraph_reads {
                return Err(QuantError::Unsupported(format!(
                    "node {} holds a subgraph and reads quantized tensors; exclude it or its inputs' producers",
                    node_label(n)
                )));
            }
            let mut m = n.clone();
            m.input = inputs;
            m.output = outputs;
            b.patch.remove_nodes.push(i);
            b.patch.add_nodes.push(m);
        }
    }
    let patch = std::mem::take(&mut b.patch);
    drop(b);
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| QuantError::Unsupported("no graph".into()))?;
    patch.apply(graph)?;
    Ok((model, report))
}

/// Parameters of the (canonical) tensor a node reads.
fn canon_param(
    plan: &StaticPlan,
    params: &HashMap<String, QParams>,
    name: &str,
) -> Result<QParams, QuantError> {
    let t = plan.alias.get(name).map_or(name, String::as_str);
    params
        .get(t)
        .copied()
        .ok_or_else(|| QuantError::Calibration(format!("tensor '{t}' has no quantization parameters")))
}

/// Marks nothing as quantized twice: the set of tensors a plan quantizes (for tests and reports).
pub fn quantized_tensors(plan: &StaticPlan) -> HashSet<String> {
    plan.quantized.keys().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx::builder::{Dim, GraphBuilder, attr_ints};

    /// x → Conv(w, b) → Relu → Clip(lo, hi) → Conv2 → y, with weights [2, 1, 1, 1].
    fn model(clip: (f32, f32)) -> ModelProto {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &["n".into(), 1.into(), 2.into(), 2.into()]);
        let w = b.initializer(TensorProto::from_values("w", &[2, 1, 1, 1], &[0.5f32, -2.0]));
        let bias = b.initializer(TensorProto::from_values("b", &[2], &[0.1f32, 0.2]));
        let k = vec![attr_ints("kernel_shape", &[1, 1])];
        let c = b.node("Conv", "conv", &[&x, &w, &bias], k.clone());
        let r = b.node("Relu", "relu", &[&c], vec![]);
        let lo = b.initializer(TensorProto::from_values("lo", &[], &[clip.0]));
        let hi = b.initializer(TensorProto::from_values("hi", &[], &[clip.1]));
        let cl = b.node("Clip", "clip", &[&r, &lo, &hi], vec![]);
        let w2 = b.initializer(TensorProto::from_values("w2", &[1, 2, 1, 1], &[1.0f32, 1.0]));
        let y = b.node("Conv", "conv2", &[&cl, &w2], k);
        b.output(&y, DataType::Float, &[Dim::Fixed(1)]);
        b.finish("")
    }

    fn ranges() -> HashMap<String, (f32, f32)> {
        [
            ("x", (-1.0, 3.0)),
            ("conv", (-4.0, 4.0)),
            ("relu", (0.0, 4.0)),
            ("clip", (0.0, 2.55)),
            ("conv2", (-1.0, 5.1)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn find<'a>(m: &'a ModelProto, op: &str, input0: &str) -> &'a NodeProto {
        m.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .find(|n| n.op_type == op && n.input[0] == input0)
            .unwrap_or_else(|| panic!("no {op} reading {input0}"))
    }

    fn init<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
        m.graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap()
    }

    #[test]
    fn qdq_pairs_weights_biases_and_folded_activations() {
        let m = model((0.0, 6.0));
        let p = plan(&m, &StaticConfig::default()).unwrap();
        assert_eq!(
            p.calibrate,
            vec!["clip", "conv2", "x"],
            "relu and clip fold into conv's range"
        );
        let (q, report) = apply(&m, &p, &ranges()).unwrap();
        onnx::io::check_model(&q).unwrap();
        assert_eq!(report.folded_activations, 2);
        let g = q.graph.as_ref().unwrap();
        assert!(g.node.iter().all(|n| n.op_type != "Relu" && n.op_type != "Clip"));
        // The conv output is quantized with the clip output's range [0, 2.55]: u8 zero point 0.
        let qconv = find(&q, "QuantizeLinear", "conv");
        let scale = init(&q, &qconv.input[1]).values::<f32>().unwrap()[0];
        assert!((scale - 0.01).abs() < 1e-7, "{scale}");
        assert_eq!(init(&q, &qconv.input[2]).values::<u8>().unwrap(), vec![0]);
        // Input x: asymmetric u8 over [-1, 3].
        let qx = find(&q, "QuantizeLinear", "x");
        let sx = init(&q, &qx.input[1]).values::<f32>().unwrap()[0];
        assert!((sx - 4.0 / 255.0).abs() < 1e-7);
        // Per-channel int8 weights: scales max|w| / 127 along axis 0.
        let conv = g
            .node
            .iter()
            .find(|n| n.op_type == "Conv" && n.output[0] == "conv")
            .unwrap();
        let wdq = g.node.iter().find(|n| n.output[0] == conv.input[1]).unwrap();
        assert_eq!(wdq.op_type, "DequantizeLinear");
        assert_eq!(attr_i(wdq, "axis", -1), 0);
        let ws = init(&q, &wdq.input[1]).values::<f32>().unwrap();
        assert!(
            (ws[0] - 0.5 / 127.0).abs() < 1e-9 && (ws[1] - 2.0 / 127.0).abs() < 1e-9,
            "{ws:?}"
        );
        assert_eq!(init(&q, &wdq.input[0]).values::<i8>().unwrap(), vec![127, -127]);
        // Bias: int32, scale = input scale × weight scale per channel, zero point 0.
        let bdq = g.node.iter().find(|n| n.output[0] == conv.input[2]).unwrap();
        let bs = init(&q, &bdq.input[1]).values::<f32>().unwrap();
        for (k, w) in ws.iter().enumerate() {
            assert!((bs[k] - sx * w).abs() < 1e-12, "bias scale {k}");
        }
        let bq = init(&q, &bdq.input[0]).values::<i32>().unwrap();
        assert_eq!(
            bq,
            vec![(0.1 / bs[0]).round() as i32, (0.2 / bs[1]).round() as i32]
        );
        assert_eq!(init(&q, &bdq.input[2]).values::<i32>().unwrap(), vec![0, 0]);
        // The graph output keeps its name and is produced by the last DequantizeLinear.
        assert_eq!(
            g.node.iter().find(|n| n.output[0] == "conv2").unwrap().op_type,
            "DequantizeLinear"
        );
    }

    #[test]
    fn per_tensor_weights_and_s8_activations() {
        let m = model((0.0, 6.0));
        let cfg = StaticConfig {
            activations: QType::S8,
            per_channel: false,
            ..StaticConfig::default()
        };
        let (q, _) = apply(&m, &plan(&m, &cfg).unwrap(), &ranges()).unwrap();
        let qconv = find(&q, "QuantizeLinear", "conv");
        assert_eq!(
            init(&q, &qconv.input[2]).values::<i8>().unwrap(),
            vec![-128],
            "[0, x] range in s8"
        );
        let g = q.graph.as_ref().unwrap();
        let conv = g
            .node
            .iter()
            .find(|n| n.op_type == "Conv" && n.output[0] == "conv")
            .unwrap();
        let wdq = g.node.iter().find(|n| n.output[0] == conv.input[1]).unwrap();
        assert!(attribute(wdq, "axis").is_none());
        assert_eq!(init(&q, &wdq.input[1]).dims, Vec::<i64>::new(), "one scale");
        assert_eq!(init(&q, &wdq.input[0]).values::<i8>().unwrap(), vec![32, -127]);
    }

    #[test]
    fn a_clip_whose_range_excludes_zero_is_not_folded() {
        let m = model((1.0, 6.0));
        let p = plan(&m, &StaticConfig::default()).unwrap();
        assert!(p.calibrate.contains(&"clip".to_owned()) && p.calibrate.contains(&"relu".to_owned()));
        let (q, r) = apply(&m, &p, &ranges()).unwrap();
        assert_eq!(r.folded_activations, 1, "only the ReLU");
        assert!(q.graph.as_ref().unwrap().node.iter().any(|n| n.op_type == "Clip"));
    }

    #[test]
    fn excluded_nodes_stay_float_and_unknown_excludes_are_errors() {
        let m = model((0.0, 6.0));
        let cfg = StaticConfig {
            exclude: vec!["conv2".into()],
            ..StaticConfig::default()
        };
        let p = plan(&m, &cfg).unwrap();
        assert!(p.skipped.iter().any(|(n, why)| n == "conv2" && why == "excluded"));
        let (q, _) = apply(&m, &p, &ranges()).unwrap();
        let g = q.graph.as_ref().unwrap();
        let conv2 = g.node.iter().find(|n| n.name == "conv2").unwrap();
        assert_eq!(conv2.input[1], "w2", "float weights kept");
        assert_eq!(conv2.output[0], "conv2", "output not quantized");
        let by_type = StaticConfig {
            exclude: vec!["Conv".into()],
            ..StaticConfig::default()
        };
        assert_eq!(plan(&m, &by_type).unwrap().quantized_nodes(), 0);
        let e = check_excludes(&m, &["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("'nope'"), "{e}");
        check_excludes(&m, &["conv".into(), "Relu".into(), "clip".into()]).unwrap();
    }

    #[test]
    fn symmetric_activations_keep_the_relu() {
        let m = model((0.0, 6.0));
        let cfg = StaticConfig {
            activations_symmetric: true,
            ..StaticConfig::default()
        };
        let (q, r) = apply(&m, &plan(&m, &cfg).unwrap(), &ranges()).unwrap();
        assert_eq!(r.folded_activations, 0);
        assert!(q.graph.as_ref().unwrap().node.iter().any(|n| n.op_type == "Relu"));
        let qx = find(&q, "QuantizeLinear", "x");
        assert_eq!(init(&q, &qx.input[2]).values::<u8>().unwrap(), vec![128]);
    }
}

#[cfg(test)]
mod gemm_tests {
    use super::*;
    use onnx::builder::{Dim, GraphBuilder};

    fn gemm(trans_b: bool) -> (ModelProto, HashMap<String, (f32, f32)>) {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &["n".into(), Dim::Fixed(2)]);
        // B is [K=2, N=3] (or its transpose); column j has max |w| = j + 1.
        let kn = [1.0f32, -2.0, 3.0, 0.5, 1.0, -1.5];
        let nk = [1.0f32, 0.5, -2.0, 1.0, 3.0, -1.5];
        let (dims, vals) = if trans_b { ([3, 2], nk) } else { ([2, 3], kn) };
        let w = b.initializer(TensorProto::from_values("w", &dims, &vals));
        let c = b.initializer(TensorProto::from_values("c", &[3], &[0.0f32, 0.0, 0.0]));
        let y = b.node(
            "Gemm",
            "fc",
            &[&x, &w, &c],
            vec![attr_int("transB", i64::from(trans_b))],
        );
        b.output(&y, DataType::Float, &["n".into(), Dim::Fixed(3)]);
        let ranges = [("x".to_owned(), (-1.0, 1.0))].into_iter().collect();
        (b.finish(""), ranges)
    }

    #[test]
    fn gemm_weights_are_per_output_column_whatever_the_layout() {
        for trans_b in [false, true] {
            let (m, ranges) = gemm(trans_b);
            let p = plan(&m, &StaticConfig::default()).unwrap();
            assert_eq!(
                p.calibrate,
                vec!["x"],
                "a float-output Gemm needs no output range"
            );
            let (q, _) = apply(&m, &p, &ranges).unwrap();
            let g = q.graph.as_ref().unwrap();
            let gemm = g.node.iter().find(|n| n.op_type == "Gemm").unwrap();
            assert_eq!(gemm.output[0], "fc", "float output, no Q/DQ after it");
            let dq = g.node.iter().find(|n| n.output[0] == gemm.input[1]).unwrap();
            assert_eq!(attr_i(dq, "axis", -1), if trans_b { 0 } else { 1 });
            let s = g
                .initializer
                .iter()
                .find(|t| t.name == dq.input[1])
                .unwrap()
                .values::<f32>()
                .unwrap();
            for (j, v) in s.iter().enumerate() {
                assert!((v - (j as f32 + 1.0) / 127.0).abs() < 1e-7, "column {j}: {v}");
            }
        }
    }
}
