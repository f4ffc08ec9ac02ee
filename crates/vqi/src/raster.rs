//! Small raster primitives for the image generator: an RGB float canvas with filled polygons,
//! thick lines, ellipses, gradients, blur, noise and affine transforms.
//!
//! Written here rather than taken from a drawing crate: the generator needs a dozen operations,
//! exact control of every value (so a seed gives the same bytes everywhere) and no extra build time.
//! Pixel (x, y) covers `[x, x+1) × [y, y+1)`; shapes cover the pixels whose centres they contain.
//! Anti-aliasing comes from drawing at a multiple of the output size and averaging
//! ([`Canvas::downsample`]).

use onnx::rng::Rng;

/// A linear RGB colour, channels nominally in `0..=1`.
pub type Rgb = [f32; 3];

/// A point in pixel coordinates (or in an asset's local coordinates before a [`Affine`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pt {
    /// Horizontal position, growing to the right.
    pub x: f32,
    /// Vertical position, growing downwards.
    pub y: f32,
}

/// Shorthand for [`Pt`].
pub fn pt(x: f32, y: f32) -> Pt {
    Pt { x, y }
}

/// Linear interpolation between colours.
pub fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// A colour scaled by `k` (brightness).
pub fn scale(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// A colour with each channel moved by up to `±amount` at random.
pub fn jitter(c: Rgb, amount: f32, rng: &mut Rng) -> Rgb {
    [
        c[0] + rng.uniform(-amount, amount),
        c[1] + rng.uniform(-amount, amount),
        c[2] + rng.uniform(-amount, amount),
    ]
}

/// A 2D affine map `p ↦ (a·x + b·y + tx, c·x + d·y + ty)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    a: f32,
    b: f32,
    c: f32,
    d: f32,
    tx: f32,
    ty: f32,
}

impl Affine {
    /// The identity.
    pub const IDENTITY: Affine = Affine {
        a: 1.0,
        b: 0.0,
        c: 0.0,
        d: 1.0,
        tx: 0.0,
        ty: 0.0,
    };

    /// A translation.
    pub fn translate(x: f32, y: f32) -> Self {
        Self {
            tx: x,
            ty: y,
            ..Self::IDENTITY
        }
    }

    /// A scaling about the origin.
    pub fn scale(sx: f32, sy: f32) -> Self {
        Self {
            a: sx,
            d: sy,
            ..Self::IDENTITY
        }
    }

    /// A rotation about the origin by `degrees`, clockwise on screen (y grows downwards).
    pub fn rotate(degrees: f32) -> Self {
        let (s, c) = degrees.to_radians().sin_cos();
        Self {
            a: c,
            b: -s,
            c: s,
            d: c,
            ..Self::IDENTITY
        }
    }

    /// A horizontal shear: x moves by `k·y`.
    pub fn shear_x(k: f32) -> Self {
        Self {
            b: k,
            ..Self::IDENTITY
        }
    }

    /// `self ∘ inner`: apply `inner` first, then `self`.
    pub fn then(self, inner: Affine) -> Affine {
        Affine {
            a: self.a * inner.a + self.b * inner.c,
            b: self.a * inner.b + self.b * inner.d,
            c: self.c * inner.a + self.d * inner.c,
            d: self.c * inner.b + self.d * inner.d,
            tx: self.a * inner.tx + self.b * inner.ty + self.tx,
            ty: self.c * inner.tx + self.d * inner.ty + self.ty,
        }
    }

    /// The image of a point.
    pub fn apply(&self, p: Pt) -> Pt {
        pt(
            self.a * p.x + self.b * p.y + self.tx,
            self.c * p.x + self.d * p.y + self.ty,
        )
    }

    /// How much the map scales lengths (square root of the absolute determinant).
    pub fn length_scale(&self) -> f32 {
        (self.a * self.d - self.b * self.c).abs().sqrt()
    }
}

/// An RGB image of floats.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    width: usize,
    height: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    /// A canvas filled with one colour.
    pub fn new(width: usize, height: usize, fill: Rgb) -> Self {
        Self {
            width,
            height,
            px: vec![fill; width * height],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The colour at (x, y).
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        self.px[y * self.width + x]
    }

    fn blend(&mut self, x: usize, y: usize, color: Rgb, alpha: f32) {
        let p = &mut self.px[y * self.width + x];
        *p = mix(*p, color, alpha);
    }

    /// Fills every row with the colour of a vertical gradient through `stops` (position in
    /// `0..=1` of the height, colour), interpolated linearly.
    pub fn vertical_gradient(&mut self, stops: &[(f32, Rgb)]) {
        if stops.is_empty() {
            return;
        }
        for y in 0..self.height {
            let t = (y as f32 + 0.5) / self.height as f32;
            let color = gradient_at(stops, t);
            self.px[y * self.width..(y + 1) * self.width].fill(color);
        }
    }

    /// Fills the pixels below the line through `left` and `right` (extended across the whole
    /// width) with a vertical gradient from `top` at the line to `bottom` at the last row.
    pub fn fill_below_line(&mut self, left: Pt, right: Pt, top: Rgb, bottom: Rgb) {
        let slope = (right.y - left.y) / (right.x - left.x).max(1e-3);
        for x in 0..self.width {
            let cx = x as f32 + 0.5;
            let line_y = left.y + slope * (cx - left.x);
            let span = (self.height as f32 - line_y).max(1.0);
            for y in 0..self.height {
                let cy = y as f32 + 0.5;
                if cy >= line_y {
                    let t = ((cy - line_y) / span).clamp(0.0, 1.0);
                    self.px[y * self.width + x] = mix(top, bottom, t);
                }
            }
        }
    }

    /// Fills a polygon (even-odd rule) with `color` at opacity `alpha`.
    pub fn fill_polygon(&mut self, points: &[Pt], color: Rgb, alpha: f32) {
        if points.len() < 3 || alpha <= 0.0 {
            return;
        }
        let (min_y, max_y) = points
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.y), hi.max(p.y))
            });
        if !min_y.is_finite() || !max_y.is_finite() {
            return;
        }
        let y0 = (min_y - 0.5).ceil().max(0.0) as usize;
        let y1 = ((max_y - 0.5).floor() + 1.0).clamp(0.0, self.height as f32) as usize;
        let mut crossings: Vec<f32> = Vec::with_capacity(8);
        for y in y0..y1 {
            let cy = y as f32 + 0.5;
            crossings.clear();
            for (i, p) in points.iter().enumerate() {
                let q = points[(i + 1) % points.len()];
                // Half-open rule on y so a vertex shared by two edges counts once.
                if (p.y <= cy && q.y > cy) || (q.y <= cy && p.y > cy) {
                    crossings.push(p.x + (cy - p.y) / (q.y - p.y) * (q.x - p.x));
                }
            }
            crossings.sort_by(f32::total_cmp);
            for pair in crossings.chunks_exact(2) {
                let x0 = (pair[0] - 0.5).ceil().max(0.0) as usize;
                let x1 = ((pair[1] - 0.5).ceil()).clamp(0.0, self.width as f32) as usize;
                for x in x0..x1 {
                    self.blend(x, y, color, alpha);
                }
            }
        }
    }

    /// Draws a segment of the given width (a filled quad, square ends).
    pub fn line(&mut self, a: Pt, b: Pt, width: f32, color: Rgb, alpha: f32) {
        let (dx, dy) = (b.x - a.x, b.y - a.y);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-6 {
            self.ellipse(a, width / 2.0, width / 2.0, 0.0, color, alpha);
            return;
        }
        // Thin lines are widened to one pixel so they never vanish between pixel centres; their
        // opacity falls with their true width, which keeps them faint as they should be.
        let drawn = width.max(1.0);
        let alpha = alpha * (width / drawn);
        let (nx, ny) = (-dy / len * drawn / 2.0, dx / len * drawn / 2.0);
        self.fill_polygon(
            &[
                pt(a.x + nx, a.y + ny),
                pt(b.x + nx, b.y + ny),
                pt(b.x - nx, b.y - ny),
                pt(a.x - nx, a.y - ny),
            ],
            color,
            alpha,
        );
    }

    /// Draws connected segments.
    pub fn polyline(&mut self, points: &[Pt], width: f32, color: Rgb, alpha: f32) {
        for w in points.windows(2) {
            self.line(w[0], w[1], width, color, alpha);
        }
    }

    /// Fills an ellipse with radii `rx`, `ry`, rotated by `degrees`.
    pub fn ellipse(&mut self, c: Pt, rx: f32, ry: f32, degrees: f32, color: Rgb, alpha: f32) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        let r = rx.max(ry);
        let x0 = (c.x - r).floor().max(0.0) as usize;
        let x1 = ((c.x + r).ceil() + 1.0).clamp(0.0, self.width as f32) as usize;
        let y0 = (c.y - r).floor().max(0.0) as usize;
        let y1 = ((c.y + r).ceil() + 1.0).clamp(0.0, self.height as f32) as usize;
        let (s, co) = degrees.to_radians().sin_cos();
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - c.x, y as f32 + 0.5 - c.y);
                let u = (dx * co + dy * s) / rx;
                let v = (-dx * s + dy * co) / ry;
                if u * u + v * v <= 1.0 {
                    self.blend(x, y, color, alpha);
                }
            }
        }
    }

    /// Applies `f` to every pixel, with its position as fractions of the size.
    pub fn map(&mut self, mut f: impl FnMut(f32, f32, Rgb) -> Rgb) {
        for y in 0..self.height {
            let fy = (y as f32 + 0.5) / self.height as f32;
            for x in 0..self.width {
                let fx = (x as f32 + 0.5) / self.width as f32;
                let p = &mut self.px[y * self.width + x];
                *p = f(fx, fy, *p);
            }
        }
    }

    /// Adds independent Gaussian noise with standard deviation `sigma` to every channel, plus a
    /// luminance component of `sigma_luma` shared by the three channels.
    pub fn add_noise(&mut self, rng: &mut Rng, sigma: f32, sigma_luma: f32) {
        for p in &mut self.px {
            let l = rng.normal() as f32 * sigma_luma;
            for c in p.iter_mut() {
                *c += l + rng.normal() as f32 * sigma;
            }
        }
    }

    /// A box blur of the given radius (in pixels) repeated three times (close to a Gaussian);
    /// fractional radii blend the two neighbouring integer radii.
    pub fn blur(&mut self, radius: f32) {
        if radius <= 0.05 {
            return;
        }
        let lo = radius.floor() as usize;
        let frac = radius - lo as f32;
        let blurred_lo = if lo == 0 {
            self.clone()
        } else {
            self.box_blurred(lo)
        };
        if frac < 0.01 {
            *self = blurred_lo;
            return;
        }
        let blurred_hi = self.box_blurred(lo + 1);
        for (p, (a, b)) in self.px.iter_mut().zip(blurred_lo.px.iter().zip(&blurred_hi.px)) {
            *p = mix(*a, *b, frac);
        }
    }

    fn box_blurred(&self, r: usize) -> Canvas {
        let mut out = self.clone();
        for _ in 0..3 {
            out = out.box_pass(r, true).box_pass(r, false);
        }
        out
    }

    /// One box-filter pass along rows (`horizontal`) or columns, clamping at the borders.
    fn box_pass(&self, r: usize, horizontal: bool) -> Canvas {
        let (w, h) = (self.width, self.height);
        let mut out = self.clone();
        let n = 2 * r + 1;
        let (lines, len) = if horizontal { (h, w) } else { (w, h) };
        let at = |line: usize, i: usize| if horizontal { line * w + i } else { i * w + line };
        for line in 0..lines {
            for i in 0..len {
                let mut sum = [0.0f32; 3];
                for k in 0..n {
                    let j = (i + k).saturating_sub(r).min(len - 1);
                    let p = self.px[at(line, j)];
                    sum[0] += p[0];
                    sum[1] += p[1];
                    sum[2] += p[2];
                }
                out.px[at(line, i)] = scale(sum, 1.0 / n as f32);
            }
        }
        out
    }

    /// The canvas shrunk by an integer factor, each output pixel the mean of a `factor`² block.
    pub fn downsample(&self, factor: usize) -> Canvas {
        if factor <= 1 {
            return self.clone();
        }
        let (w, h) = (self.width / factor, self.height / factor);
        let mut out = Canvas::new(w, h, [0.0; 3]);
        let k = 1.0 / (factor * factor) as f32;
        for y in 0..h {
            for x in 0..w {
                let mut sum = [0.0f32; 3];
                for dy in 0..factor {
                    for dx in 0..factor {
                        let p = self.px[(y * factor + dy) * self.width + x * factor + dx];
                        sum[0] += p[0];
                        sum[1] += p[1];
                        sum[2] += p[2];
                    }
                }
                out.px[y * w + x] = scale(sum, k);
            }
        }
        out
    }

    /// Shifts one channel by `dx` whole pixels (lateral chromatic aberration of a cheap lens).
    pub fn shift_channel(&mut self, channel: usize, dx: isize) {
        let src = self.clone();
        for y in 0..self.height {
            for x in 0..self.width {
                let sx = (x as isize - dx).clamp(0, self.width as isize - 1) as usize;
                self.px[y * self.width + x][channel] = src.px[y * self.width + sx][channel];
            }
        }
    }

    /// 8-bit RGB bytes, row-major, each channel rounded and clamped to `0..=255`.
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.px
            .iter()
            .flat_map(|p| p.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8))
            .collect()
    }
}

fn gradient_at(stops: &[(f32, Rgb)], t: f32) -> Rgb {
    let first = stops[0];
    if t <= first.0 {
        return first.1;
    }
    for w in stops.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t <= t1 {
            return mix(c0, c1, ((t - t0) / (t1 - t0).max(1e-6)).clamp(0.0, 1.0));
        }
    }
    stops[stops.len() - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: Rgb = [1.0; 3];

    fn covered(c: &Canvas) -> usize {
        (0..c.height())
            .flat_map(|y| (0..c.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y)[0] > 0.5)
            .count()
    }

    #[test]
    fn a_polygon_covers_the_pixel_centres_inside_it() {
        let mut c = Canvas::new(10, 10, [0.0; 3]);
        c.fill_polygon(
            &[pt(2.0, 2.0), pt(6.0, 2.0), pt(6.0, 5.0), pt(2.0, 5.0)],
            WHITE,
            1.0,
        );
        assert_eq!(covered(&c), 12);
        assert_eq!(c.get(2, 2), WHITE);
        assert_eq!(c.get(6, 2), [0.0; 3]);
        // A triangle has about half the area of its box.
        let mut t = Canvas::new(100, 100, [0.0; 3]);
        t.fill_polygon(&[pt(0.0, 0.0), pt(100.0, 0.0), pt(0.0, 100.0)], WHITE, 1.0);
        assert!((covered(&t) as i64 - 5000).abs() < 100, "{}", covered(&t));
    }

    #[test]
    fn shapes_outside_the_canvas_are_clipped_not_panicking() {
        let mut c = Canvas::new(8, 8, [0.0; 3]);
        c.fill_polygon(&[pt(-50.0, -50.0), pt(50.0, -50.0), pt(50.0, 50.0)], WHITE, 1.0);
        c.ellipse(pt(-20.0, 30.0), 5.0, 5.0, 0.0, WHITE, 1.0);
        c.line(pt(-10.0, 4.0), pt(30.0, 4.0), 2.0, WHITE, 1.0);
        c.fill_polygon(&[pt(f32::NAN, 0.0), pt(1.0, 1.0), pt(2.0, 0.0)], WHITE, 1.0);
        assert!(covered(&c) > 0);
    }

    #[test]
    fn ellipse_area_is_pi_rx_ry() {
        let mut c = Canvas::new(100, 100, [0.0; 3]);
        c.ellipse(pt(50.0, 50.0), 30.0, 15.0, 30.0, WHITE, 1.0);
        let expected = std::f32::consts::PI * 30.0 * 15.0;
        assert!((covered(&c) as f32 - expected).abs() < expected * 0.02);
    }

    #[test]
    fn blur_and_downsample_keep_the_mean() {
        let mut rng = Rng::new(1);
        let mut c = Canvas::new(16, 16, [0.5; 3]);
        c.add_noise(&mut rng, 0.1, 0.05);
        let mean = |c: &Canvas| c.px.iter().map(|p| p[0]).sum::<f32>() / c.px.len() as f32;
        let before = mean(&c);
        let mut b = c.clone();
        b.blur(1.5);
        assert!((mean(&b) - before).abs() < 0.01);
        assert!((mean(&c.downsample(4)) - before).abs() < 1e-4);
        assert_eq!(c.downsample(4).width(), 4);
    }

    #[test]
    fn affine_composition_applies_inner_first() {
        let t = Affine::translate(10.0, 0.0).then(Affine::scale(2.0, 2.0));
        assert_eq!(t.apply(pt(1.0, 1.0)), pt(12.0, 2.0));
        let r = Affine::rotate(90.0).apply(pt(1.0, 0.0));
        assert!((r.x).abs() < 1e-6 && (r.y - 1.0).abs() < 1e-6);
        assert!((Affine::scale(3.0, 3.0).length_scale() - 3.0).abs() < 1e-6);
    }

    #[test]
    fn bytes_are_clamped_and_rounded() {
        let c = Canvas::new(1, 1, [-0.2, 0.5, 1.7]);
        assert_eq!(c.to_rgb8(), vec![0, 128, 255]);
    }
}
