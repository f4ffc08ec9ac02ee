//! Evaluation of nodes whose inputs are all constants, for constant folding.
//!
//! Exporters leave shape arithmetic and weight re-shaping in graphs (`Shape → Gather → Concat →
//! Reshape` on constants, a transposed weight, `Div` by a constant tensor). Folding them lets the
//! quantizer see plain weights. Only the operators such subgraphs are made of are covered; anything
//! else returns `None` and stays in the graph, which is always correct.

use crate::graph::{attr_i, attr_ints, attribute};
use crate::proto::{DataType, NodeProto, TensorProto};

/// Largest tensor folding may create: folding must not blow up the model file.
const MAX_FOLDED_ELEMENTS: usize = 1 << 22;

/// Element data of a value during evaluation.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
}

#[derive(Clone, Debug, PartialEq)]
struct Value {
    dims: Vec<usize>,
    data: Data,
}

impl Value {
    fn from_tensor(t: &TensorProto) -> Option<Self> {
        let dims = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<_>>>()?;
        let data = match t.dtype()? {
            DataType::Float => Data::F32(t.values().ok()?),
            DataType::Int64 => Data::I64(t.values().ok()?),
            DataType::Int32 => Data::I32(t.values().ok()?),
            _ => return None,
        };
        Some(Self { dims, data })
    }

    fn into_tensor(self, name: &str) -> TensorProto {
        let dims: Vec<i64> = self.dims.iter().map(|&d| d as i64).collect();
        match &self.data {
            Data::F32(v) => TensorProto::from_values(name, &dims, v),
            Data::I64(v) => TensorProto::from_values(name, &dims, v),
            Data::I32(v) => TensorProto::from_values(name, &dims, v),
        }
    }

    fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I32(v) => v.len(),
        }
    }

    fn as_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Some(v.clone()),
            Data::I32(v) => Some(v.iter().map(|&x| i64::from(x)).collect()),
            Data::F32(_) => None,
        }
    }

    /// Gathers elements by flat index (for transpose, gather, broadcasting, slicing).
    fn pick(&self, dims: Vec<usize>, flat: &[usize]) -> Value {
        let data = match &self.data {
            Data::F32(v) => Data::F32(flat.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(flat.iter().map(|&i| v[i]).collect()),
            Data::I32(v) => Data::I32(flat.iter().map(|&i| v[i]).collect()),
        };
        Value { dims, data }
    }
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Evaluates `node` on constant inputs (`None` for an omitted optional input). Returns the output
/// tensors, named after the node's outputs, or `None` if the operator or a case is not covered.
pub fn eval_node(node: &NodeProto, inputs: &[Option<&TensorProto>]) -> Option<Vec<TensorProto>> {
    if !crate::graph::is_default_domain(&node.domain) {
        return None;
    }
    let values: Vec<Option<Value>> = inputs.iter().map(|t| t.and_then(Value::from_tensor)).collect();
    let arg = |i: usize| values.get(i).and_then(Option::as_ref);
    let out = match node.op_type.as_str() {
        "Identity" => arg(0)?.clone(),
        "Add" | "Sub" | "Mul" | "Div" => binary(&node.op_type, arg(0)?, arg(1)?)?,
        "Neg" | "Sqrt" | "Reciprocal" | "Abs" | "Relu" => unary(&node.op_type, arg(0)?)?,
        "Cast" => cast(arg(0)?, attr_i(node, "to", 0))?,
        "Reshape" => reshape(arg(0)?, &arg(1)?.as_i64()?, attr_i(node, "allowzero", 0) != 0)?,
        "Flatten" => {
            let x = arg(0)?;
            let axis = normalize_axis(attr_i(node, "axis", 1), x.dims.len() + 1)?;
            let outer: usize = x.dims[..axis].iter().product();
            Value {
                dims: vec![outer, x.len() / outer.max(1)],
                data: x.data.clone(),
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let x = arg(0)?;
            let axes = match (attr_ints(node, "axes"), arg(1)) {
                (Some(a), _) => Some(a.to_vec()),
                (None, Some(v)) => Some(v.as_i64()?),
                (None, None) => None,
            };
            if node.op_type == "Unsqueeze" {
                unsqueeze(x, &axes?)?
            } else {
                squeeze(x, axes.as_deref())?
            }
        }
        "Transpose" => {
            let x = arg(0)?;
            let perm: Vec<usize> = match attr_ints(node, "perm") {
                Some(p) => p
                    .iter()
                    .map(|&a| normalize_axis(a, x.dims.len()))
                    .collect::<Option<_>>()?,
                None => (0..x.dims.len()).rev().collect(),
            };
            transpose(x, &perm)?
        }
        "Concat" => {
            let parts: Vec<&Value> = (0..inputs.len()).map(arg).collect::<Option<_>>()?;
            concat(&parts, attr_i(node, "axis", 0))?
        }
        "Shape" => {
            let x = arg(0)?;
            Value {
                dims: vec![x.dims.len()],
                data: Data::I64(x.dims.iter().map(|&d| d as i64).collect()),
            }
        }
        "Gather" => gather(arg(0)?, arg(1)?, attr_i(node, "axis", 0))?,
        "ConstantOfShape" => {
            let dims: Vec<usize> = arg(0)?
                .as_i64()?
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<_>>()?;
            let n: usize = dims.iter().product();
            if n > MAX_FOLDED_ELEMENTS {
                return None;
            }
            let fill = match attribute(node, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => Value::from_tensor(t)?,
                None => Value {
                    dims: vec![1],
                    data: Data::F32(vec![0.0]),
                },
            };
            fill.pick(dims, &vec![0; n])
        }
        _ => return None,
    };
    if out.len() > MAX_FOLDED_ELEMENTS || node.output.len() != 1 {
        return None;
    }
    Some(vec![out.into_tensor(&node.output[0])])
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// Flat indices into `dims` for every element of the broadcast `out` shape.
fn broadcast_index(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let offset = out.len() - dims.len();
    let src_strides = strides(dims);
    let out_strides = strides(out);
    (0..n)
        .map(|flat| {
            let mut idx = 0;
            for (k, &d) in dims.iter().enumerate() {
                let coord = (flat / out_strides[k + offset]) % out[k + offset];
                if d != 1 {
                    idx += coord * src_strides[k];
                }
            }
            idx
        })
        .collect()
}

fn binary(op: &str, a: &Value, b: &Value) -> Option<Value> {
    let dims = broadcast_shape(&a.dims, &b.dims)?;
    if dims.iter().product::<usize>() > MAX_FOLDED_ELEMENTS {
        return None;
    }
    let ia = broadcast_index(&a.dims, &dims);
    let ib = broadcast_index(&b.dims, &dims);
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => {
            let f = |p: f32, q: f32| match op {
                "Add" => p + q,
                "Sub" => p - q,
                "Mul" => p * q,
                _ => p / q,
            };
            Data::F32(ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect())
        }
        (Data::I64(x), Data::I64(y)) => {
            let f = |p: i64, q: i64| match op {
                "Add" => Some(p.wrapping_add(q)),
                "Sub" => Some(p.wrapping_sub(q)),
                "Mul" => Some(p.wrapping_mul(q)),
                _ => p.checked_div(q),
            };
            Data::I64(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| f(x[i], y[j]))
                    .collect::<Option<_>>()?,
            )
        }
        (Data::I32(x), Data::I32(y)) => {
            let f = |p: i32, q: i32| match op {
                "Add" => Some(p.wrapping_add(q)),
                "Sub" => Some(p.wrapping_sub(q)),
                "Mul" => Some(p.wrapping_mul(q)),
                _ => p.checked_div(q),
            };
            Data::I32(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| f(x[i], y[j]))
                    .collect::<Option<_>>()?,
            )
        }
        _ => return None,
    };
    Some(Value { dims, data })
}

fn unary(op: &str, x: &Value) -> Option<Value> {
    let data = match &x.data {
        Data::F32(v) => Data::F32(
            v.iter()
                .map(|&p| match op {
                    "Neg" => -p,
                    "Sqrt" => p.sqrt(),
                    "Reciprocal" => 1.0 / p,
                    "Abs" => p.abs(),
                    _ => p.max(0.0),
                })
                .collect(),
        ),
        Data::I64(v) => Data::I64(
            v.iter()
                .map(|&p| match op {
                    "Neg" => Some(p.wrapping_neg()),
                    "Abs" => Some(p.wrapping_abs()),
                    "Relu" => Some(p.max(0)),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
        Data::I32(_) => return None,
    };
    Some(Value {
        dims: x.dims.clone(),
        data,
    })
}

fn cast(x: &Value, to: i64) -> Option<Value> {
    let to = DataType::from_raw(i32::try_from(to).ok()?)?;
    let as_f64: Vec<f64> = match &x.data {
        Data::F32(v) => v.iter().map(|&p| f64::from(p)).collect(),
        Data::I64(v) => v.iter().map(|&p| p as f64).collect(),
        Data::I32(v) => v.iter().map(|&p| f64::from(p)).collect(),
    };
    let data = match to {
        DataType::Float => Data::F32(as_f64.iter().map(|&p| p as f32).collect()),
        DataType::Int64 => match &x.data {
            Data::I64(v) => Data::I64(v.clone()),
            Data::I32(v) => Data::I64(v.iter().map(|&p| i64::from(p)).collect()),
            Data::F32(v) => Data::I64(v.iter().map(|&p| p as i64).collect()),
        },
        DataType::Int32 => match &x.data {
            Data::I32(v) => Data::I32(v.clone()),
            Data::I64(v) => Data::I32(v.iter().map(|&p| p as i32).collect()),
            Data::F32(v) => Data::I32(v.iter().map(|&p| p as i32).collect()),
        },
        _ => return None,
    };
    Some(Value {
        dims: x.dims.clone(),
        data,
    })
}

fn reshape(x: &Value, shape: &[i64], allowzero: bool) -> Option<Value> {
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allowzero => dims.push(*x.dims.get(i)?),
            d if d >= 0 => dims.push(d as usize),
            _ => return None,
        }
    }
    if let Some(i) = infer {
        let known: usize = dims.iter().product();
        if known == 0 || !x.len().is_multiple_of(known) {
            return None;
        }
        dims[i] = x.len() / known;
    }
    (dims.iter().product::<usize>() == x.len()).then(|| Value {
        dims,
        data: x.data.clone(),
    })
}

fn unsqueeze(x: &Value, axes: &[i64]) -> Option<Value> {
    let rank = x.dims.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| normalize_axis(a, rank))
        .collect::<Option<_>>()?;
    axes.sort_unstable();
    let mut dims = x.dims.clone();
    for a in axes {
        if a > dims.len() {
            return None;
        }
        dims.insert(a, 1);
    }
    Some(Value {
        dims,
        data: x.data.clone(),
    })
}

fn squeeze(x: &Value, axes: Option<&[i64]>) -> Option<Value> {
    let drop: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&a| normalize_axis(a, x.dims.len()))
            .collect::<Option<_>>()?,
        None => (0..x.dims.len()).filter(|&i| x.dims[i] == 1).collect(),
    };
    if drop.iter().any(|&a| x.dims[a] != 1) {
        return None;
    }
    let dims = x
        .dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, &d)| d)
        .collect();
    Some(Value {
        dims,
        data: x.data.clone(),
    })
}

fn transpose(x: &Value, perm: &[usize]) -> Option<Value> {
    if perm.len() != x.dims.len() {
        return None;
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| x.dims[p]).collect();
    let in_strides = strides(&x.dims);
    let out_strides = strides(&out_dims);
    let n = x.len();
    let flat: Vec<usize> = (0..n)
        .map(|o| {
            perm.iter()
                .enumerate()
                .map(|(k, &p)| ((o / out_strides[k]) % out_dims[k]) * in_strides[p])
                .sum()
        })
        .collect();
    Some(x.pick(out_dims, &flat))
}

fn concat(parts: &[&Value], axis: i64) -> Option<Value> {
    let first = parts.first()?;
    let axis = normalize_axis(axis, first.dims.len())?;
    let mut dims = first.dims.clone();
    dims[axis] = 0;
    for p in parts {
        if p.dims.len() != first.dims.len()
            || p.dims
                .iter()
                .enumerate()
                .any(|(i, &d)| i != axis && d != first.dims[i])
        {
            return None;
        }
        dims[axis] += p.dims[axis];
    }
    let outer: usize = first.dims[..axis].iter().product();
    let inner = |v: &Value| -> usize { v.dims[axis..].iter().product() };
    macro_rules! join {
        ($variant:ident) => {{
            let mut out = Vec::new();
            for o in 0..outer {
                for p in parts {
                    let Data::$variant(v) = &p.data else { return None };
                    let k = inner(p);
                    out.extend_from_slice(&v[o * k..(o + 1) * k]);
                }
            }
            Data::$variant(out)
        }};
    }
    let data = match &first.data {
        Data::F32(_) => join!(F32),
        Data::I64(_) => join!(I64),
        Data::I32(_) => join!(I32),
    };
    Some(Value { dims, data })
}

fn gather(x: &Value, indices: &Value, axis: i64) -> Option<Value> {
    let axis = normalize_axis(axis, x.dims.len())?;
    let idx = indices.as_i64()?;
    let size = x.dims[axis] as i64;
    let idx: Vec<usize> = idx
        .iter()
        .map(|&i| {
            let i = if i < 0 { i + size } else { i };
            (0..size).contains(&i).then_some(i as usize)
        })
        .collect::<Option<_>>()?;
    let outer: usize = x.dims[..axis].iter().product();
    let inner: usize = x.dims[axis + 1..].iter().product();
    let mut flat = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in &idx {
            let base = (o * x.dims[axis] + i) * inner;
            flat.extend(base..base + inner);
        }
    }
    let mut dims = x.dims[..axis].to_vec();
    dims.extend(&indices.dims);
    dims.extend(&x.dims[axis + 1..]);
    Some(x.pick(dims, &flat))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{attr_int, attr_ints};

    fn node(op: &str, attrs: Vec<crate::proto::AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            output: vec!["y".into()],
            attribute: attrs,
            ..Default::default()
        }
    }

    fn check(
        op: &str,
        attrs: Vec<crate::proto::AttributeProto>,
        inputs: &[&TensorProto],
        dims: &[i64],
        f: &[f32],
    ) {
        let ins: Vec<Option<&TensorProto>> = inputs.iter().map(|t| Some(*t)).collect();
        let out = eval_node(&node(op, attrs), &ins).expect("folds");
        assert_eq!(out[0].dims, dims, "{op}");
        assert_eq!(out[0].values::<f32>().unwrap(), f, "{op}");
    }

    #[test]
    fn arithmetic_broadcasts_like_numpy() {
        let a = TensorProto::from_values("a", &[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = TensorProto::from_values("b", &[3], &[10.0f32, 20.0, 30.0]);
        let c = TensorProto::from_values("c", &[2, 1], &[2.0f32, 4.0]);
        check(
            "Add",
            vec![],
            &[&a, &b],
            &[2, 3],
            &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0],
        );
        check(
            "Div",
            vec![],
            &[&a, &c],
            &[2, 3],
            &[0.5, 1.0, 1.5, 1.0, 1.25, 1.5],
        );
    }

    #[test]
    fn shape_ops_fold() {
        let a = TensorProto::from_values("a", &[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        check(
            "Transpose",
            vec![],
            &[&a],
            &[3, 2],
            &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0],
        );
        let shape = TensorProto::from_values("s", &[2], &[-1i64, 2]);
        check(
            "Reshape",
            vec![],
            &[&a, &shape],
            &[3, 2],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        );
        check(
            "Concat",
            vec![attr_int("axis", 1)],
            &[&a, &a],
            &[2, 6],
            &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 4.0, 5.0, 6.0],
        );
        let idx = TensorProto::from_values("i", &[1], &[-1i64]);
        check(
            "Gather",
            vec![attr_int("axis", 1)],
            &[&a, &idx],
            &[2, 1],
            &[3.0, 6.0],
        );
        check(
            "Unsqueeze",
            vec![attr_ints("axes", &[0])],
            &[&a],
            &[1, 2, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        );
        let out = eval_node(&node("Shape", vec![]), &[Some(&a)]).unwrap();
        assert_eq!(out[0].values::<i64>().unwrap(), vec![2, 3]);
    }

    #[test]
    fn unknown_operators_and_bad_cases_do_not_fold() {
        let a = TensorProto::from_values("a", &[2], &[1.0f32, 2.0]);
        assert!(eval_node(&node("Softmax", vec![]), &[Some(&a)]).is_none());
        let shape = TensorProto::from_values("s", &[1], &[3i64]);
        assert!(eval_node(&node("Reshape", vec![]), &[Some(&a), Some(&shape)]).is_none());
        let zero = TensorProto::from_values("z", &[1], &[0i64]);
        let one = TensorProto::from_values("o", &[1], &[1i64]);
        assert!(eval_node(&node("Div", vec![]), &[Some(&one), Some(&zero)]).is_none());
    }
}
