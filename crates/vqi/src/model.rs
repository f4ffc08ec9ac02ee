//! The reference classifier: a small four-convolution CNN in burn, its seeded Kaiming-normal
//! initialisation, and its export to ONNX with the project's own graph builder.
//!
//! Topology (input 3×64×64): four blocks of 3×3 convolution (padding 1) + ReLU, the first three
//! followed by 2×2 max pooling, then global average pooling, `Flatten` and a linear layer to the
//! class scores. With the default widths 16, 32, 64, 64 and 12 classes it has 61,292 parameters.
//!
//! Weights are drawn from [`onnx::rng::Rng`], not burn's global generator, so a seed gives the
//! same initial network in every process and thread. Kaiming-normal initialisation matters: burn's
//! default convolution initialiser converges about twice as slowly on this task.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor, TensorData};
use onnx::ModelProto;
use onnx::builder::{Dim, GraphBuilder, attr_int, attr_ints};
use onnx::proto::{DataType, TensorProto};
use onnx::rng::Rng;

use crate::error::VqiError;

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
}

/// The network (burn module).
#[derive(Module, Debug)]
pub struct InspectionNet {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    conv4: Conv2d,
    pool: MaxPool2d,
    gap: AdaptiveAvgPool2d,
    head: Linear,
    act: Relu,
}

fn conv(c_in: usize, c_out: usize, rng: &mut Rng, device: &Device) -> Conv2d {
    let mut layer = Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device);
    let fan_in = c_in * 9;
    let w = rng.normal_vec(c_out * fan_in, (2.0 / fan_in as f32).sqrt());
    layer.weight = Param::from_data(TensorData::new(w, [c_out, c_in, 3, 3]), device);
    layer.bias = Some(Param::from_data(
        TensorData::new(vec![0.0f32; c_out], [c_out]),
        device,
    ));
    layer
}

impl InspectionNet {
    /// A freshly initialised network on `device`, weights drawn from `seed`.
    pub fn new(cfg: &NetConfig, seed: u64, device: &Device) -> Self {
        let mut rng = Rng::new(seed);
        let [a, b, c, d] = cfg.widths;
        let conv1 = conv(3, a, &mut rng, device);
        let conv2 = conv(a, b, &mut rng, device);
        let conv3 = conv(b, c, &mut rng, device);
        let conv4 = conv(c, d, &mut rng, device);
        let mut head = LinearConfig::new(d, cfg.classes).init(device);
        // burn stores a linear weight as [in, out].
        let w = rng.normal_vec(d * cfg.classes, (1.0 / d as f32).sqrt());
        head.weight = Param::from_data(TensorData::new(w, [d, cfg.classes]), device);
        head.bias = Some(Param::from_data(
            TensorData::new(vec![0.0f32; cfg.classes], [cfg.classes]),
            device,
        ));
        Self {
            conv1,
            conv2,
            conv3,
            conv4,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head,
            act: Relu::new(),
        }
    }

    /// Class scores (logits) for a batch `[n, 3, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.act.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.act.forward(self.conv2.forward(x)));
        let x = self.pool.forward(self.act.forward(self.conv3.forward(x)));
        let x = self.act.forward(self.conv4.forward(x));
        let x = self.gap.forward(x).flatten::<2>(1, 3);
        self.head.forward(x)
    }

    /// Exports the network to ONNX (opset 17): input `input` `[batch, 3, size, size]` float,
    /// output `logits` `[batch, classes]`.
    pub fn to_onnx(&self, cfg: &NetConfig, doc: &str) -> Result<ModelProto, VqiError> {
        let mut b = GraphBuilder::new("vqi_inspection_net");
        let size = cfg.input_size as i64;
        let mut x = b.input(
            INPUT_NAME,
            DataType::Float,
            &[Dim::from("batch"), 3.into(), size.into(), size.into()],
        );
        let convs = [&self.conv1, &self.conv2, &self.conv3, &self.conv4];
        for (i, layer) in convs.into_iter().enumerate() {
            let name = format!("conv{}", i + 1);
            let w = param_values(&layer.weight.val(), &format!("{name}.weight"))?;
            let dims: Vec<i64> = layer.weight.val().dims().iter().map(|&d| d as i64).collect();
            let w = b.initializer(TensorProto::from_values(format!("{name}.weight"), &dims, &w));
            let bias = layer
                .bias
                .as_ref()
                .ok_or_else(|| VqiError::Training(format!("{name} has no bias")))?;
            let bv = param_values(&bias.val(), &format!("{name}.bias"))?;
            let bias = b.initializer(TensorProto::from_values(
                format!("{name}.bias"),
                &[bv.len() as i64],
                &bv,
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
        let hw = param_values(&self.head.weight.val(), "head.weight")?;
        let hdims: Vec<i64> = self.head.weight.val().dims().iter().map(|&d| d as i64).collect();
        let hw = b.initializer(TensorProto::from_values("head.weight", &hdims, &hw));
        let head_bias = self
            .head
            .bias
            .as_ref()
            .ok_or_else(|| VqiError::Training("head has no bias".into()))?;
        let hb = param_values(&head_bias.val(), "head.bias")?;
        let hb = b.initializer(TensorProto::from_values("head.bias", &[hb.len() as i64], &hb));
        // The weight is [in, out] (burn's layout), so Gemm multiplies without transposing B.
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

fn param_values<const D: usize>(t: &Tensor<D>, name: &str) -> Result<Vec<f32>, VqiError> {
    let values: Vec<f32> = t
        .to_data()
        .try_to_vec::<f32>()
        .map_err(|e| VqiError::Training(format!("reading {name}: {e:?}")))?;
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(VqiError::Training(format!(
            "{name} holds {bad}: training diverged"
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_network_has_about_61k_parameters() {
        let cfg = NetConfig::reference(12);
        assert_eq!(cfg.parameters(), 61_292);
        let net = InspectionNet::new(&cfg, 1, &Device::flex());
        assert_eq!(net.num_params(), cfg.parameters());
    }
}
