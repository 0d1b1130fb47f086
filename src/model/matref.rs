//! The strided matrix view the GEMM kernels (`gemm`, `bf16`) read.

/// A strided read-only matrix: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix `[rows, cols]`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The same shape, row-major in `data`.
    pub(crate) fn with_data(self, data: &'a [f32]) -> Self {
        Self::rows(data, self.rows, self.cols)
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `r0..r0+len` as a view.
    pub(crate) fn row_block(self, r0: usize, len: usize) -> Self {
        let off = if len == 0 { 0 } else { r0 * self.rs };
        Self {
            data: &self.data[off..],
            rows: len,
            ..self
        }
    }

    /// Columns `c0..c0+len` as a view.
    pub(crate) fn col_block(self, c0: usize, len: usize) -> Self {
        let off = if len == 0 { 0 } else { c0 * self.cs };
        Self {
            data: &self.data[off..],
            cols: len,
            ..self
        }
    }
}
