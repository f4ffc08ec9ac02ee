//! The layers of the reference CNN, forward and backward, for one image at a time: 3×3
//! convolution with padding 1 (im2col + a matrix multiply), ReLU, 2×2 max pooling, global average
//! pooling, a linear layer and softmax cross-entropy.
//!
//! Every tensor is a plain row-major `f32` slice: feature maps are CHW, convolution weights
//! `[c_out, c_in·9]` (the ONNX `[c_out, c_in, 3, 3]` layout), the linear weight `[in, out]`.
//! Matrix multiplies go through `ndarray::linalg::general_mat_mul`, which calls the
//! `matrixmultiply` crate's sgemm (runtime-selected AVX2/FMA kernels, no `unsafe` here). Backward
//! functions *add* into their gradient outputs, so a caller can sum the gradients of several
//! images in place, in an order it chooses.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Kernel side of every convolution.
pub const KERNEL: usize = 3;
/// Values per output channel and input channel of a convolution weight.
pub const KERNEL_AREA: usize = KERNEL * KERNEL;

/// `c = a · b + beta · c` for row-major `a` (`m×k`, or `k×m` read transposed when `a_t`), `b`
/// (`k×n`, or `n×k` read transposed when `b_t`) and `c` (`m×n`).
#[allow(clippy::too_many_arguments)] // a GEMM is its shapes and operands
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    beta: f32,
    c: &mut [f32],
) {
    let a = if a_t {
        ArrayView2::from_shape((k, m), a).map(ArrayView2::reversed_axes)
    } else {
        ArrayView2::from_shape((m, k), a)
    }
    .expect("gemm: the caller sizes `a` as m·k");
    let b = if b_t {
        ArrayView2::from_shape((n, k), b).map(ArrayView2::reversed_axes)
    } else {
        ArrayView2::from_shape((k, n), b)
    }
    .expect("gemm: the caller sizes `b` as k·n");
    let mut c = ArrayViewMut2::from_shape((m, n), c).expect("gemm: the caller sizes `c` as m·n");
    general_mat_mul(1.0, &a, &b, beta, &mut c);
}

/// Shape of a 3×3, padding 1, stride 1 convolution on one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Feature-map height (same in and out).
    pub h: usize,
    /// Feature-map width (same in and out).
    pub w: usize,
}

impl ConvShape {
    /// Rows of the im2col matrix (`c_in·9`).
    pub fn k(&self) -> usize {
        self.c_in * KERNEL_AREA
    }

    /// Pixels per channel.
    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Values of the convolution weight.
    pub fn weight_len(&self) -> usize {
        self.c_out * self.k()
    }
}

/// Unfolds a CHW image into `col` (`[c·9, h·w]`): row `c·9 + ky·3 + kx` holds the input shifted
/// by `(ky − 1, kx − 1)`, zero outside the image.
pub fn im2col(s: &ConvShape, x: &[f32], col: &mut [f32]) {
    let (h, w, hw) = (s.h, s.w, s.hw());
    debug_assert_eq!(x.len(), s.c_in * hw);
    debug_assert_eq!(col.len(), s.k() * hw);
    for c in 0..s.c_in {
        let plane = &x[c * hw..(c + 1) * hw];
        for ky in 0..KERNEL {
            for kx in 0..KERNEL {
                let row = &mut col[((c * KERNEL_AREA) + ky * KERNEL + kx) * hw..][..hw];
                // Output column x reads input column x + kx − 1.
                let (x0, x1) = (usize::from(kx == 0), w - usize::from(kx == 2));
                for y in 0..h {
                    let out = &mut row[y * w..(y + 1) * w];
                    let sy = y + ky;
                    if sy < 1 || sy > h {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[(sy - 1) * w..sy * w];
                    out[..x0].fill(0.0);
                    out[x1..].fill(0.0);
                    out[x0..x1].copy_from_slice(&src[x0 + kx - 1..x1 + kx - 1]);
                }
            }
        }
    }
}

/// Folds `col` (`[c·9, h·w]`) back onto a CHW image, adding into `dx`: the adjoint of [`im2col`].
pub fn col2im_add(s: &ConvShape, col: &[f32], dx: &mut [f32]) {
    let (h, w, hw) = (s.h, s.w, s.hw());
    debug_assert_eq!(dx.len(), s.c_in * hw);
    for c in 0..s.c_in {
        let plane = &mut dx[c * hw..(c + 1) * hw];
        for ky in 0..KERNEL {
            for kx in 0..KERNEL {
                let row = &col[((c * KERNEL_AREA) + ky * KERNEL + kx) * hw..][..hw];
                let (x0, x1) = (usize::from(kx == 0), w - usize::from(kx == 2));
                for y in 0..h {
                    let sy = y + ky;
                    if sy < 1 || sy > h {
                        continue;
                    }
                    let dst = &mut plane[(sy - 1) * w..sy * w];
                    for (d, v) in dst[x0 + kx - 1..x1 + kx - 1]
                        .iter_mut()
                        .zip(&row[y * w + x0..y * w + x1])
                    {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// Convolution: `y = weight · col + bias` (`y` is `[c_out, h·w]`); `col` must already hold
/// [`im2col`] of the input.
pub fn conv_forward(s: &ConvShape, weight: &[f32], bias: &[f32], col: &[f32], y: &mut [f32]) {
    let hw = s.hw();
    for (row, &b) in y.chunks_exact_mut(hw).zip(bias) {
        row.fill(b);
    }
    gemm(s.c_out, hw, s.k(), weight, false, col, false, 1.0, y);
}

/// Convolution backward: adds `dy · colᵀ` to `dweight` and the row sums of `dy` to `dbias`, and
/// when `dcol` is given sets it to `weightᵀ · dy` (fold it with [`col2im_add`] for the input
/// gradient).
pub fn conv_backward(
    s: &ConvShape,
    weight: &[f32],
    col: &[f32],
    dy: &[f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dcol: Option<&mut [f32]>,
) {
    let hw = s.hw();
    gemm(s.c_out, s.k(), hw, dy, false, col, true, 1.0, dweight);
    for (db, row) in dbias.iter_mut().zip(dy.chunks_exact(hw)) {
        *db += row.iter().sum::<f32>();
    }
    if let Some(dcol) = dcol {
        gemm(s.k(), hw, s.c_out, weight, true, dy, false, 0.0, dcol);
    }
}

/// ReLU in place.
pub fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// ReLU backward in place: zeroes `dy` where the ReLU's output `y` is not positive.
pub fn relu_backward(y: &[f32], dy: &mut [f32]) {
    for (d, &v) in dy.iter_mut().zip(y) {
        if v <= 0.0 {
            *d = 0.0;
        }
    }
}

/// 2×2 max pooling with stride 2 of `c` planes `h×w` (odd edges dropped, as ONNX MaxPool does
/// without padding). Records in `argmax` which input position each output came from.
pub fn maxpool_forward(c: usize, h: usize, w: usize, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = (h / 2, w / 2);
    debug_assert_eq!(y.len(), c * oh * ow);
    for ch in 0..c {
        let plane = &x[ch * h * w..(ch + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let i0 = 2 * oy * w + 2 * ox;
                let mut best = i0;
                for i in [i0 + 1, i0 + w, i0 + w + 1] {
                    if plane[i] > plane[best] {
                        best = i;
                    }
                }
                let o = ch * oh * ow + oy * ow + ox;
                y[o] = plane[best];
                argmax[o] = (ch * h * w + best) as u32;
            }
        }
    }
}

/// Max pooling backward: sets `dx` (the input's shape) to `dy` routed to the recorded maxima.
pub fn maxpool_backward(dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    dx.fill(0.0);
    for (&d, &i) in dy.iter().zip(argmax) {
        dx[i as usize] += d;
    }
}

/// Global average pooling of `c` planes of `hw` values each.
pub fn gap_forward(hw: usize, x: &[f32], y: &mut [f32]) {
    for (o, plane) in y.iter_mut().zip(x.chunks_exact(hw)) {
        *o = plane.iter().sum::<f32>() / hw as f32;
    }
}

/// Global average pooling backward: sets `dx` to each channel's gradient spread evenly.
pub fn gap_backward(hw: usize, dy: &[f32], dx: &mut [f32]) {
    for (plane, &d) in dx.chunks_exact_mut(hw).zip(dy) {
        plane.fill(d / hw as f32);
    }
}

/// Linear layer `y = x · weight + bias` with `weight` `[in, out]`.
pub fn linear_forward(weight: &[f32], bias: &[f32], x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(bias);
    gemm(1, y.len(), x.len(), x, false, weight, false, 1.0, y);
}

/// Linear backward: adds `xᵀ · dy` to `dweight` and `dy` to `dbias`; sets `dx = weight · dyᵀ`.
pub fn linear_backward(
    weight: &[f32],
    x: &[f32],
    dy: &[f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dx: &mut [f32],
) {
    let (n_in, n_out) = (x.len(), dy.len());
    for (row, &xi) in dweight.chunks_exact_mut(n_out).zip(x) {
        for (w, &d) in row.iter_mut().zip(dy) {
            *w += xi * d;
        }
    }
    for (b, &d) in dbias.iter_mut().zip(dy) {
        *b += d;
    }
    debug_assert_eq!(dx.len(), n_in);
    for (o, row) in dx.iter_mut().zip(weight.chunks_exact(n_out)) {
        *o = row.iter().zip(dy).map(|(w, d)| w * d).sum();
    }
}

/// Softmax cross-entropy of one image's `logits` against class `target`, scaled by `scale` (for
/// example 1/batch for a batch mean): returns the unscaled loss and sets `dlogits` to
/// `scale · (softmax − onehot)`.
pub fn softmax_cross_entropy(logits: &[f32], target: usize, scale: f32, dlogits: &mut [f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (d, &z) in dlogits.iter_mut().zip(logits) {
        *d = (z - max).exp();
        sum += *d;
    }
    for (i, d) in dlogits.iter_mut().enumerate() {
        let p = *d / sum;
        *d = scale * (p - if i == target { 1.0 } else { 0.0 });
    }
    sum.ln() + max - logits[target]
}

#[cfg(test)]
mod tests {
    //! Finite-difference checks of every backward function: the scalar `L = Σ r·f(x)` with a
    //! fixed random `r` has gradient `backward(r)`; central differences must agree.

    use onnx::rng::Rng;

    use super::*;

    const EPS: f32 = 1e-2;

    /// Central difference of `loss` at `x[i]`.
    fn numeric(x: &mut [f32], i: usize, loss: &mut dyn FnMut(&[f32]) -> f64) -> f64 {
        let v = x[i];
        x[i] = v + EPS;
        let up = loss(x);
        x[i] = v - EPS;
        let down = loss(x);
        x[i] = v;
        (up - down) / (2.0 * f64::from(EPS))
    }

    fn assert_close(analytic: &[f32], x: &mut [f32], what: &str, loss: &mut dyn FnMut(&[f32]) -> f64) {
        assert_eq!(analytic.len(), x.len());
        for (i, &a) in analytic.iter().enumerate() {
            let n = numeric(x, i, loss);
            let a = f64::from(a);
            assert!(
                (a - n).abs() <= 2e-3 * (1.0 + n.abs()),
                "{what}[{i}]: analytic {a}, numeric {n}"
            );
        }
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
    }

    #[test]
    fn gemm_matches_a_naive_product_in_every_transpose_mode() {
        let mut rng = Rng::new(3);
        let (m, n, k) = (5, 7, 9);
        let a = rng.normal_vec(m * k, 1.0);
        let b = rng.normal_vec(k * n, 1.0);
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>() + 1.0;
            }
        }
        for (a, a_t) in [(&a, false), (&at, true)] {
            for (b, b_t) in [(&b, false), (&bt, true)] {
                let mut c = vec![1.0f32; m * n];
                gemm(m, n, k, a, a_t, b, b_t, 1.0, &mut c);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "{a_t} {b_t}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn im2col_matches_a_direct_convolution() {
        let s = ConvShape {
            c_in: 2,
            c_out: 3,
            h: 5,
            w: 4,
        };
        let mut rng = Rng::new(4);
        let x = rng.normal_vec(s.c_in * s.hw(), 1.0);
        let wt = rng.normal_vec(s.weight_len(), 1.0);
        let b = rng.normal_vec(s.c_out, 1.0);
        let mut col = vec![0.0; s.k() * s.hw()];
        im2col(&s, &x, &mut col);
        let mut y = vec![0.0; s.c_out * s.hw()];
        conv_forward(&s, &wt, &b, &col, &mut y);
        for o in 0..s.c_out {
            for yy in 0..s.h as isize {
                for xx in 0..s.w as isize {
                    let mut want = b[o];
                    for c in 0..s.c_in {
                        for ky in 0..3isize {
                            for kx in 0..3isize {
                                let (sy, sx) = (yy + ky - 1, xx + kx - 1);
                                if sy < 0 || sx < 0 || sy >= s.h as isize || sx >= s.w as isize {
                                    continue;
                                }
                                want += wt[o * s.k() + c * 9 + (ky * 3 + kx) as usize]
                                    * x[c * s.hw() + (sy as usize) * s.w + sx as usize];
                            }
                        }
                    }
                    let got = y[o * s.hw() + yy as usize * s.w + xx as usize];
                    assert!((got - want).abs() < 1e-4, "({o},{yy},{xx}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn convolution_backward_matches_finite_differences() {
        let s = ConvShape {
            c_in: 2,
            c_out: 3,
            h: 4,
            w: 5,
        };
        let mut rng = Rng::new(5);
        let mut x = rng.normal_vec(s.c_in * s.hw(), 1.0);
        let mut wt = rng.normal_vec(s.weight_len(), 0.5);
        let mut b = rng.normal_vec(s.c_out, 0.5);
        let r = rng.normal_vec(s.c_out * s.hw(), 1.0);
        let forward = |x: &[f32], wt: &[f32], b: &[f32]| {
            let mut col = vec![0.0; s.k() * s.hw()];
            im2col(&s, x, &mut col);
            let mut y = vec![0.0; s.c_out * s.hw()];
            conv_forward(&s, wt, b, &col, &mut y);
            (col, y)
        };
        let (col, _) = forward(&x, &wt, &b);
        // Gradients are added: start from a non-zero value and subtract it again.
        let mut dw = vec![1.0; s.weight_len()];
        let mut db = vec![1.0; s.c_out];
        let mut dcol = vec![7.0; s.k() * s.hw()];
        conv_backward(&s, &wt, &col, &r, &mut dw, &mut db, Some(&mut dcol));
        dw.iter_mut().for_each(|v| *v -= 1.0);
        db.iter_mut().for_each(|v| *v -= 1.0);
        let mut dx = vec![0.0; x.len()];
        col2im_add(&s, &dcol, &mut dx);

        let (w0, b0, x0) = (wt.clone(), b.clone(), x.clone());
        assert_close(&dw, &mut wt, "dweight", &mut |w| dot(&forward(&x0, w, &b0).1, &r));
        assert_close(&db, &mut b, "dbias", &mut |b| dot(&forward(&x0, &w0, b).1, &r));
        assert_close(&dx, &mut x, "dinput", &mut |x| dot(&forward(x, &w0, &b0).1, &r));
    }

    #[test]
    fn relu_and_max_pooling_backward_match_finite_differences() {
        let (c, h, w) = (2, 5, 4);
        let mut rng = Rng::new(6);
        // Distinct values, none within EPS of 0 or of each other, so no kink is crossed.
        let mut order: Vec<usize> = (0..c * h * w).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut x: Vec<f32> = order.iter().map(|&i| i as f32 * 0.1 - 1.95).collect();
        let (oh, ow) = (h / 2, w / 2);
        let r = rng.normal_vec(c * oh * ow, 1.0);
        let forward = |x: &[f32]| {
            let mut a = x.to_vec();
            relu(&mut a);
            let mut y = vec![0.0; c * oh * ow];
            let mut idx = vec![0u32; y.len()];
            maxpool_forward(c, h, w, &a, &mut y, &mut idx);
            (a, y, idx)
        };
        let (a, _, idx) = forward(&x);
        let mut dx = vec![9.0; x.len()];
        maxpool_backward(&r, &idx, &mut dx);
        relu_backward(&a, &mut dx);
        assert!(
            dx.iter().filter(|v| **v != 0.0).count() >= 4,
            "some maxima are positive"
        );
        assert_close(&dx, &mut x, "relu+maxpool", &mut |x| dot(&forward(x).1, &r));
    }

    #[test]
    fn pooling_linear_and_cross_entropy_backward_match_finite_differences() {
        let (c, hw, classes) = (3, 6, 4);
        let mut rng = Rng::new(7);
        let mut x = rng.normal_vec(c * hw, 1.0);
        let mut wt = rng.normal_vec(c * classes, 1.0);
        let mut b = rng.normal_vec(classes, 1.0);
        let target = 2;
        let loss = |x: &[f32], wt: &[f32], b: &[f32]| {
            let mut g = vec![0.0; c];
            gap_forward(hw, x, &mut g);
            let mut z = vec![0.0; classes];
            linear_forward(wt, b, &g, &mut z);
            let mut scratch = vec![0.0; classes];
            f64::from(softmax_cross_entropy(&z, target, 1.0, &mut scratch))
        };
        let mut g = vec![0.0; c];
        gap_forward(hw, &x, &mut g);
        let mut z = vec![0.0; classes];
        linear_forward(&wt, &b, &g, &mut z);
        let mut dz = vec![0.0; classes];
        let l = softmax_cross_entropy(&z, target, 1.0, &mut dz);
        assert!((f64::from(l) - loss(&x, &wt, &b)).abs() < 1e-6);
        let (mut dw, mut db, mut dg) = (vec![0.0; wt.len()], vec![0.0; classes], vec![0.0; c]);
        linear_backward(&wt, &g, &dz, &mut dw, &mut db, &mut dg);
        let mut dx = vec![0.0; x.len()];
        gap_backward(hw, &dg, &mut dx);

        let (w0, b0, x0) = (wt.clone(), b.clone(), x.clone());
        assert_close(&dw, &mut wt, "linear dweight", &mut |w| loss(&x0, w, &b0));
        assert_close(&db, &mut b, "linear dbias", &mut |b| loss(&x0, &w0, b));
        assert_close(&dx, &mut x, "gap+linear dinput", &mut |x| loss(x, &w0, &b0));
        let mut scaled = vec![0.0; classes];
        softmax_cross_entropy(&z, target, 0.25, &mut scaled);
        for (s, d) in scaled.iter().zip(&dz) {
            assert!((s - 0.25 * d).abs() < 1e-7);
        }
    }
}
