//! Per-operator fixtures: a small float model per operator family, quantized U8S8 and S8S8 with
//! per-channel weights, run by ONNX Runtime against the float model with an error bound, and
//! checked in ONNX Runtime's optimized graph for the int8 kernel that really runs.

use onnx::builder::{Dim, GraphBuilder, attr_int, attr_ints, attr_tensor};
use onnx::proto::{DataType, ModelProto, TensorProto};
use onnx::rng::Rng;
use quant::params::QType;
use quant::qdq::StaticConfig;

use crate::{executed_ops, normal, quantize_static, rel_rms, run};

struct Net {
    b: GraphBuilder,
    rng: Rng,
}

impl Net {
    fn new(seed: u64) -> Self {
        Self {
            b: GraphBuilder::new("fixture"),
            rng: Rng::new(seed),
        }
    }

    fn weight(&mut self, name: &str, dims: &[i64], std: f32) -> String {
        let n = dims.iter().product::<i64>() as usize;
        let v = self.rng.normal_vec(n, std);
        self.b.initializer(TensorProto::from_values(name, dims, &v))
    }

    fn conv(&mut self, x: &str, cin: i64, cout: i64, k: i64, name: &str) -> String {
        let w = self.weight(
            &format!("{name}.w"),
            &[cout, cin, k, k],
            (2.0 / (cin * k * k) as f32).sqrt(),
        );
        let bias = self.weight(&format!("{name}.b"), &[cout], 0.1);
        self.b.node(
            "Conv",
            name,
            &[x, &w, &bias],
            vec![attr_ints("kernel_shape", &[k, k]), attr_ints("pads", &[k / 2; 4])],
        )
    }

    fn input(&mut self, c: i64, hw: i64) -> String {
        self.b.input(
            "x",
            DataType::Float,
            &["n".into(), c.into(), hw.into(), hw.into()],
        )
    }

    fn finish(mut self, y: &str) -> ModelProto {
        self.b.output(y, DataType::Float, &[]);
        let mut m = self.b.finish("fixture");
        // Output shapes are left to the runtime.
        if let Some(o) = m.graph.as_mut().unwrap().output.last_mut()
            && let Some(onnx::proto::type_proto::Value::TensorType(t)) =
                o.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
        m
    }
}

/// Quantizes `model` both ways, checks the error bound on fresh inputs, and returns the executed
/// operator histograms (U8S8, S8S8).
fn check(
    model: &ModelProto,
    input: &[usize],
    bound: f64,
) -> (
    std::collections::BTreeMap<String, usize>,
    std::collections::BTreeMap<String, usize>,
) {
    let calib = normal(&[&[16], &input[1..]].concat(), 1, 1.0);
    let test = normal(&[&[4], &input[1..]].concat(), 2, 1.0);
    let reference = run(model, &test);
    let mut hist = Vec::new();
    for act in [QType::U8, QType::S8] {
        let cfg = StaticConfig {
            activations: act,
            ..crate::machine_config()
        };
        let q = quantize_static(model, &cfg, &calib);
        let got = run(&q, &test);
        let err = rel_rms(&reference, &got);
        assert!(err < bound, "{act}: relative RMS error {err:.4} above {bound}");
        assert!(
            err > 0.0,
            "{act}: bit-identical output means nothing was quantized"
        );
        let s = onnx::inspect::summarize(&q);
        assert_eq!(s.quantization.format, "qdq");
        hist.push(executed_ops(&q));
    }
    let s8 = hist.pop().unwrap();
    (hist.pop().unwrap(), s8)
}

fn has(ops: &std::collections::BTreeMap<String, usize>, op: &str) -> bool {
    ops.keys().any(|k| k.ends_with(op))
}

fn no_float(ops: &std::collections::BTreeMap<String, usize>, op: &str) -> bool {
    !ops.contains_key(op)
}

#[test]
fn conv_with_relu_runs_as_qlinearconv() {
    let mut n = Net::new(1);
    let x = n.input(8, 16);
    let c = n.conv(&x, 8, 16, 3, "conv");
    let r = n.b.node("Relu", "relu", &[&c], vec![]);
    let c2 = n.conv(&r, 16, 8, 1, "conv2");
    let m = n.finish(&c2);
    let (u8s8, s8s8) = check(&m, &[1, 8, 16, 16], 0.05);
    assert!(
        has(&u8s8, "QLinearConv") && no_float(&u8s8, "Conv") && no_float(&u8s8, "Relu"),
        "{u8s8:?}"
    );
    assert!(has(&s8s8, "QLinearConv"), "{s8s8:?}");
}

#[test]
fn conv_weights_in_constant_nodes_and_batchnorm_are_handled() {
    let mut n = Net::new(2);
    let x = n.input(4, 12);
    let w: Vec<f32> = n.rng.normal_vec(8 * 4 * 9, 0.3);
    let wc = n.b.node(
        "Constant",
        "w_const",
        &[],
        vec![attr_tensor(
            "value",
            TensorProto::from_values("", &[8, 4, 3, 3], &w),
        )],
    );
    let conv = n.b.node(
        "Conv",
        "conv",
        &[&x, &wc],
        vec![attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1; 4])],
    );
    let p = |n: &mut Net, name: &str, lo: f32, hi: f32| {
        let v: Vec<f32> = (0..8).map(|_| n.rng.uniform(lo, hi)).collect();

        n.b.node(
            "Constant",
            name,
            &[],
            vec![attr_tensor("value", TensorProto::from_values("", &[8], &v))],
        )
    };
    let (s, o, mu, var) = (
        p(&mut n, "bn.scale", 0.5, 1.5),
        p(&mut n, "bn.bias", -0.2, 0.2),
        p(&mut n, "bn.mean", -0.1, 0.1),
        p(&mut n, "bn.var", 0.5, 2.0),
    );
    let bn =
        n.b.node("BatchNormalization", "bn", &[&conv, &s, &o, &mu, &var], vec![]);
    let r = n.b.node("Relu", "relu", &[&bn], vec![]);
    let m = n.finish(&r);
    let (u8s8, _) = check(&m, &[1, 4, 12, 12], 0.05);
    assert!(
        has(&u8s8, "QLinearConv") && no_float(&u8s8, "BatchNormalization"),
        "{u8s8:?}"
    );
}

#[test]
fn gemm_runs_as_qgemm() {
    let mut n = Net::new(3);
    let x = n.b.input("x", DataType::Float, &["n".into(), Dim::Fixed(64)]);
    let w = n.weight("fc.w", &[32, 64], 0.125);
    let b = n.weight("fc.b", &[32], 0.1);
    let y = n.b.node("Gemm", "fc", &[&x, &w, &b], vec![attr_int("transB", 1)]);
    let m = n.finish(&y);
    let (u8s8, s8s8) = check(&m, &[1, 64], 0.03);
    assert!(has(&u8s8, "QGemm") && no_float(&u8s8, "Gemm"), "{u8s8:?}");
    assert!(has(&s8s8, "QGemm"), "{s8s8:?}");
}

#[test]
fn matmul_runs_with_an_int8_kernel() {
    let mut n = Net::new(4);
    let x = n.b.input("x", DataType::Float, &["n".into(), Dim::Fixed(64)]);
    let w = n.weight("w", &[64, 48], 0.125);
    let h = n.b.node("MatMul", "mm", &[&x, &w], vec![]);
    let r = n.b.node("Relu", "relu", &[&h], vec![]);
    let w2 = n.weight("w2", &[48, 16], 0.15);
    let y = n.b.node("MatMul", "mm2", &[&r, &w2], vec![]);
    let m = n.finish(&y);
    let (u8s8, _) = check(&m, &[1, 64], 0.05);
    let int8 = has(&u8s8, "QLinearMatMul") || has(&u8s8, "MatMulIntegerToFloat");
    assert!(int8 && no_float(&u8s8, "MatMul"), "{u8s8:?}");
}

#[test]
fn add_and_mul_run_as_qlinear_ops() {
    let mut n = Net::new(5);
    let x = n.input(8, 8);
    let a = n.conv(&x, 8, 8, 3, "a");
    let b = n.conv(&x, 8, 8, 1, "b");
    let s = n.b.node("Add", "add", &[&a, &b], vec![]);
    let scale = n.b.initializer(TensorProto::from_values("half", &[], &[0.5f32]));
    let m2 = n.b.node("Mul", "mul", &[&s, &scale], vec![]);
    let y = n.conv(&m2, 8, 4, 1, "out");
    let m = n.finish(&y);
    let (u8s8, _) = check(&m, &[1, 8, 8, 8], 0.05);
    assert!(has(&u8s8, "QLinearAdd") && no_float(&u8s8, "Add"), "{u8s8:?}");
    assert!(has(&u8s8, "QLinearMul") && no_float(&u8s8, "Mul"), "{u8s8:?}");
}

#[test]
fn concat_runs_as_qlinearconcat() {
    let mut n = Net::new(6);
    let x = n.input(4, 8);
    let a = n.conv(&x, 4, 6, 3, "a");
    let b = n.conv(&x, 4, 2, 1, "b");
    let c = n.b.node("Concat", "cat", &[&a, &b], vec![attr_int("axis", 1)]);
    let y = n.conv(&c, 8, 4, 1, "out");
    let m = n.finish(&y);
    let (u8s8, _) = check(&m, &[1, 4, 8, 8], 0.05);
    assert!(
        has(&u8s8, "QLinearConcat") && no_float(&u8s8, "Concat"),
        "{u8s8:?}"
    );
}

#[test]
fn pooling_runs_in_int8() {
    let mut n = Net::new(7);
    let x = n.input(4, 16);
    let c = n.conv(&x, 4, 8, 3, "c");
    let r = n.b.node("Relu", "relu", &[&c], vec![]);
    let mp = n.b.node(
        "MaxPool",
        "maxpool",
        &[&r],
        vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
    );
    let c2 = n.conv(&mp, 8, 8, 3, "c2");
    let ap = n.b.node(
        "AveragePool",
        "avgpool",
        &[&c2],
        vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
    );
    let c3 = n.conv(&ap, 8, 8, 1, "c3");
    let gap = n.b.node("GlobalAveragePool", "gap", &[&c3], vec![]);
    let flat = n.b.node("Flatten", "flatten", &[&gap], vec![attr_int("axis", 1)]);
    let w = n.weight("fc.w", &[10, 8], 0.3);
    let bias = n.weight("fc.b", &[10], 0.1);
    let y =
        n.b.node("Gemm", "fc", &[&flat, &w, &bias], vec![attr_int("transB", 1)]);
    let m = n.finish(&y);
    let (u8s8, _) = check(&m, &[1, 4, 16, 16], 0.06);
    assert!(
        has(&u8s8, "QLinearAveragePool") && has(&u8s8, "QLinearGlobalAveragePool"),
        "{u8s8:?}"
    );
    assert!(
        no_float(&u8s8, "AveragePool") && no_float(&u8s8, "GlobalAveragePool"),
        "{u8s8:?}"
    );
    // MaxPool runs on the integers: no float MaxPool between a DequantizeLinear and a QuantizeLinear.
    let dq = u8s8.get("DequantizeLinear").copied().unwrap_or(0);
    assert!(
        dq <= 1,
        "only the input's Q and no DQ before the output's QGemm: {u8s8:?}"
    );
}
