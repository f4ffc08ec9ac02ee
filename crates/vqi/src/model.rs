//! The reference classifier: a small four-convolution CNN as a flat parameter vector, its seeded
//! Kaiming-normal initialisation, one image's forward and backward pass (layers in [`crate::nn`]),
//! and its export to ONNX with the project's own graph builder.
//!
//! Topology (input 3×64×64): four blocks of 3×3 convolution (padding 1) + ReLU, the first three
//! followed by 2×2 max pooling, then global average pooling, `Flatten` and a linear layer to the
//! class scores. With the default widths 16, 32, 64, 64 and 12 classes it has 61,292 parameters.
//!
//! Weights are drawn from [`onnx::rng::Rng`], so a seed gives the same initial network in every
//! process and thread. Kaiming-normal initialisation matters: a uniform fan-in initialiser (burn's
//! default, used by an earlier trainer) converged about twice as slowly on this task.

use std::ops::Range;

use onnx::ModelProto;
use onnx::builder::{Dim, GraphBuilder, attr_int, attr_ints};
use onnx::proto::{DataType, TensorProto};
use onnx::rng::Rng;

use crate::error::VqiError;
use crate::nn::{self, ConvShape};

/// Name of the model's image input.
pub const INPUT_NAME: &str = "input";
/// Name of the model's class-score output.
pub const OUTPUT_NAME: &str = "logits";

/// Shape of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Output channels of the four convolutions.
    pub widths: [usize; 4],
    /// Number of classes.
    pub classes: usize,
    /// Input side length (square images).
    pub input_size: usize,
}

impl NetConfig {
    /// The reference network: widths 16, 32, 64, 64 on 64×64 inputs.
    pub fn reference(classes: usize) -> Self {
        Self {
            widths: [16, 32, 64, 64],
            classes,
            input_size: 64,
        }
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> usize {
        let mut n = 0;
        let mut c_in = 3;
        for &c in &self.widths {
            n += c * c_in * 9 + c;
            c_in = c;
        }
        n + c_in * self.classes + self.classes
    }

    /// Values in one input image (3 × size × size).
    pub fn image_len(&self) -> usize {
        3 * self.input_size * self.input_size
    }
}

/// Where each layer's tensors sit in the flat parameter vector (and in a gradient of it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    convs: [ConvLayer; 4],
    head_weight: Range<usize>,
    head_bias: Range<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ConvLayer {
    shape: ConvShape,
    weight: Range<usize>,
    bias: Range<usize>,
}

impl Layout {
    fn new(cfg: &NetConfig) -> Self {
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            at - n..at
        };
        let (mut c_in, mut side) = (3, cfg.input_size);
        let convs = cfg.widths.map(|c_out| {
            let shape = ConvShape {
                c_in,
                c_out,
                h: side,
                w: side,
            };
            let layer = ConvLayer {
                shape,
                weight: take(shape.weight_len()),
                bias: take(c_out),
            };
            c_in = c_out;
            side /= 2;
            layer
        });
        let head_weight = take(c_in * cfg.classes);
        let head_bias = take(cfg.classes);
        Self {
            convs,
            head_weight,
            head_bias,
        }
    }

    fn len(&self) -> usize {
        self.head_bias.end
    }
}

/// The two tensors of a layer in a gradient, borrowed mutably at once.
fn pair_mut<'a>(
    v: &'a mut [f32],
    weight: &Range<usize>,
    bias: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    debug_assert_eq!(weight.end, bias.start, "a layer's bias follows its weight");
    v[weight.start..bias.end].split_at_mut(weight.len())
}

/// The network: its shape and all parameters in one vector (per layer: weight, then bias).
#[derive(Clone, Debug, PartialEq)]
pub struct InspectionNet {
    cfg: NetConfig,
    layout: Layout,
    params: Vec<f32>,
}

/// Scratch space for one image's forward and backward pass (one per worker thread).
#[derive(Clone, Debug)]
pub struct Workspace {
    cols: [Vec<f32>; 4],
    acts: [Vec<f32>; 4],
    pooled: [Vec<f32>; 3],
    argmax: [Vec<u32>; 3],
    gap: Vec<f32>,
    logits: Vec<f32>,
    dact: Vec<f32>,
    dcol: Vec<f32>,
    dpool: Vec<f32>,
    dgap: Vec<f32>,
    dlogits: Vec<f32>,
}

impl Workspace {
    /// Buffers sized for `net`.
    pub fn new(net: &InspectionNet) -> Self {
        let convs = &net.layout.convs;
        let cols = convs.each_ref().map(|l| vec![0.0; l.shape.k() * l.shape.hw()]);
        let acts = convs.each_ref().map(|l| vec![0.0; l.shape.c_out * l.shape.hw()]);
        let pooled_len = |i: usize| {
            let s = convs[i].shape;
            s.c_out * (s.h / 2) * (s.w / 2)
        };
        let max_of = |f: &dyn Fn(&ConvShape) -> usize| convs.iter().map(|l| f(&l.shape)).max().unwrap_or(0);
        Self {
            cols,
            acts,
            pooled: [0, 1, 2].map(|i| vec![0.0; pooled_len(i)]),
            argmax: [0, 1, 2].map(|i| vec![0; pooled_len(i)]),
            gap: vec![0.0; net.cfg.widths[3]],
            logits: vec![0.0; net.cfg.classes],
            dact: vec![0.0; max_of(&|s| s.c_out * s.hw())],
            dcol: vec![0.0; max_of(&|s| s.k() * s.hw())],
            dpool: vec![0.0; max_of(&|s| s.c_in * s.hw())],
            dgap: vec![0.0; net.cfg.widths[3]],
            dlogits: vec![0.0; net.cfg.classes],
        }
    }
}

impl InspectionNet {
    /// A freshly initialised network, weights drawn from `seed`: Kaiming-normal convolutions
    /// (std √(2/fan_in)), a normal head (std √(1/in)), zero biases.
    pub fn new(cfg: &NetConfig, seed: u64) -> Self {
        let layout = Layout::new(cfg);
        let mut params = vec![0.0f32; layout.len()];
        let mut rng = Rng::new(seed);
        for l in &layout.convs {
            let fan_in = l.shape.k();
            let w = rng.normal_vec(l.weight.len(), (2.0 / fan_in as f32).sqrt());
            params[l.weight.clone()].copy_from_slice(&w);
        }
        let d = cfg.widths[3];
        let w = rng.normal_vec(layout.head_weight.len(), (1.0 / d as f32).sqrt());
        params[layout.head_weight.clone()].copy_from_slice(&w);
        Self {
            cfg: *cfg,
            layout,
            params,
        }
    }

    /// The network's shape.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.params.len()
    }

    /// All parameters (per layer: weight, then bias).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// All parameters, for an optimiser step.
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// Class scores of one CHW image; the activations stay in `ws` for [`Self::backward`].
    pub fn forward<'w>(&self, image: &[f32], ws: &'w mut Workspace) -> &'w [f32] {
        debug_assert_eq!(image.len(), self.cfg.image_len());
        let p = &self.params;
        let mut input: &[f32] = image;
        for (i, l) in self.layout.convs.iter().enumerate() {
            let s = &l.shape;
            nn::im2col(s, input, &mut ws.cols[i]);
            nn::conv_forward(
                s,
                &p[l.weight.clone()],
                &p[l.bias.clone()],
                &ws.cols[i],
                &mut ws.acts[i],
            );
            nn::relu(&mut ws.acts[i]);
            if i < 3 {
                nn::maxpool_forward(
                    s.c_out,
                    s.h,
                    s.w,
                    &ws.acts[i],
                    &mut ws.pooled[i],
                    &mut ws.argmax[i],
                );
                input = &ws.pooled[i];
            }
        }
        nn::gap_forward(self.layout.convs[3].shape.hw(), &ws.acts[3], &mut ws.gap);
        nn::linear_forward(
            &p[self.layout.head_weight.clone()],
            &p[self.layout.head_bias.clone()],
            &ws.gap,
            &mut ws.logits,
        );
        &ws.logits
    }

    /// Backward pass of the image last run through [`Self::forward`] with `ws`: adds `scale` ×
    /// the gradient of its softmax cross-entropy against `target` to `grad` (laid out like the
    /// parameters) and returns the unscaled loss.
    pub fn backward(&self, target: usize, scale: f32, ws: &mut Workspace, grad: &mut [f32]) -> f32 {
        debug_assert_eq!(grad.len(), self.params.len());
        let p = &self.params;
        let lay = &self.layout;
        let loss = nn::softmax_cross_entropy(&ws.logits, target, scale, &mut ws.dlogits);
        let (gw, gb) = pair_mut(grad, &lay.head_weight, &lay.head_bias);
        nn::linear_backward(
            &p[lay.head_weight.clone()],
            &ws.gap,
            &ws.dlogits,
            gw,
            gb,
            &mut ws.dgap,
        );
        let last = lay.convs[3].shape;
        nn::gap_backward(last.hw(), &ws.dgap, &mut ws.dact[..last.c_out * last.hw()]);
        for (i, l) in lay.convs.iter().enumerate().rev() {
            let s = &l.shape;
            let dz = &mut ws.dact[..s.c_out * s.hw()];
            nn::relu_backward(&ws.acts[i], dz);
            let (gw, gb) = pair_mut(grad, &l.weight, &l.bias);
            let weight = &p[l.weight.clone()];
            if i == 0 {
                // The image itself needs no gradient.
                nn::conv_backward(s, weight, &ws.cols[i], dz, gw, gb, None);
                break;
            }
            let dcol = &mut ws.dcol[..s.k() * s.hw()];
            nn::conv_backward(s, weight, &ws.cols[i], dz, gw, gb, Some(&mut *dcol));
            let dpool = &mut ws.dpool[..s.c_in * s.hw()];
            dpool.fill(0.0);
            nn::col2im_add(s, dcol, dpool);
            let prev = lay.convs[i - 1].shape;
            nn::maxpool_backward(dpool, &ws.argmax[i - 1], &mut ws.dact[..prev.c_out * prev.hw()]);
        }
        loss
    }

    /// Exports the network to ONNX (opset 17): input `input` `[batch, 3, size, size]` float,
    /// output `logits` `[batch, classes]`.
    pub fn to_onnx(&self, doc: &str) -> Result<ModelProto, VqiError> {
        if let Some(bad) = self.params.iter().find(|v| !v.is_finite()) {
            return Err(VqiError::Training(format!(
                "a parameter holds {bad}: training diverged"
            )));
        }
        let cfg = &self.cfg;
        let mut b = GraphBuilder::new("vqi_inspection_net");
        let size = cfg.input_size as i64;
        let mut x = b.input(
            INPUT_NAME,
            DataType::Float,
            &[Dim::from("batch"), 3.into(), size.into(), size.into()],
        );
        for (i, l) in self.layout.convs.iter().enumerate() {
            let name = format!("conv{}", i + 1);
            let s = &l.shape;
            let dims = [
                s.c_out as i64,
                s.c_in as i64,
                nn::KERNEL as i64,
                nn::KERNEL as i64,
            ];
            let w = b.initializer(TensorProto::from_values(
                format!("{name}.weight"),
                &dims,
                &self.params[l.weight.clone()],
            ));
            let bias = b.initializer(TensorProto::from_values(
                format!("{name}.bias"),
                &[s.c_out as i64],
                &self.params[l.bias.clone()],
            ));
            let y = b.node(
                "Conv",
                &name,
                &[&x, &w, &bias],
                vec![
                    attr_ints("kernel_shape", &[3, 3]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                    attr_ints("strides", &[1, 1]),
                ],
            );
            x = b.node("Relu", &format!("{name}.relu"), &[&y], vec![]);
            if i < 3 {
                x = b.node(
                    "MaxPool",
                    &format!("pool{}", i + 1),
                    &[&x],
                    vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
                );
            }
        }
        let pooled = b.node("GlobalAveragePool", "gap", &[&x], vec![]);
        let flat = b.node("Flatten", "flatten", &[&pooled], vec![attr_int("axis", 1)]);
        let d = cfg.widths[3] as i64;
        let hw = b.initializer(TensorProto::from_values(
            "head.weight",
            &[d, cfg.classes as i64],
            &self.params[self.layout.head_weight.clone()],
        ));
        let hb = b.initializer(TensorProto::from_values(
            "head.bias",
            &[cfg.classes as i64],
            &self.params[self.layout.head_bias.clone()],
        ));
        // The weight is [in, out], so Gemm multiplies without transposing B.
        let logits = b.node_to(
            "Gemm",
            "head",
            &[&flat, &hw, &hb],
            OUTPUT_NAME,
            vec![attr_int("transB", 0)],
        );
        b.output(
            &logits,
            DataType::Float,
            &[Dim::from("batch"), (cfg.classes as i64).into()],
        );
        let model = b.finish(doc);
        onnx::io::check_model(&model)?;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_network_has_about_61k_parameters() {
        let cfg = NetConfig::reference(12);
        assert_eq!(cfg.parameters(), 61_292);
        let net = InspectionNet::new(&cfg, 1);
        assert_eq!(net.num_params(), cfg.parameters());
        assert_eq!(net, InspectionNet::new(&cfg, 1), "a seed gives one network");
        assert_ne!(net.params(), InspectionNet::new(&cfg, 2).params());
    }

    /// The whole network's backward pass against central differences of its loss, on a tiny
    /// configuration (8×8 input: 8 → 4 → 2 → 1 pixels per side through the blocks).
    #[test]
    fn the_network_gradient_matches_finite_differences() {
        let cfg = NetConfig {
            widths: [2, 3, 3, 4],
            classes: 3,
            input_size: 8,
        };
        let mut net = InspectionNet::new(&cfg, 9);
        // Non-zero biases so every ReLU sees both signs.
        let mut rng = Rng::new(10);
        for l in net.layout.convs.clone() {
            let b = rng.normal_vec(l.bias.len(), 0.3);
            net.params[l.bias].copy_from_slice(&b);
        }
        let image = rng.normal_vec(cfg.image_len(), 1.0);
        let target = 1;
        let mut ws = Workspace::new(&net);
        net.forward(&image, &mut ws);
        let mut grad = vec![0.0f32; net.num_params()];
        let loss = net.backward(target, 1.0, &mut ws, &mut grad);
        let loss_at = |net: &InspectionNet, ws: &mut Workspace| {
            let logits = net.forward(&image, ws).to_vec();
            let mut d = vec![0.0; logits.len()];
            f64::from(nn::softmax_cross_entropy(&logits, target, 1.0, &mut d))
        };
        assert!((f64::from(loss) - loss_at(&net, &mut ws)).abs() < 1e-6);
        let eps = 1e-3f32;
        let (mut checked, mut skipped) = (0, 0);
        for (i, &g) in grad.iter().enumerate() {
            let v = net.params[i];
            net.params[i] = v + eps;
            let up = loss_at(&net, &mut ws);
            net.params[i] = v - eps;
            let down = loss_at(&net, &mut ws);
            net.params[i] = v;
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let analytic = f64::from(g);
            // A step across a ReLU or max-pool kink makes the difference quotient meaningless;
            // detect it by the one-sided quotients disagreeing.
            let mid = loss_at(&net, &mut ws);
            let (right, left) = ((up - mid) / f64::from(eps), (mid - down) / f64::from(eps));
            if (right - left).abs() > 0.05 * (1.0 + numeric.abs()) {
                skipped += 1;
                continue;
            }
            checked += 1;
            assert!(
                (analytic - numeric).abs() <= 5e-3 * (1.0 + numeric.abs()),
                "parameter {i}: analytic {analytic}, numeric {numeric}"
            );
        }
        assert!(
            checked >= net.num_params() * 9 / 10,
            "{checked} checked, {skipped} at kinks"
        );
        assert!(grad.iter().any(|g| *g != 0.0));
    }
}
