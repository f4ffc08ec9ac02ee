//! A small builder for ONNX graphs: inputs, initializers, nodes with attributes, outputs.
//!
//! Names are made unique as they are added, so callers can use layer names (`layer1.0.conv1`)
//! without bookkeeping. The result is an ordinary [`ModelProto`], topologically ordered by
//! construction.

use std::collections::HashSet;

use crate::proto::tensor_shape_proto::{Dimension, dimension};
use crate::proto::type_proto::{self, Tensor};
use crate::proto::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::{DEFAULT_IR_VERSION, DEFAULT_OPSET};

/// One dimension of a declared input or output shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A known size.
    Fixed(i64),
    /// A named, symbolic size such as `batch`.
    Symbolic(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Symbolic(v.to_owned())
    }
}

/// A tensor type with a shape.
pub fn tensor_type(dtype: DataType, dims: &[Dim]) -> TypeProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Symbolic(s) => dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    TypeProto {
        denotation: String::new(),
        value: Some(type_proto::Value::TensorType(Tensor {
            elem_type: dtype as i32,
            shape: Some(TensorShapeProto { dim }),
        })),
    }
}

/// A named value with a tensor type.
pub fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(tensor_type(dtype, dims)),
        ..Default::default()
    }
}

fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: kind as i32,
        ..Default::default()
    }
}

/// An `INT` attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: v,
        ..attr(name, AttributeType::Int)
    }
}

/// An `INTS` attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

/// A `FLOAT` attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: v,
        ..attr(name, AttributeType::Float)
    }
}

/// A `STRING` attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::String)
    }
}

/// A `TENSOR` attribute (the `value` of a Constant node, for example).
pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        t: Some(t),
        ..attr(name, AttributeType::Tensor)
    }
}

/// Builds one graph and wraps it in a model.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: GraphProto,
    opsets: Vec<OperatorSetIdProto>,
    names: HashSet<String>,
}

impl GraphBuilder {
    /// An empty graph importing the default ONNX domain at [`DEFAULT_OPSET`].
    pub fn new(name: &str) -> Self {
        Self {
            graph: GraphProto {
                name: name.to_owned(),
                ..Default::default()
            },
            opsets: vec![OperatorSetIdProto {
                domain: String::new(),
                version: DEFAULT_OPSET,
            }],
            names: HashSet::new(),
        }
    }

    /// Imports an operator set (or changes the version of one already imported).
    pub fn opset(&mut self, domain: &str, version: i64) -> &mut Self {
        match self.opsets.iter_mut().find(|o| o.domain == domain) {
            Some(o) => o.version = version,
            None => self.opsets.push(OperatorSetIdProto {
                domain: domain.to_owned(),
                version,
            }),
        }
        self
    }

    fn unique(&mut self, wanted: &str) -> String {
        let mut name = wanted.to_owned();
        let mut n = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{wanted}_{n}");
            n += 1;
        }
        name
    }

    /// Declares a graph input and returns its name.
    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) -> String {
        let name = self.unique(name);
        self.graph.input.push(value_info(&name, dtype, dims));
        name
    }

    /// Adds an initializer (its name made unique) and returns the name.
    pub fn initializer(&mut self, mut t: TensorProto) -> String {
        t.name = self.unique(&t.name);
        let name = t.name.clone();
        self.graph.initializer.push(t);
        name
    }

    /// Adds a node with one output named after the node, and returns that output's name.
    pub fn node(&mut self, op_type: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let mut outs = self.node_multi(op_type, name, inputs, 1, attrs);
        outs.remove(0)
    }

    /// Adds a node whose single output gets the name `output` (made unique), and returns it.
    pub fn node_to(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let node_name = self.unique(name);
        let output = self.unique(output);
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.clone()],
            name: node_name,
            op_type: op_type.to_owned(),
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    /// Adds a node with `n_outputs` outputs (`<name>`, `<name>_1`, ...) and returns their names.
    pub fn node_multi(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        n_outputs: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let node_name = self.unique(name);
        let outputs: Vec<String> = (0..n_outputs)
            .map(|i| {
                if i == 0 {
                    node_name.clone()
                } else {
                    self.unique(&format!("{node_name}_{i}"))
                }
            })
            .collect();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.clone(),
            name: node_name,
            op_type: op_type.to_owned(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    /// Declares an existing value as a graph output.
    pub fn output(&mut self, value: &str, dtype: DataType, dims: &[Dim]) {
        self.graph.output.push(value_info(value, dtype, dims));
    }

    /// The model holding the graph, with `edgemlops` as producer and `doc` as its doc string.
    pub fn finish(self, doc: &str) -> ModelProto {
        ModelProto {
            ir_version: DEFAULT_IR_VERSION,
            opset_import: self.opsets,
            producer_name: "edgemlops".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            doc_string: doc.to_owned(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_unique() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DataType::Float, &["batch".into(), 4.into()]);
        let a = b.node("Relu", "act", &[&x], vec![]);
        let c = b.node("Relu", "act", &[&a], vec![]);
        assert_eq!((a.as_str(), c.as_str()), ("act", "act_1"));
        let outs = b.node_multi("Split", "split", &[&c], 2, vec![attr_int("axis", 1)]);
        assert_eq!(outs, vec!["split".to_owned(), "split_1".to_owned()]);
        b.output(&outs[0], DataType::Float, &["batch".into(), 2.into()]);
        let m = b.finish("doc");
        crate::io::check_model(&m).unwrap();
        assert_eq!(m.graph.unwrap().node.len(), 3);
    }
}
