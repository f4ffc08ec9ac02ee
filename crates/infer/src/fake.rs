//! A backend with no native code: sessions that declare the given inputs and outputs and answer
//! with deterministic values derived from the input, for tests of code around inference.

use crate::error::InferError;
use crate::tensor::Tensor;
use crate::{Backend, ModelSource, Session, SessionOptions, TensorSpec, check_inputs};

/// Loads every "model" as a session with fixed specs.
#[derive(Clone, Debug)]
pub struct FakeBackend {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl FakeBackend {
    /// A backend whose sessions declare `inputs` and produce float32 `outputs` (dynamic dims become 1).
    pub fn new(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Self {
        Self { inputs, outputs }
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn version(&self) -> String {
        "0".to_owned()
    }

    fn load(
        &self,
        _model: ModelSource<'_>,
        _options: &SessionOptions,
    ) -> Result<Box<dyn Session>, InferError> {
        Ok(Box::new(FakeSession {
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }))
    }
}

#[derive(Debug)]
struct FakeSession {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl Session for FakeSession {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Output element `i` is `(mean of the first input + i) mod 1`, so different inputs give different outputs.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferError> {
        check_inputs(&self.inputs, inputs)?;
        let values = inputs.first().map(Tensor::to_f64_vec).unwrap_or_default();
        let mean = if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        };
        Ok(self
            .outputs
            .iter()
            .map(|spec| {
                let shape = spec.concrete_shape(1);
                let n: usize = shape.iter().product();
                let data: Vec<f32> = (0..n)
                    .map(|i| ((mean + i as f64).rem_euclid(1.0)) as f32)
                    .collect();
                Tensor::F32(
                    ndarray::ArrayD::from_shape_vec(shape, data).expect("length is the shape's product"),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ElementType;

    #[test]
    fn fake_sessions_check_inputs_and_answer_deterministically() {
        let spec = |name: &str, shape| TensorSpec {
            name: name.into(),
            dtype: ElementType::F32,
            shape,
        };
        let backend = FakeBackend::new(
            vec![spec("x", vec![None, Some(2)])],
            vec![spec("y", vec![Some(3)])],
        );
        let mut s = backend
            .load(ModelSource::Bytes(&[]), &SessionOptions::default())
            .unwrap();
        let x = Tensor::F32(ndarray::ArrayD::from_elem(vec![1, 2], 0.25));
        let a = s.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(a, s.run(&[x]).unwrap());
        assert_eq!(a[0].shape(), &[3]);
        let wrong = Tensor::F32(ndarray::ArrayD::zeros(vec![1, 3]));
        assert!(matches!(s.run(&[wrong]), Err(InferError::InputShape { .. })));
    }
}
