//! Standard CNN architectures built with the [`GraphBuilder`]: ResNet-50, ResNet-101 (torchvision
//! v1.5 layout: stride on the 3x3 convolution) and MobileNetV2 (width 1.0), for 224x224 RGB
//! images in NCHW layout with a symbolic batch dimension.
//!
//! BatchNorm is folded into the convolutions (each Conv has a bias), as an exporter or
//! `edgemlops model optimize` would leave it. Weights are seeded He-normal (`std = sqrt(2 / fan_in)`
//! before a ReLU, `sqrt(1 / fan_in)` before a linear use), and the last convolution of every
//! residual branch is scaled down (as a small BatchNorm gamma would) so activations stay of order one
//! through the whole depth: random weights measure speed, and exploding or denormal activations
//! would distort exactly that.

use std::fmt;
use std::str::FromStr;

use crate::builder::{GraphBuilder, attr_int, attr_ints};
use crate::proto::{DataType, ModelProto, StringStringEntryProto, TensorProto};
use crate::rng::Rng;

/// Scale of the last convolution in a residual branch.
const RESIDUAL_BRANCH_SCALE: f32 = 0.2;
/// Standard deviation of the folded-BatchNorm biases.
const BIAS_STD: f32 = 0.05;
/// Image side length the architectures are built for.
pub const IMAGE_SIZE: i64 = 224;
/// Name of the image input.
pub const INPUT_NAME: &str = "input";
/// Name of the class-score output.
pub const OUTPUT_NAME: &str = "logits";
/// Classes of the ImageNet-style classifier head.
pub const NUM_CLASSES: i64 = 1000;

/// An architecture `edgemlops model build` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// ResNet-50: 53 convolutions, 25.5 M parameters.
    ResNet50,
    /// ResNet-101: 104 convolutions, 44.5 M parameters.
    ResNet101,
    /// MobileNetV2 (width 1.0): 52 convolutions, 3.5 M parameters.
    MobileNetV2,
}

impl Architecture {
    /// Every architecture, in the order help texts list them.
    pub const ALL: [Architecture; 3] = [Self::ResNet50, Self::ResNet101, Self::MobileNetV2];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResNet50 => "resnet50",
            Self::ResNet101 => "resnet101",
            Self::MobileNetV2 => "mobilenetv2",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let wanted = s.to_ascii_lowercase().replace(['-', '_'], "");
        Self::ALL.into_iter().find(|a| a.name() == wanted).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
            format!(
                "unknown architecture '{s}' (expected one of: {})",
                names.join(", ")
            )
        })
    }
}

/// Builds `arch` with weights drawn from `seed`.
pub fn build(arch: Architecture, seed: u64) -> ModelProto {
    let mut net = Net::new(arch, seed);
    let x = net.b.input(
        INPUT_NAME,
        DataType::Float,
        &["batch".into(), 3.into(), IMAGE_SIZE.into(), IMAGE_SIZE.into()],
    );
    let features = match arch {
        Architecture::ResNet50 => net.resnet(&x, &[3, 4, 6, 3]),
        Architecture::ResNet101 => net.resnet(&x, &[3, 4, 23, 3]),
        Architecture::MobileNetV2 => net.mobilenet_v2(&x),
    };
    let head_in = match arch {
        Architecture::MobileNetV2 => 1280,
        _ => 2048,
    };
    let fc = if arch == Architecture::MobileNetV2 {
        "classifier.1"
    } else {
        "fc"
    };
    let pooled = net.b.node("GlobalAveragePool", "avgpool", &[&features], vec![]);
    let flat = net
        .b
        .node("Flatten", "flatten", &[&pooled], vec![attr_int("axis", 1)]);
    let logits = net.linear(&flat, head_in, NUM_CLASSES, fc, OUTPUT_NAME);
    net.b
        .output(&logits, DataType::Float, &["batch".into(), NUM_CLASSES.into()]);
    let mut model = net.b.finish(&format!(
        "{arch} (torchvision layout, BatchNorm folded), seeded He-normal weights (seed {seed}); built by edgemlops"
    ));
    model.metadata_props = vec![
        StringStringEntryProto {
            key: "edgemlops.architecture".into(),
            value: arch.name().into(),
        },
        StringStringEntryProto {
            key: "edgemlops.seed".into(),
            value: seed.to_string(),
        },
    ];
    model
}

/// Convolution geometry.
#[derive(Clone, Copy)]
struct ConvSpec {
    cin: i64,
    cout: i64,
    kernel: i64,
    stride: i64,
    groups: i64,
}

impl ConvSpec {
    fn new(cin: i64, cout: i64, kernel: i64, stride: i64) -> Self {
        Self {
            cin,
            cout,
            kernel,
            stride,
            groups: 1,
        }
    }
}

/// What follows a convolution; it sets the weight scale.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    Relu,
    Relu6,
    Linear,
    ResidualBranchEnd,
}

struct Net {
    b: GraphBuilder,
    rng: Rng,
    relu6_bounds: Option<(String, String)>,
}

impl Net {
    fn new(arch: Architecture, seed: u64) -> Self {
        Self {
            b: GraphBuilder::new(arch.name()),
            rng: Rng::new(seed),
            relu6_bounds: None,
        }
    }

    fn conv(&mut self, x: &str, spec: ConvSpec, then: Then, name: &str) -> String {
        let ConvSpec {
            cin,
            cout,
            kernel,
            stride,
            groups,
        } = spec;
        let fan_in = (cin / groups) * kernel * kernel;
        let std = match then {
            Then::Relu | Then::Relu6 => (2.0 / fan_in as f32).sqrt(),
            Then::Linear => (1.0 / fan_in as f32).sqrt(),
            Then::ResidualBranchEnd => RESIDUAL_BRANCH_SCALE * (1.0 / fan_in as f32).sqrt(),
        };
        let dims = [cout, cin / groups, kernel, kernel];
        let n = (cout * (cin / groups) * kernel * kernel) as usize;
        let w = self.b.initializer(TensorProto::from_values(
            format!("{name}.weight"),
            &dims,
            &self.rng.normal_vec(n, std),
        ));
        let bias = self.b.initializer(TensorProto::from_values(
            format!("{name}.bias"),
            &[cout],
            &self.rng.normal_vec(cout as usize, BIAS_STD),
        ));
        let pad = kernel / 2;
        let attrs = vec![
            attr_ints("dilations", &[1, 1]),
            attr_int("group", groups),
            attr_ints("kernel_shape", &[kernel, kernel]),
            attr_ints("pads", &[pad, pad, pad, pad]),
            attr_ints("strides", &[stride, stride]),
        ];
        let y = self.b.node("Conv", name, &[x, &w, &bias], attrs);
        match then {
            Then::Relu => self.b.node("Relu", &format!("{name}.relu"), &[&y], vec![]),
            Then::Relu6 => self.relu6(&y, &format!("{name}.relu6")),
            Then::Linear | Then::ResidualBranchEnd => y,
        }
    }

    fn relu6(&mut self, x: &str, name: &str) -> String {
        let (lo, hi) = match &self.relu6_bounds {
            Some(bounds) => bounds.clone(),
            None => {
                let lo = self
                    .b
                    .initializer(TensorProto::from_values("relu6.min", &[], &[0.0f32]));
                let hi = self
                    .b
                    .initializer(TensorProto::from_values("relu6.max", &[], &[6.0f32]));
                self.relu6_bounds = Some((lo.clone(), hi.clone()));
                (lo, hi)
            }
        };
        self.b.node("Clip", name, &[x, &lo, &hi], vec![])
    }

    fn linear(&mut self, x: &str, fin: i64, fout: i64, name: &str, output: &str) -> String {
        let w = self.b.initializer(TensorProto::from_values(
            format!("{name}.weight"),
            &[fout, fin],
            &self
                .rng
                .normal_vec((fin * fout) as usize, (1.0 / fin as f32).sqrt()),
        ));
        let bias = self.b.initializer(TensorProto::from_values(
            format!("{name}.bias"),
            &[fout],
            &self.rng.normal_vec(fout as usize, BIAS_STD),
        ));
        self.b
            .node_to("Gemm", name, &[x, &w, &bias], output, vec![attr_int("transB", 1)])
    }

    fn resnet(&mut self, x: &str, blocks: &[usize; 4]) -> String {
        let mut y = self.conv(x, ConvSpec::new(3, 64, 7, 2), Then::Relu, "conv1");
        y = self.b.node(
            "MaxPool",
            "maxpool",
            &[&y],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("strides", &[2, 2]),
            ],
        );
        let mut inplanes = 64;
        for (stage, (&count, planes)) in blocks.iter().zip([64i64, 128, 256, 512]).enumerate() {
            for i in 0..count {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                y = self.bottleneck(&y, inplanes, planes, stride, &format!("layer{}.{i}", stage + 1));
                inplanes = planes * 4;
            }
        }
        y
    }

    fn bottleneck(&mut self, x: &str, inplanes: i64, planes: i64, stride: i64, name: &str) -> String {
        let out = planes * 4;
        let a = self.conv(
            x,
            ConvSpec::new(inplanes, planes, 1, 1),
            Then::Relu,
            &format!("{name}.conv1"),
        );
        let c = self.conv(
            &a,
            ConvSpec::new(planes, planes, 3, stride),
            Then::Relu,
            &format!("{name}.conv2"),
        );
        let d = self.conv(
            &c,
            ConvSpec::new(planes, out, 1, 1),
            Then::ResidualBranchEnd,
            &format!("{name}.conv3"),
        );
        let identity = if stride != 1 || inplanes != out {
            self.conv(
                x,
                ConvSpec::new(inplanes, out, 1, stride),
                Then::Linear,
                &format!("{name}.downsample.0"),
            )
        } else {
            x.to_owned()
        };
        let sum = self
            .b
            .node("Add", &format!("{name}.add"), &[&d, &identity], vec![]);
        self.b.node("Relu", &format!("{name}.relu"), &[&sum], vec![])
    }

    fn mobilenet_v2(&mut self, x: &str) -> String {
        // (expansion t, output channels c, repeats n, first stride s), torchvision's table.
        const SETTINGS: [(i64, i64, usize, i64); 7] = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ];
        let mut y = self.conv(x, ConvSpec::new(3, 32, 3, 2), Then::Relu6, "features.0");
        let mut cin = 32;
        let mut index = 1;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                y = self.inverted_residual(&y, cin, c, stride, t, &format!("features.{index}"));
                cin = c;
                index += 1;
            }
        }
        self.conv(
            &y,
            ConvSpec::new(cin, 1280, 1, 1),
            Then::Relu6,
            &format!("features.{index}"),
        )
    }

    fn inverted_residual(
        &mut self,
        x: &str,
        cin: i64,
        cout: i64,
        stride: i64,
        expand: i64,
        name: &str,
    ) -> String {
        let hidden = cin * expand;
        let residual = stride == 1 && cin == cout;
        let mut y = x.to_owned();
        let mut part = 0;
        if expand != 1 {
            y = self.conv(
                &y,
                ConvSpec::new(cin, hidden, 1, 1),
                Then::Relu6,
                &format!("{name}.conv.{part}"),
            );
            part += 1;
        }
        let dw = ConvSpec {
            groups: hidden,
            ..ConvSpec::new(hidden, hidden, 3, stride)
        };
        y = self.conv(&y, dw, Then::Relu6, &format!("{name}.conv.{part}"));
        part += 1;
        let then = if residual {
            Then::ResidualBranchEnd
        } else {
            Then::Linear
        };
        y = self.conv(
            &y,
            ConvSpec::new(hidden, cout, 1, 1),
            then,
            &format!("{name}.conv.{part}"),
        );
        if residual {
            self.b.node("Add", &format!("{name}.add"), &[x, &y], vec![])
        } else {
            y
        }
    }
}

/// The declared input dims of the zoo models, for callers that make inputs.
pub fn input_dims(batch: i64) -> [i64; 4] {
    [batch, 3, IMAGE_SIZE, IMAGE_SIZE]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::summarize;

    fn check(arch: Architecture, convs: usize, params: u64) {
        let m = build(arch, 1);
        crate::io::check_model(&m).unwrap();
        let s = summarize(&m);
        assert_eq!(s.op_histogram.get("Conv").copied(), Some(convs), "{arch}");
        assert_eq!(s.parameters.count, params, "{arch}");
    }

    #[test]
    fn resnet50_has_torchvision_topology() {
        // torchvision: 25,557,032 parameters with BatchNorm (2 learned per channel); folded, 1 bias per channel.
        check(Architecture::ResNet50, 53, 25_530_472);
    }

    #[test]
    fn resnet101_has_torchvision_topology() {
        check(Architecture::ResNet101, 104, 44_496_488);
    }

    #[test]
    fn mobilenetv2_has_torchvision_topology() {
        check(Architecture::MobileNetV2, 52, 3_487_816 + 2);
    }

    #[test]
    fn same_seed_same_weights() {
        let a = build(Architecture::MobileNetV2, 5);
        let b = build(Architecture::MobileNetV2, 5);
        let c = build(Architecture::MobileNetV2, 6);
        assert!(a == b);
        assert!(a != c);
    }

    #[test]
    fn names_parse_leniently() {
        assert_eq!("ResNet-50".parse::<Architecture>(), Ok(Architecture::ResNet50));
        assert_eq!(
            "mobilenet_v2".parse::<Architecture>(),
            Ok(Architecture::MobileNetV2)
        );
        assert!("vgg16".parse::<Architecture>().unwrap_err().contains("resnet50"));
    }
}
