//! Procedural inspection photos: a background (sky, field or dusk), one asset (pole, tower,
//! transformer or insulator string) drawn in good, damaged or critical health, then lighting,
//! camera blur and sensor noise, and optionally a named distribution shift.
//!
//! Damage is graded so that a photo's class is visible at the model's 64×64 input: damaged
//! assets show moderate defects (moderate tilt and cracks, rust patches, rust streaks and oil
//! stains, a chipped disc with flashover soot), critical ones severe defects (strong tilt and a
//! broken cross-arm, heavy rust with buckled members, burn marks and a broken bushing, missing
//! discs). Three independent random streams drive the asset, the background and the
//! camera, so the same photo under a shift shows the same asset, only seen differently.

use std::fmt;
use std::str::FromStr;

use onnx::rng::Rng;

use crate::raster::{Affine, Canvas, Pt, Rgb, jitter, mix, pt, scale};
use crate::taxonomy::{AssetType, Class, Health};

/// A named distribution shift: conditions the in-distribution photos do not cover, for testing
/// how a deployed model copes and for the feedback loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shift {
    /// Late evening: dark, orange-tinted, noisy (high sensor gain).
    Dusk,
    /// Haze between camera and asset: low contrast, washed out, soft.
    Fog,
    /// A different camera: 4:3 frame, other colour response, vignetting, chromatic aberration,
    /// stronger chroma noise.
    NewCamera,
}

impl Shift {
    /// Every shift.
    pub const ALL: [Shift; 3] = [Self::Dusk, Self::Fog, Self::NewCamera];

    /// The command-line and index name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dusk => "dusk",
            Self::Fog => "fog",
            Self::NewCamera => "new-camera",
        }
    }

    /// Width of a photo of height `size` taken under this shift.
    pub fn width_for(shift: Option<Shift>, size: u32) -> u32 {
        match shift {
            Some(Self::NewCamera) => (size * 4).div_ceil(3),
            _ => size,
        }
    }
}

impl fmt::Display for Shift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Shift {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|x| x.as_str()).collect();
            format!("unknown shift '{s}' (expected one of: {})", names.join(", "))
        })
    }
}

/// Everything that determines one photo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhotoSpec {
    /// What the photo shows.
    pub class: Class,
    /// Seed of this photo (the generator derives it from the dataset seed and the photo's index).
    pub seed: u64,
    /// Height in pixels (the width follows from the shift: square, or 4:3 for `new-camera`).
    pub size: u32,
    /// Distribution shift, if any.
    pub shift: Option<Shift>,
}

/// The kind of background behind the asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backdrop {
    /// Looking up: sky only, maybe clouds.
    Sky,
    /// Sky over a field with a tree line.
    Field,
    /// Sunset sky over dark ground.
    Dusk,
}

/// Renders one photo as 8-bit RGB bytes (row-major), with its width and height.
pub fn render(spec: &PhotoSpec) -> (u32, u32, Vec<u8>) {
    let canvas = render_canvas(spec);
    (canvas.width() as u32, canvas.height() as u32, canvas.to_rgb8())
}

/// Renders one photo as a float canvas at its output size.
pub fn render_canvas(spec: &PhotoSpec) -> Canvas {
    let height = spec.size as usize;
    let width = Shift::width_for(spec.shift, spec.size) as usize;
    // Supersampling factor: about 256 canvas pixels per side at least, for anti-aliased edges.
    let ss = (320 / height.max(1)).clamp(1, 4);
    let (w, h) = (width * ss, height * ss);
    let mut asset_rng = Rng::new(stream_seed(spec.seed, 1));
    let mut backdrop_rng = Rng::new(stream_seed(spec.seed, 2));
    let mut camera_rng = Rng::new(stream_seed(spec.seed, 3));

    let backdrop = match spec.shift {
        Some(Shift::Dusk) => Backdrop::Dusk,
        _ => {
            let sky_share = if spec.class.asset == AssetType::Insulator {
                0.6
            } else {
                0.3
            };
            let r = backdrop_rng.next_f64();
            if r < sky_share {
                Backdrop::Sky
            } else if r < sky_share + (1.0 - sky_share) * 0.7 {
                Backdrop::Field
            } else {
                Backdrop::Dusk
            }
        }
    };
    let mut canvas = Canvas::new(w, h, [0.0; 3]);
    let horizon = draw_backdrop(
        &mut canvas,
        backdrop,
        spec.shift == Some(Shift::Dusk),
        &mut backdrop_rng,
    );

    // Placement: the asset's local frame has its base at (0, 0) and its top at (0, -1).
    let r = &mut asset_rng;
    let hf = h as f32;
    let size = hf * r.uniform(0.55, 0.88);
    let base_x = w as f32 * 0.5 + hf * r.uniform(-0.18, 0.18);
    let base_y = match (spec.class.asset, backdrop) {
        (AssetType::Insulator, _) => hf * 0.5 + size * 0.5 + hf * r.uniform(-0.05, 0.05),
        (_, Backdrop::Sky) => hf * r.uniform(0.92, 1.1),
        _ => (horizon + hf * r.uniform(0.08, 0.2))
            .min(hf * 0.98)
            .max(size + hf * 0.04),
    };
    let squash = r.uniform(0.78, 1.08);
    let frame = Affine::translate(base_x, base_y)
        .then(Affine::rotate(r.uniform(-3.0, 3.0)))
        .then(Affine::shear_x(r.uniform(-0.1, 0.1)))
        .then(Affine::scale(size * squash, size));
    let mut painter = Painter {
        canvas: &mut canvas,
        frame,
    };
    match spec.class.asset {
        AssetType::Pole => draw_pole(&mut painter, spec.class.health, r),
        AssetType::Tower => draw_tower(&mut painter, spec.class.health, r),
        AssetType::Transformer => draw_transformer(&mut painter, spec.class.health, r),
        AssetType::Insulator => draw_insulator(&mut painter, spec.class.health, r),
    }
    if backdrop == Backdrop::Field && spec.class.asset != AssetType::Insulator {
        draw_grass(&mut canvas, horizon, &mut backdrop_rng);
    }

    let mut out = canvas.downsample(ss);
    apply_camera(&mut out, spec.shift, backdrop, &mut camera_rng);
    out
}

/// Derives independent stream seeds from a photo seed.
fn stream_seed(seed: u64, stream: u64) -> u64 {
    seed.wrapping_mul(0xD134_2543_DE82_EF95)
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Draws the background; returns the horizon's y in canvas pixels.
fn draw_backdrop(c: &mut Canvas, kind: Backdrop, dark: bool, r: &mut Rng) -> f32 {
    let (w, h) = (c.width() as f32, c.height() as f32);
    match kind {
        Backdrop::Sky => {
            let overcast = r.next_f64() < 0.3;
            let (top, low) = if overcast {
                let g = r.uniform(0.55, 0.75);
                ([g, g, g + 0.03], [g + 0.12, g + 0.12, g + 0.13])
            } else {
                (
                    jitter([0.22, 0.42, 0.78], 0.06, r),
                    jitter([0.68, 0.8, 0.93], 0.04, r),
                )
            };
            c.vertical_gradient(&[(0.0, top), (1.0, low)]);
            let clouds = if overcast { 0 } else { r.below(4) as usize };
            draw_clouds(c, r, 0.0, h * 0.8, clouds);
            h * 1.2
        }
        Backdrop::Field => {
            let horizon = h * r.uniform(0.5, 0.72);
            let sky_top = jitter([0.3, 0.5, 0.82], 0.06, r);
            let sky_low = jitter([0.72, 0.82, 0.92], 0.04, r);
            c.vertical_gradient(&[(0.0, sky_top), (horizon / h, sky_low)]);
            let clouds = r.below(3) as usize;
            draw_clouds(c, r, 0.0, horizon * 0.7, clouds);
            let ground = if r.next_f64() < 0.6 {
                jitter([0.33, 0.5, 0.2], 0.05, r)
            } else {
                jitter([0.62, 0.56, 0.3], 0.05, r)
            };
            let tilt = h * r.uniform(-0.04, 0.04);
            c.fill_below_line(
                pt(0.0, horizon - tilt),
                pt(w, horizon + tilt),
                scale(ground, 0.85),
                scale(ground, 1.1),
            );
            // A distant tree line along the horizon.
            let trees = 4 + r.below(10) as usize;
            for _ in 0..trees {
                let x = r.uniform(0.0, w);
                let y = horizon + tilt * (2.0 * x / w - 1.0);
                let rad = h * r.uniform(0.02, 0.06);
                let green = jitter([0.16, 0.28, 0.14], 0.04, r);
                c.ellipse(
                    pt(x, y - rad * 0.6),
                    rad * r.uniform(1.0, 2.0),
                    rad,
                    0.0,
                    green,
                    0.95,
                );
            }
            horizon
        }
        Backdrop::Dusk => {
            let horizon = h * r.uniform(0.58, 0.8);
            let top = if dark {
                jitter([0.08, 0.07, 0.18], 0.03, r)
            } else {
                jitter([0.22, 0.2, 0.42], 0.05, r)
            };
            let mid = jitter([0.72, 0.42, 0.4], 0.06, r);
            let low = jitter([0.98, 0.64, 0.32], 0.05, r);
            c.vertical_gradient(&[(0.0, top), (horizon / h * 0.6, mid), (horizon / h, low)]);
            if r.next_f64() < 0.5 {
                let sun = pt(r.uniform(0.1, 0.9) * w, horizon - h * r.uniform(0.0, 0.05));
                let rad = h * r.uniform(0.03, 0.06);
                c.ellipse(sun, rad, rad, 0.0, [1.0, 0.85, 0.6], 0.9);
            }
            let ground = jitter([0.14, 0.12, 0.1], 0.03, r);
            c.fill_below_line(pt(0.0, horizon), pt(w, horizon), ground, scale(ground, 0.7));
            horizon
        }
    }
}

fn draw_clouds(c: &mut Canvas, r: &mut Rng, y0: f32, y1: f32, count: usize) {
    let (w, h) = (c.width() as f32, c.height() as f32);
    for _ in 0..count {
        let center = pt(r.uniform(0.0, w), r.uniform(y0, y1.max(y0 + 1.0)));
        let shade = r.uniform(0.88, 1.0);
        let alpha = r.uniform(0.5, 0.85);
        for _ in 0..(3 + r.below(4)) {
            let p = pt(
                center.x + h * r.uniform(-0.12, 0.12),
                center.y + h * r.uniform(-0.03, 0.03),
            );
            let rad = h * r.uniform(0.04, 0.09);
            c.ellipse(p, rad * 1.6, rad, 0.0, [shade; 3], alpha);
        }
    }
}

fn draw_grass(c: &mut Canvas, horizon: f32, r: &mut Rng) {
    let (w, h) = (c.width() as f32, c.height() as f32);
    let blades = (w * 0.25) as usize;
    for _ in 0..blades {
        let x = r.uniform(0.0, w);
        let y = r.uniform((horizon + h * 0.1).min(h), h + 2.0);
        let len = h * r.uniform(0.015, 0.04) * (0.5 + (y - horizon).max(0.0) / h);
        let green = jitter([0.25, 0.42, 0.15], 0.06, r);
        c.line(
            pt(x, y),
            pt(x + r.uniform(-0.4, 0.4) * len, y - len),
            h * 0.004,
            green,
            0.8,
        );
    }
}

/// Draws in an asset's local frame.
struct Painter<'a> {
    canvas: &'a mut Canvas,
    frame: Affine,
}

impl Painter<'_> {
    fn poly_in(&mut self, frame: Affine, points: &[(f32, f32)], color: Rgb, alpha: f32) {
        let pts: Vec<Pt> = points.iter().map(|&(x, y)| frame.apply(pt(x, y))).collect();
        self.canvas.fill_polygon(&pts, color, alpha);
    }

    fn rect_in(&mut self, frame: Affine, x0: f32, y0: f32, x1: f32, y1: f32, color: Rgb) {
        self.poly_in(frame, &[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color, 1.0);
    }

    fn seg_in(&mut self, frame: Affine, a: (f32, f32), b: (f32, f32), width: f32, color: Rgb, alpha: f32) {
        let (pa, pb) = (frame.apply(pt(a.0, a.1)), frame.apply(pt(b.0, b.1)));
        self.canvas
            .line(pa, pb, width * frame.length_scale(), color, alpha);
    }

    fn blob_in(&mut self, frame: Affine, c: (f32, f32), rx: f32, ry: f32, color: Rgb, alpha: f32) {
        let s = frame.length_scale();
        self.canvas
            .ellipse(frame.apply(pt(c.0, c.1)), rx * s, ry * s, 0.0, color, alpha);
    }

    /// A jagged crack: a random walk from `start` heading along `dir` for `length`.
    fn crack_in(
        &mut self,
        frame: Affine,
        start: (f32, f32),
        dir: (f32, f32),
        length: f32,
        width: f32,
        r: &mut Rng,
    ) {
        let steps = 6;
        let mut points = vec![start];
        let (mut x, mut y) = start;
        for _ in 0..steps {
            let step = length / steps as f32;
            x += dir.0 * step + r.uniform(-0.5, 0.5) * step;
            y += dir.1 * step + r.uniform(-0.3, 0.3) * step;
            points.push((x, y));
        }
        for w in points.windows(2) {
            self.seg_in(frame, w[0], w[1], width, [0.06, 0.05, 0.04], 0.9);
        }
    }

    /// Soot or char: overlapping dark blobs around `c`.
    fn burn_in(&mut self, frame: Affine, c: (f32, f32), radius: f32, strength: f32, r: &mut Rng) {
        for _ in 0..10 {
            let p = (
                c.0 + r.uniform(-1.0, 1.0) * radius,
                c.1 + r.uniform(-1.0, 1.0) * radius,
            );
            let rad = radius * r.uniform(0.3, 0.7);
            let tone = r.uniform(0.02, 0.1);
            self.blob_in(
                frame,
                p,
                rad,
                rad * r.uniform(0.7, 1.3),
                [tone, tone * 0.9, tone * 0.8],
                strength,
            );
        }
    }

    /// Vegetation growing at the base: leafy blobs up to `height`.
    fn vegetation(&mut self, x: f32, spread: f32, height: f32, r: &mut Rng) {
        let leaves = 14 + (height * 60.0) as usize;
        for _ in 0..leaves {
            let y = -r.uniform(0.0, height);
            let p = (x + r.uniform(-spread, spread) * (1.0 - 0.5 * (-y / height)), y);
            let rad = r.uniform(0.02, 0.045);
            let green = jitter([0.2, 0.42, 0.12], 0.07, r);
            self.blob_in(self.frame, p, rad, rad * 0.8, green, 0.95);
        }
    }

    /// A power line leaving canvas point `p` to both sides of the image, sagging.
    fn wires_from(&mut self, p: Pt, color: Rgb, r: &mut Rng) {
        let w = self.canvas.width() as f32;
        let h = self.canvas.height() as f32;
        let sag = h * r.uniform(0.02, 0.08);
        for end_x in [-5.0, w + 5.0] {
            let end = pt(end_x, p.y + h * r.uniform(-0.06, 0.06));
            let mid = pt((p.x + end.x) / 2.0, (p.y + end.y) / 2.0 + sag);
            let width = h * 0.004;
            self.canvas.polyline(&[p, mid, end], width, color, 0.9);
        }
    }
}

fn tilt_degrees(health: Health, r: &mut Rng) -> f32 {
    let sign = if r.next_f64() < 0.5 { -1.0 } else { 1.0 };
    sign * match health {
        Health::Good => r.uniform(0.0, 2.0),
        Health::Damaged => r.uniform(6.0, 11.0),
        Health::Critical => r.uniform(16.0, 28.0),
    }
}

fn draw_pole(p: &mut Painter<'_>, health: Health, r: &mut Rng) {
    let wooden = r.next_f64() < 0.7;
    let body = if wooden {
        jitter([0.42, 0.29, 0.17], 0.05, r)
    } else {
        jitter([0.64, 0.64, 0.61], 0.05, r)
    };
    let tilt = tilt_degrees(health, r);
    let base_frame = p.frame;
    let f = base_frame.then(Affine::rotate(tilt));
    let (wb, wt) = (r.uniform(0.032, 0.042), r.uniform(0.022, 0.028));
    p.poly_in(f, &[(-wb, 0.0), (wb, 0.0), (wt, -1.0), (-wt, -1.0)], body, 1.0);
    // Shaded half and wood grain.
    p.poly_in(
        f,
        &[(0.0, 0.0), (wb, 0.0), (wt, -1.0), (0.0, -1.0)],
        [0.0; 3],
        0.22,
    );
    for _ in 0..3 {
        let x = r.uniform(-0.6, 0.6) * wt;
        let y0 = r.uniform(-0.9, -0.1);
        p.seg_in(f, (x, y0), (x, y0 - 0.1), 0.004, scale(body, 0.8), 0.4);
    }
    // Cross-arm with braces and pin insulators.
    let arm_y = -r.uniform(0.86, 0.92);
    let half = r.uniform(0.2, 0.28);
    let arm_color = scale(body, 0.8);
    let insulator = if r.next_f64() < 0.5 {
        [0.86, 0.86, 0.82]
    } else {
        [0.35, 0.6, 0.5]
    };
    let broken_side = if r.next_f64() < 0.5 { -1.0 } else { 1.0 };
    for side in [-1.0f32, 1.0] {
        // A critical pole's cross-arm is broken: one half hangs from the pole.
        let arm_frame = if health == Health::Critical && side == broken_side {
            f.then(Affine::translate(0.0, arm_y))
                .then(Affine::rotate(side * r.uniform(35.0, 65.0)))
                .then(Affine::translate(0.0, -arm_y))
        } else {
            f
        };
        p.rect_in(arm_frame, 0.0, arm_y, side * half, arm_y - 0.028, arm_color);
        p.seg_in(f, (side * 0.1, arm_y), (0.0, arm_y + 0.09), 0.01, arm_color, 1.0);
        let tip = (side * (half - 0.03), arm_y - 0.028);
        p.rect_in(
            arm_frame,
            tip.0 - 0.012,
            tip.1,
            tip.0 + 0.012,
            tip.1 - 0.045,
            insulator,
        );
        if !(health == Health::Critical && side == broken_side) {
            let wire_at = arm_frame.apply(pt(tip.0, tip.1 - 0.045));
            p.wires_from(wire_at, [0.12; 3], r);
        }
    }
    match health {
        Health::Good => {}
        Health::Damaged => {
            for _ in 0..(1 + r.below(2)) {
                let start = (r.uniform(-0.5, 0.5) * wb, -r.uniform(0.15, 0.6));
                p.crack_in(f, start, (0.0, -1.0), r.uniform(0.15, 0.3), 0.01, r);
            }
            if r.next_f64() < 0.5 {
                p.vegetation(0.0, 0.09, r.uniform(0.1, 0.22), r);
            } else {
                for _ in 0..(1 + r.below(3)) {
                    let c = (r.uniform(-0.4, 0.4) * wb, -r.uniform(0.3, 0.8));
                    p.blob_in(f, c, 0.014, 0.018, [0.05; 3], 0.95);
                }
            }
        }
        Health::Critical => {
            let start = (r.uniform(-0.3, 0.3) * wb, -r.uniform(0.1, 0.3));
            p.crack_in(f, start, (0.0, -1.0), r.uniform(0.4, 0.6), 0.018, r);
            match r.below(2) {
                0 => {
                    let c = (0.0, -r.uniform(0.1, 0.5));
                    p.burn_in(f, c, r.uniform(0.05, 0.08), 0.85, r);
                }
                _ => p.vegetation(0.0, 0.14, r.uniform(0.3, 0.5), r),
            }
        }
    }
}

/// A straight steel member of a tower: two local end points and the frame they are drawn in.
type Member = ((f32, f32), (f32, f32), Affine);

fn draw_tower(p: &mut Painter<'_>, health: Health, r: &mut Rng) {
    let steel = jitter([0.56, 0.58, 0.6], 0.06, r);
    let dark_steel = scale(steel, 0.6);
    let rust: Rgb = jitter([0.58, 0.27, 0.09], 0.04, r);
    let base_half = r.uniform(0.26, 0.34);
    let waist_y = -r.uniform(0.58, 0.66);
    let waist_half = r.uniform(0.06, 0.08);
    let top_y = -0.95;
    let leg_w = 0.016;
    let brace_w = 0.009;
    let critical = health == Health::Critical;
    let f0 = p.frame;
    // A critical tower's upper body leans from the waist.
    let lean = if critical {
        r.uniform(6.0, 12.0) * if r.next_f64() < 0.5 { -1.0 } else { 1.0 }
    } else {
        0.0
    };
    let upper = f0
        .then(Affine::translate(0.0, waist_y))
        .then(Affine::rotate(lean))
        .then(Affine::translate(0.0, -waist_y));
    let leg_x = |y: f32| base_half + (waist_half - base_half) * (y / waist_y);
    let levels = 5;
    let ys: Vec<f32> = (0..=levels).map(|k| waist_y * k as f32 / levels as f32).collect();
    let bent_leg = if r.next_f64() < 0.5 { -1.0 } else { 1.0 };
    let mut members: Vec<Member> = Vec::new();
    for side in [-1.0f32, 1.0] {
        if critical && side == bent_leg {
            // A buckled leg: the lower panels kink outwards.
            let kink_y = ys[2];
            let kink = (side * (leg_x(kink_y) + 0.07), kink_y);
            members.push(((side * base_half, 0.0), kink, f0));
            members.push((kink, (side * leg_x(ys[3]), ys[3]), f0));
            members.push(((side * leg_x(ys[3]), ys[3]), (side * waist_half, waist_y), f0));
        } else {
            members.push(((side * base_half, 0.0), (side * waist_half, waist_y), f0));
        }
        members.push((
            (side * waist_half, waist_y),
            (side * waist_half * 0.8, top_y),
            upper,
        ));
    }
    for &(a, b, fr) in &members {
        p.seg_in(fr, a, b, leg_w, steel, 1.0);
    }
    let mut braces: Vec<Member> = Vec::new();
    for k in 0..levels {
        let (y0, y1) = (ys[k], ys[k + 1]);
        braces.push(((-leg_x(y1), y1), (leg_x(y1), y1), f0));
        braces.push(((-leg_x(y0), y0), (leg_x(y1), y1), f0));
        braces.push(((leg_x(y0), y0), (-leg_x(y1), y1), f0));
    }
    let uy = [waist_y, (waist_y + top_y) / 2.0, top_y];
    for k in 0..2 {
        let hx = |y: f32| waist_half + (waist_half * 0.8 - waist_half) * ((y - waist_y) / (top_y - waist_y));
        braces.push(((-hx(uy[k]), uy[k]), (hx(uy[k + 1]), uy[k + 1]), upper));
        braces.push(((hx(uy[k]), uy[k]), (-hx(uy[k + 1]), uy[k + 1]), upper));
        braces.push(((-hx(uy[k + 1]), uy[k + 1]), (hx(uy[k + 1]), uy[k + 1]), upper));
    }
    for &(a, b, fr) in &braces {
        // A critical tower has lost some of its bracing.
        if critical && r.next_f64() < 0.3 {
            continue;
        }
        p.seg_in(fr, a, b, brace_w, steel, 1.0);
    }
    // Cross-arms with insulator strings and conductors.
    let arm_ys = [waist_y - 0.02, (waist_y + top_y) / 2.0 - 0.02];
    for (i, &ay) in arm_ys.iter().enumerate() {
        let reach = r.uniform(0.3, 0.4) - 0.06 * i as f32;
        for side in [-1.0f32, 1.0] {
            p.seg_in(upper, (0.0, ay), (side * reach, ay), 0.012, steel, 1.0);
            p.seg_in(
                upper,
                (side * waist_half, ay - 0.06),
                (side * reach, ay),
                0.008,
                steel,
                1.0,
            );
            let string_end = (side * reach, ay + 0.09);
            p.seg_in(
                upper,
                (side * reach, ay),
                string_end,
                0.014,
                [0.8, 0.82, 0.8],
                1.0,
            );
            let hook = upper.apply(pt(string_end.0, string_end.1));
            p.wires_from(hook, dark_steel, r);
        }
    }
    p.seg_in(upper, (0.0, top_y), (0.0, -1.0), 0.01, steel, 1.0);
    let all: Vec<_> = members.iter().chain(braces.iter()).copied().collect();
    let patches = match health {
        Health::Good => 0,
        Health::Damaged => 7 + r.below(6) as usize,
        Health::Critical => 16 + r.below(10) as usize,
    };
    let patch_size = if critical { (0.03, 0.055) } else { (0.022, 0.04) };
    for _ in 0..patches {
        let (a, b, fr) = all[r.below(all.len() as u64) as usize];
        let t = r.uniform(0.0, 1.0);
        let c = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        let rad = r.uniform(patch_size.0, patch_size.1);
        let tone = jitter(rust, 0.05, r);
        p.blob_in(fr, c, rad, rad * r.uniform(0.5, 1.0), tone, r.uniform(0.8, 1.0));
    }
}

fn draw_transformer(p: &mut Painter<'_>, health: Health, r: &mut Rng) {
    let f = p.frame;
    let pad = jitter([0.66, 0.65, 0.62], 0.04, r);
    let tank = match r.below(3) {
        0 => jitter([0.42, 0.5, 0.44], 0.04, r),
        1 => jitter([0.6, 0.62, 0.6], 0.04, r),
        _ => jitter([0.7, 0.68, 0.58], 0.04, r),
    };
    let shade = scale(tank, 0.72);
    p.rect_in(f, -0.5, 0.0, 0.5, -0.08, pad);
    // Cooling fins on both sides.
    for side in [-1.0f32, 1.0] {
        let (x0, x1) = (side * 0.36, side * 0.46);
        p.rect_in(f, x0, -0.12, x1, -0.56, shade);
        for k in 0..6 {
            let y = -0.14 - 0.07 * k as f32;
            p.seg_in(f, (x0, y), (x1, y), 0.012, scale(tank, 0.55), 1.0);
        }
    }
    p.rect_in(f, -0.36, -0.08, 0.36, -0.62, tank);
    p.rect_in(f, 0.12, -0.08, 0.36, -0.62, shade);
    p.rect_in(f, -0.39, -0.62, 0.39, -0.665, scale(tank, 0.85));
    for k in 1..4 {
        let y = -0.08 - 0.135 * k as f32;
        p.seg_in(f, (-0.36, y), (0.36, y), 0.006, scale(tank, 0.8), 1.0);
    }
    p.rect_in(f, -0.2, -0.36, -0.06, -0.44, [0.85, 0.85, 0.8]);
    // Conservator tank and bushings.
    p.rect_in(f, -0.34, -0.7, -0.06, -0.79, scale(tank, 0.92));
    p.seg_in(f, (-0.2, -0.665), (-0.2, -0.7), 0.02, shade, 1.0);
    let porcelain = if r.next_f64() < 0.6 {
        jitter([0.46, 0.26, 0.16], 0.04, r)
    } else {
        jitter([0.82, 0.82, 0.78], 0.04, r)
    };
    let broken = r.below(3) as usize;
    for (i, x) in [0.06f32, 0.18, 0.3].into_iter().enumerate() {
        let is_broken = health == Health::Critical && i == broken;
        let top = if is_broken { -0.74 } else { -0.9 };
        p.rect_in(f, x - 0.018, -0.665, x + 0.018, top, porcelain);
        let sheds = if is_broken { 2 } else { 5 };
        for k in 0..sheds {
            let y = -0.69 - 0.045 * k as f32;
            p.blob_in(f, (x, y), 0.032, 0.012, scale(porcelain, 0.85), 1.0);
        }
        if is_broken {
            p.poly_in(
                f,
                &[
                    (x - 0.02, top),
                    (x - 0.005, top - 0.03),
                    (x + 0.008, top - 0.01),
                    (x + 0.02, top),
                ],
                [0.05; 3],
                1.0,
            );
        } else {
            p.seg_in(f, (x, top), (x, top - 0.04), 0.01, [0.35; 3], 1.0);
            let local = (x, top - 0.04);
            let q = f.apply(pt(local.0, local.1));
            p.seg_in(
                Affine::IDENTITY,
                (q.x, q.y),
                (q.x + r.uniform(-0.3, 0.3) * p.canvas.height() as f32, -5.0),
                0.004 * p.canvas.height() as f32,
                [0.12; 3],
                0.9,
            );
        }
    }
    match health {
        Health::Good => {}
        Health::Damaged => {
            let rust = jitter([0.55, 0.28, 0.1], 0.04, r);
            for _ in 0..(4 + r.below(5)) {
                let x = r.uniform(-0.34, 0.34);
                let y0 = -r.uniform(0.4, 0.62);
                let len = r.uniform(0.12, 0.3);
                p.seg_in(
                    f,
                    (x, y0),
                    (x + r.uniform(-0.02, 0.02), y0 + len),
                    r.uniform(0.02, 0.04),
                    rust,
                    0.8,
                );
            }
            oil_stain(p, r.uniform(0.2, 0.3), r);
        }
        Health::Critical => {
            let c = (r.uniform(-0.15, 0.25), -r.uniform(0.4, 0.55));
            p.burn_in(f, c, r.uniform(0.12, 0.17), 0.9, r);
            p.burn_in(f, (c.0, c.1 - 0.15), 0.08, 0.6, r);
            oil_stain(p, r.uniform(0.35, 0.5), r);
        }
    }
}

/// Leaked oil: a dark drip down the tank and a puddle on the pad.
fn oil_stain(p: &mut Painter<'_>, size: f32, r: &mut Rng) {
    let f = p.frame;
    let x = r.uniform(-0.25, 0.25);
    let oil = [0.1, 0.08, 0.05];
    p.seg_in(f, (x, -0.3), (x, -0.08), 0.03, oil, 0.75);
    p.blob_in(f, (x, -0.04), size, size * 0.18, oil, 0.85);
}

fn draw_insulator(p: &mut Painter<'_>, health: Health, r: &mut Rng) {
    let material = match r.below(3) {
        0 => jitter([0.36, 0.62, 0.58], 0.04, r),
        1 => jitter([0.5, 0.28, 0.16], 0.04, r),
        _ => jitter([0.86, 0.86, 0.82], 0.04, r),
    };
    let metal = jitter([0.5, 0.5, 0.52], 0.05, r);
    let swing = r.uniform(-25.0, 25.0);
    // Rotate the string about its middle so it stays in frame.
    let f = p
        .frame
        .then(Affine::translate(0.0, -0.5))
        .then(Affine::rotate(swing))
        .then(Affine::translate(0.0, 0.5));
    // The conductor passes horizontally through the clamp at the bottom.
    let clamp = f.apply(pt(0.0, -0.06));
    let h = p.canvas.height() as f32;
    let w = p.canvas.width() as f32;
    let conductor_w = h * 0.012;
    p.canvas.line(
        pt(-5.0, clamp.y + h * 0.02),
        pt(w + 5.0, clamp.y - h * 0.02),
        conductor_w,
        [0.2; 3],
        1.0,
    );
    p.rect_in(f, -0.14, -1.0, 0.14, -0.96, metal);
    p.seg_in(f, (0.0, -0.96), (0.0, -0.06), 0.022, metal, 1.0);
    p.rect_in(f, -0.05, -0.1, 0.05, -0.04, metal);
    let n = 6 + r.below(4) as usize;
    let (top, bottom) = (-0.9f32, -0.16f32);
    let ys: Vec<f32> = (0..n)
        .map(|i| top + (bottom - top) * i as f32 / (n - 1) as f32)
        .collect();
    let (rx, ry) = (r.uniform(0.17, 0.21), r.uniform(0.045, 0.06));
    let pick = |r: &mut Rng, exclude: &[usize]| loop {
        let i = r.below(n as u64) as usize;
        if !exclude.contains(&i) {
            break i;
        }
    };
    let mut missing = Vec::new();
    let mut chipped = Vec::new();
    match health {
        Health::Good => {}
        Health::Damaged => chipped.push(pick(r, &[])),
        Health::Critical => {
            missing.push(pick(r, &[]));
            if r.next_f64() < 0.5 {
                let m = pick(r, &missing);
                missing.push(m);
            }
            let c = pick(r, &missing);
            chipped.push(c);
        }
    }
    for (i, &y) in ys.iter().enumerate() {
        p.rect_in(f, -0.035, y - 0.035, 0.035, y, metal);
        if missing.contains(&i) {
            // Only the cap and a jagged stub remain.
            p.poly_in(
                f,
                &[(-0.05, y), (-0.02, y + 0.02), (0.01, y + 0.005), (0.05, y)],
                scale(material, 0.7),
                1.0,
            );
            continue;
        }
        let mut outline = disc_outline(rx, ry, y);
        if chipped.contains(&i) {
            // A wedge of the rim is gone: pull an arc of the outline towards the centre.
            let start = r.below(outline.len() as u64) as usize;
            let len = 4 + r.below(3) as usize;
            let depth = r.uniform(0.45, 0.7);
            for k in 0..len {
                let j = (start + k) % outline.len();
                let (x, yy) = outline[j];
                let d = depth * (1.0 - ((k as f32 - (len - 1) as f32 / 2.0).abs() / len as f32));
                outline[j] = (x * (1.0 - d), y + (yy - y) * (1.0 - d));
            }
        }
        let under: Vec<(f32, f32)> = outline.iter().map(|&(x, yy)| (x, yy + ry * 0.35)).collect();
        p.poly_in(f, &under, scale(material, 0.6), 1.0);
        p.poly_in(f, &outline, material, 1.0);
        p.blob_in(
            f,
            (-rx * 0.4, y - ry * 0.3),
            rx * 0.25,
            ry * 0.25,
            mix(material, [1.0; 3], 0.5),
            0.6,
        );
    }
    match health {
        Health::Good => {}
        Health::Damaged => {
            let i = chipped[0];
            let j = if i + 1 < n { i + 1 } else { i - 1 };
            for k in [i, j] {
                p.burn_in(f, (r.uniform(-0.08, 0.08), ys[k]), 0.06, 0.45, r);
            }
            p.crack_in(f, (-rx * 0.5, ys[i]), (1.0, 0.0), rx, 0.008, r);
        }
        Health::Critical => {
            let start = r.below((n - 2) as u64) as usize;
            for &y in &ys[start..start + 3] {
                p.burn_in(f, (r.uniform(-0.06, 0.06), y), 0.1, 0.8, r);
            }
        }
    }
}

/// Outline of an insulator disc seen slightly from below: an ellipse as a 24-gon.
fn disc_outline(rx: f32, ry: f32, y: f32) -> Vec<(f32, f32)> {
    (0..24)
        .map(|k| {
            let a = std::f32::consts::TAU * k as f32 / 24.0;
            (rx * a.cos(), y + ry * a.sin())
        })
        .collect()
}

/// Lighting, optics and sensor: exposure, white balance, contrast, a light gradient, the shift's
/// look, blur, and noise, on the output-size canvas.
fn apply_camera(c: &mut Canvas, shift: Option<Shift>, backdrop: Backdrop, r: &mut Rng) {
    let mut gain = r.uniform(0.78, 1.18);
    if backdrop == Backdrop::Dusk {
        gain *= 0.85;
    }
    let mut tint = [
        1.0 + r.uniform(-0.06, 0.06),
        1.0 + r.uniform(-0.04, 0.04),
        1.0 + r.uniform(-0.06, 0.06),
    ];
    let contrast = r.uniform(0.85, 1.15);
    let light_slope = r.uniform(-0.3, 0.3);
    let mut blur = r.uniform(0.0, 0.8);
    let mut noise = r.uniform(0.004, 0.025);
    let mut luma_noise = noise * 0.6;
    match shift {
        None => {}
        Some(Shift::Dusk) => {
            gain *= r.uniform(0.38, 0.55);
            tint = [tint[0] * 1.12, tint[1] * 0.86, tint[2] * 0.66];
            noise += r.uniform(0.025, 0.045);
            luma_noise = noise;
            blur += 0.3;
        }
        Some(Shift::Fog) => {
            blur += r.uniform(0.6, 1.2);
        }
        Some(Shift::NewCamera) => {
            noise = r.uniform(0.03, 0.05);
            luma_noise = noise * 0.3;
        }
    }
    c.map(|fx, _, p| {
        let light = 1.0 + light_slope * (fx - 0.5);
        let mut out = [0.0; 3];
        for k in 0..3 {
            let v = p[k] * gain * tint[k] * light;
            out[k] = 0.5 + (v - 0.5) * contrast;
        }
        out
    });
    match shift {
        Some(Shift::Fog) => {
            let density = r.uniform(0.45, 0.7);
            let fog = jitter([0.8, 0.81, 0.83], 0.02, r);
            c.map(|_, fy, p| mix(p, fog, (density * (0.8 + 0.3 * fy)).min(0.92)));
        }
        Some(Shift::NewCamera) => {
            let saturation = r.uniform(1.35, 1.6);
            let cast = [0.92, 1.07, 0.95];
            let vignette = r.uniform(0.35, 0.5);
            c.map(|fx, fy, p| {
                let luma = 0.3 * p[0] + 0.59 * p[1] + 0.11 * p[2];
                let d2 = (fx - 0.5).powi(2) + (fy - 0.5).powi(2);
                let v = 1.0 - vignette * d2 * 2.0;
                let mut out = [0.0; 3];
                for k in 0..3 {
                    let s = luma + (p[k] - luma) * saturation;
                    out[k] = (s * cast[k]).max(0.0).powf(0.8) * v;
                }
                out
            });
            c.shift_channel(0, 1);
        }
        _ => {}
    }
    c.blur(blur);
    c.add_noise(r, noise, luma_noise);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(class: &str, seed: u64, shift: Option<Shift>) -> PhotoSpec {
        PhotoSpec {
            class: class.parse().unwrap(),
            seed,
            size: 64,
            shift,
        }
    }

    #[test]
    fn same_spec_same_pixels() {
        for class in Class::ALL {
            let s = PhotoSpec {
                class,
                seed: 9,
                size: 48,
                shift: None,
            };
            assert_eq!(render(&s), render(&s), "{class}");
        }
    }

    #[test]
    fn shifts_change_the_photo_and_new_camera_is_four_by_three() {
        let plain = render(&spec("pole_good", 3, None));
        for shift in Shift::ALL {
            let shifted = render(&spec("pole_good", 3, Some(shift)));
            assert_ne!(plain.2, shifted.2, "{shift}");
        }
        let (w, h, _) = render(&spec("tower_critical", 3, Some(Shift::NewCamera)));
        assert_eq!((w, h), (86, 64));
    }

    #[test]
    fn dusk_is_darker_and_fog_has_less_contrast() {
        let stats = |bytes: &[u8]| {
            let n = bytes.len() as f64;
            let mean = bytes.iter().map(|&b| f64::from(b)).sum::<f64>() / n;
            let var = bytes.iter().map(|&b| (f64::from(b) - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt())
        };
        let mut darker = 0;
        let mut flatter = 0;
        for seed in 0..12 {
            let class = Class::ALL[seed as usize];
            let base = PhotoSpec {
                class,
                seed,
                size: 64,
                shift: None,
            };
            let (m0, s0) = stats(&render(&base).2);
            let (m1, _) = stats(
                &render(&PhotoSpec {
                    shift: Some(Shift::Dusk),
                    ..base
                })
                .2,
            );
            let (_, s2) = stats(
                &render(&PhotoSpec {
                    shift: Some(Shift::Fog),
                    ..base
                })
                .2,
            );
            darker += usize::from(m1 < m0);
            flatter += usize::from(s2 < s0);
        }
        assert_eq!((darker, flatter), (12, 12));
    }

    #[test]
    fn shift_names_parse() {
        assert_eq!("new-camera".parse::<Shift>(), Ok(Shift::NewCamera));
        let e = "rain".parse::<Shift>().unwrap_err();
        assert!(e.contains("dusk, fog, new-camera"), "{e}");
    }
}
