//! The data every task and stream item carries: an array of floats with
//! its shape.

use crate::Shape;

/// An array of floats with its shape (row-major for matrices).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Its shape.
    pub shape: Shape,
    /// Its elements.
    pub data: Vec<f64>,
}

impl Array {
    /// A flat list.
    pub fn list(data: Vec<f64>) -> Array {
        Array {
            shape: Shape::List(data.len() as u64),
            data,
        }
    }

    /// A `rows × cols` matrix; `None` if `data` does not hold that many elements.
    pub fn matrix(rows: u64, cols: u64, data: Vec<f64>) -> Option<Array> {
        let shape = Shape::Matrix { rows, cols };
        (shape.elements() == Some(data.len() as u64)).then_some(Array { shape, data })
    }
}
