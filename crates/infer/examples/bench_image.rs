//! The image side of `cargo xtask bench agent`, built with the agent's profile (`release-agent`)
//! so it runs the agent's own pre-processing code as the device binary is compiled.
//!
//! - `bench_image make OUT.jpg WIDTH HEIGHT QUALITY SEED`: a synthetic photograph (sky and ground
//!   gradients, nine octaves of colour noise down to two-pixel texture, a few soft shapes, sensor
//!   noise), written as a baseline JPEG by the `image` crate's encoder.
//! - `bench_image split IMAGE RUNS`: times the stages of `infer::preprocess` with the ImageNet
//!   spec (what `edgemlops model package --preprocess imagenet` writes) on the image: decode
//!   (`RgbImage::decode`, full size, as the agent does), fit (resize of the shorter side to 256 +
//!   center crop to 224) and the tensor (channel order, `(x * scale - mean) / std`, NCHW); prints
//!   the medians in ms and the decoded size as JSON.

use std::process::ExitCode;
use std::time::Instant;

use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;
use infer::preprocess::{Preprocessor, RgbImage};
use proto::pipeline::Preprocess;

/// SplitMix64, uniform in 0..1.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The synthetic photograph as interleaved RGB bytes.
fn photo(w: usize, h: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut img = vec![0f32; w * h * 3];
    let horizon = 0.35 + 0.3 * rng.next();
    let sky = [
        0.45 + 0.2 * rng.next(),
        0.6 + 0.2 * rng.next(),
        0.8 + 0.2 * rng.next(),
    ];
    let ground = [
        0.3 + 0.2 * rng.next(),
        0.35 + 0.2 * rng.next(),
        0.15 + 0.1 * rng.next(),
    ];
    for y in 0..h {
        let fy = y as f32 / h as f32;
        for c in 0..3 {
            let v = if fy < horizon {
                sky[c] * (0.75 + 0.25 * fy / horizon)
            } else {
                ground[c] * (1.2 - 0.5 * (fy - horizon))
            };
            for x in 0..w {
                img[(y * w + x) * 3 + c] = v;
            }
        }
    }
    // Colour noise with a photograph's falling spectrum: value noise on grids of 4, 8, ... 1024
    // cells across the long side (texture down to two pixels, like foliage or gravel).
    let side = w.max(h) as f32;
    for octave in 0..9u32 {
        let cells = 4usize << octave;
        let amp = 0.2 / 2f32.powf(0.6 * octave as f32);
        let gw = cells + 2;
        let grid: Vec<f32> = (0..gw * gw * 4).map(|_| rng.next() - 0.5).collect();
        for y in 0..h {
            let gy = y as f32 * cells as f32 / side;
            let (y0, ty) = (gy as usize, gy.fract());
            for x in 0..w {
                let gx = x as f32 * cells as f32 / side;
                let (x0, tx) = (gx as usize, gx.fract());
                let at = |k: usize| {
                    let g = |yy: usize, xx: usize| grid[(yy * gw + xx) * 4 + k];
                    let top = g(y0, x0) * (1.0 - tx) + g(y0, x0 + 1) * tx;
                    let bottom = g(y0 + 1, x0) * (1.0 - tx) + g(y0 + 1, x0 + 1) * tx;
                    top * (1.0 - ty) + bottom * ty
                };
                let lum = at(3);
                for c in 0..3 {
                    img[(y * w + x) * 3 + c] += amp * (0.7 * lum + 0.3 * at(c));
                }
            }
        }
    }
    // Soft-edged shapes: a pole and a few blobs.
    let pole_x = (0.3 + 0.4 * rng.next()) * w as f32;
    let pole_w = 0.012 * w as f32;
    for y in (h as f32 * 0.15) as usize..h {
        for x in 0..w {
            let d = ((x as f32 - pole_x).abs() - pole_w).max(0.0);
            let alpha = (1.0 - d / 2.0).clamp(0.0, 1.0);
            for c in 0..3 {
                let p = &mut img[(y * w + x) * 3 + c];
                *p = *p * (1.0 - alpha) + [0.35, 0.27, 0.2][c] * alpha;
            }
        }
    }
    for _ in 0..4 {
        let (cx, cy) = (rng.next() * w as f32, rng.next() * h as f32);
        let (rx, ry) = (
            (0.04 + 0.12 * rng.next()) * side,
            (0.03 + 0.1 * rng.next()) * side,
        );
        let colour = [rng.next(), rng.next(), rng.next()];
        for y in 0..h {
            for x in 0..w {
                let dx = (x as f32 - cx) / rx;
                let dy = (y as f32 - cy) / ry;
                let alpha = ((1.0 - (dx * dx + dy * dy).sqrt()) / 0.1).clamp(0.0, 1.0);
                if alpha > 0.0 {
                    for c in 0..3 {
                        let p = &mut img[(y * w + x) * 3 + c];
                        *p = *p * (1.0 - alpha) + colour[c] * alpha;
                    }
                }
            }
        }
    }
    // Sensor noise of a few 8-bit levels.
    img.iter()
        .map(|v| ((v + (rng.next() - 0.5) * 0.03).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn make(out: &str, w: &str, h: &str, quality: &str, seed: &str) -> Result<(), String> {
    let num = |s: &str, what: &str| s.parse::<u32>().map_err(|e| format!("{what} '{s}': {e}"));
    let (w, h) = (num(w, "WIDTH")?, num(h, "HEIGHT")?);
    let quality = u8::try_from(num(quality, "QUALITY")?).map_err(|e| format!("QUALITY: {e}"))?;
    let seed = u64::from(num(seed, "SEED")?);
    let pixels = photo(w as usize, h as usize, seed);
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode(&pixels, w, h, ExtendedColorType::Rgb8)
        .map_err(|e| format!("encoding the JPEG: {e}"))?;
    std::fs::write(out, &bytes).map_err(|e| format!("{out}: {e}"))?;
    println!(
        "{{\"path\": \"{out}\", \"width\": {w}, \"height\": {h}, \"quality\": {quality}, \"bytes\": {}}}",
        bytes.len()
    );
    Ok(())
}

fn split(path: &str, runs: &str) -> Result<(), String> {
    let runs: usize = runs.parse().map_err(|e| format!("RUNS '{runs}': {e}"))?;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let mut pre = Preprocessor::new(Preprocess::imagenet()).map_err(|e| e.to_string())?;
    let decode_bytes = || RgbImage::decode(&bytes).map_err(|e| e.to_string());
    let (mut decode, mut fit, mut tensor, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut decoded = (0, 0);
    for i in 0..runs + 3 {
        let t0 = Instant::now();
        let img = decode_bytes()?;
        let t_decode = ms(t0);
        decoded = (img.width(), img.height());
        let t1 = Instant::now();
        let fitted = pre.fit(&img).map_err(|e| e.to_string())?;
        let t_fit = ms(t1);
        // The fitted image has the model's size, so this is channel order + normalization only.
        let t2 = Instant::now();
        let _t = pre.tensor(&fitted).map_err(|e| e.to_string())?;
        let t_tensor = ms(t2);
        // What the agent does: decode, then tensor() on the full-size image.
        let t3 = Instant::now();
        let img = decode_bytes()?;
        let _t = pre.tensor(&img).map_err(|e| e.to_string())?;
        let t_total = ms(t3);
        if i >= 3 {
            decode.push(t_decode);
            fit.push(t_fit);
            tensor.push(t_tensor);
            total.push(t_total);
        }
    }
    println!(
        "{{\"runs\": {runs}, \"decoded_width\": {}, \"decoded_height\": {}, \"decode_ms\": {:.4}, \"fit_ms\": {:.4}, \"tensor_ms\": {:.4}, \"preprocess_total_ms\": {:.4}}}",
        decoded.0,
        decoded.1,
        median(&mut decode),
        median(&mut fit),
        median(&mut tensor),
        median(&mut total)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match args.as_slice() {
        ["make", out, w, h, q, seed] => make(out, w, h, q, seed),
        ["split", path, runs] => split(path, runs),
        _ => Err("usage: bench_image make OUT.jpg WIDTH HEIGHT QUALITY SEED | split IMAGE RUNS".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_image: {e}");
            ExitCode::FAILURE
        }
    }
}
