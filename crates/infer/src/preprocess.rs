//! Images to input tensors, as a model manifest's [`Preprocess`] section describes: decode JPEG or
//! PNG, bring the image to the model's size (stretch, shorter side + center crop, or letterbox),
//! reorder channels, normalize, and lay out as NCHW or NHWC.
//!
//! Used by calibration and evaluation in the toolchain and by the device agent around every
//! inference, so the two see exactly the same tensors. Resizing uses `fast_image_resize`
//! (SIMD convolution filters, antialiased when downscaling, like PIL and torchvision's default).
//!
//! ```
//! use infer::preprocess::{Preprocessor, RgbImage};
//! use proto::pipeline::{Layout, Preprocess};
//!
//! let spec = Preprocess { width: 2, height: 1, layout: Layout::Nhwc, ..Preprocess::imagenet() };
//! let mut pre = Preprocessor::new(spec).unwrap();
//! let img = RgbImage::new(4, 2, vec![128; 4 * 2 * 3]).unwrap();
//! let t = pre.tensor(&img).unwrap();
//! assert_eq!(t.shape(), &[1, 1, 2, 3]);
//! ```

use std::io::Cursor;
use std::path::{Path, PathBuf};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use ndarray::ArrayD;
use proto::pipeline::{ChannelOrder, Filter, InputDtype, Layout, Preprocess, ResizeMode};

use crate::tensor::Tensor;

/// Largest image side decoding accepts: a bigger "image" is a mistake or an attack.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// File extensions [`list_images`] picks up (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Errors of decoding and pre-processing.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The pre-processing spec is inconsistent.
    #[error("invalid pre-processing: {0}")]
    Spec(String),
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a JPEG or PNG image this decoder accepts.
    #[error("{}cannot decode image: {reason}", path.as_ref().map_or(String::new(), |p| format!("{}: ", p.display())))]
    Decode {
        /// The file, when the bytes came from one.
        path: Option<PathBuf>,
        /// The decoder's message.
        reason: String,
    },
    /// Images of a batch must have been brought to the same size (a caller bug).
    #[error("resize failed: {0}")]
    Resize(String),
}

/// A decoded 8-bit RGB image, rows top to bottom, pixels `R, G, B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// An image from interleaved RGB bytes; `None` if the length is not `width * height * 3` or a side is 0.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Option<Self> {
        (width > 0 && height > 0 && pixels.len() == width as usize * height as usize * 3).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Interleaved RGB bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixel at column `x`, row `y`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Decodes JPEG or PNG bytes (grey and alpha images become RGB; alpha is dropped).
    pub fn decode(bytes: &[u8]) -> Result<Self, PreprocessError> {
        let err = |reason: String| PreprocessError::Decode { path: None, reason };
        let mut reader = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| err(e.to_string()))?;
        match reader.format() {
            Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
            Some(other) => {
                return Err(err(format!(
                    "{other:?} images are not supported (JPEG and PNG are)"
                )));
            }
            None => return Err(err("not a JPEG or PNG image".into())),
        }
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| err(e.to_string()))?.into_rgb8();
        let (width, height) = img.dimensions();
        Self::new(width, height, img.into_raw()).ok_or_else(|| err("the image is empty".into()))
    }

    /// Reads and decodes an image file.
    pub fn open(path: &Path) -> Result<Self, PreprocessError> {
        let bytes = std::fs::read(path).map_err(|source| PreprocessError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::decode(&bytes).map_err(|e| match e {
            PreprocessError::Decode { reason, .. } => PreprocessError::Decode {
                path: Some(path.to_owned()),
                reason,
            },
            other => other,
        })
    }
}

/// Turns images into tensors per a [`Preprocess`] spec. Holds resize buffers, so reuse one per
/// thread.
#[derive(Debug)]
pub struct Preprocessor {
    spec: Preprocess,
    resizer: Resizer,
}

impl Clone for Preprocessor {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            resizer: Resizer::new(),
        }
    }
}

impl Preprocessor {
    /// A preprocessor for a validated spec.
    pub fn new(spec: Preprocess) -> Result<Self, PreprocessError> {
        spec.validate().map_err(PreprocessError::Spec)?;
        Ok(Self {
            spec,
            resizer: Resizer::new(),
        })
    }

    /// The spec.
    pub fn spec(&self) -> &Preprocess {
        &self.spec
    }

    /// The image brought to the spec's `width`×`height` (resize, crop or letterbox).
    pub fn fit(&mut self, img: &RgbImage) -> Result<RgbImage, PreprocessError> {
        let (w, h) = (self.spec.width, self.spec.height);
        match self.spec.resize {
            ResizeMode::Stretch => self.resize(img, w, h),
            ResizeMode::ShorterSideCrop { shorter } => {
                // torchvision: the shorter side becomes `shorter`, the longer side is truncated.
                let (rw, rh) = if img.width <= img.height {
                    (
                        shorter,
                        (u64::from(shorter) * u64::from(img.height) / u64::from(img.width)) as u32,
                    )
                } else {
                    (
                        (u64::from(shorter) * u64::from(img.width) / u64::from(img.height)) as u32,
                        shorter,
                    )
                };
                let resized = self.resize(img, rw.max(w), rh.max(h))?;
                // torchvision's center_crop rounds the offset half to even (Python's round).
                let left = (f64::from(resized.width - w) / 2.0).round_ties_even() as u32;
                let top = (f64::from(resized.height - h) / 2.0).round_ties_even() as u32;
                Ok(crop(&resized, left, top, w, h))
            }
            ResizeMode::Letterbox => {
                let scale = (f64::from(w) / f64::from(img.width)).min(f64::from(h) / f64::from(img.height));
                let nw = ((f64::from(img.width) * scale).round() as u32).clamp(1, w);
                let nh = ((f64::from(img.height) * scale).round() as u32).clamp(1, h);
                let inner = self.resize(img, nw, nh)?;
                let mut canvas = vec![0u8; w as usize * h as usize * 3];
                let (left, top) = ((w - nw) / 2, (h - nh) / 2);
                let row = nw as usize * 3;
                for y in 0..nh as usize {
                    let dst = ((top as usize + y) * w as usize + left as usize) * 3;
                    canvas[dst..dst + row].copy_from_slice(&inner.pixels[y * row..(y + 1) * row]);
                }
                Ok(RgbImage {
                    width: w,
                    height: h,
                    pixels: canvas,
                })
            }
        }
    }

    fn resize(&mut self, img: &RgbImage, w: u32, h: u32) -> Result<RgbImage, PreprocessError> {
        if (img.width, img.height) == (w, h) {
            return Ok(img.clone());
        }
        // Borrowed, not copied: a 1920x1080 photo is 6 MB, and a fresh copy per request costs its
        // page faults as well as the copy (`cargo xtask bench agent`).
        let src = ImageRef::new(img.width, img.height, &img.pixels, PixelType::U8x3)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        let mut dst = Image::new(w, h, PixelType::U8x3);
        let alg = match self.spec.filter {
            Filter::Nearest => ResizeAlg::Nearest,
            Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Filter::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
        };
        self.resizer
            .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(alg))
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        Ok(RgbImage {
            width: w,
            height: h,
            pixels: dst.into_vec(),
        })
    }

    /// One image as a batch-of-one tensor (`[1, 3, H, W]` or `[1, H, W, 3]`).
    pub fn tensor(&mut self, img: &RgbImage) -> Result<Tensor, PreprocessError> {
        self.batch(std::slice::from_ref(img))
    }

    /// Several images as one batch tensor, in order.
    pub fn batch(&mut self, imgs: &[RgbImage]) -> Result<Tensor, PreprocessError> {
        let fitted: Vec<RgbImage> = imgs.iter().map(|i| self.fit(i)).collect::<Result<_, _>>()?;
        let shape = self.spec.input_shape(imgs.len()).to_vec();
        let plane = self.spec.width as usize * self.spec.height as usize;
        let order: [usize; 3] = match self.spec.channels {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let layout = self.spec.layout;
        let index = |n: usize, c: usize, p: usize| match layout {
            Layout::Nchw => (n * 3 + c) * plane + p,
            Layout::Nhwc => (n * plane + p) * 3 + c,
        };
        Ok(match self.spec.dtype {
            InputDtype::Uint8 => {
                let mut out = vec![0u8; imgs.len() * plane * 3];
                for (n, img) in fitted.iter().enumerate() {
                    for p in 0..plane {
                        for (c, &src) in order.iter().enumerate() {
                            out[index(n, c, p)] = img.pixels[p * 3 + src];
                        }
                    }
                }
                Tensor::U8(ArrayD::from_shape_vec(shape, out).expect("length is the shape's product"))
            }
            InputDtype::Float32 => {
                let s = self.spec.scale;
                let (mean, std) = (self.spec.mean, self.spec.std);
                let mut out = vec![0f32; imgs.len() * plane * 3];
                for (n, img) in fitted.iter().enumerate() {
                    for p in 0..plane {
                        for (c, &src) in order.iter().enumerate() {
                            out[index(n, c, p)] = (f32::from(img.pixels[p * 3 + src]) * s - mean[c]) / std[c];
                        }
                    }
                }
                Tensor::F32(ArrayD::from_shape_vec(shape, out).expect("length is the shape's product"))
            }
        })
    }

    /// Reads, decodes and converts one image file.
    pub fn file(&mut self, path: &Path) -> Result<Tensor, PreprocessError> {
        let img = RgbImage::open(path)?;
        self.tensor(&img)
    }
}

fn crop(img: &RgbImage, left: u32, top: u32, w: u32, h: u32) -> RgbImage {
    let mut pixels = Vec::with_capacity(w as usize * h as usize * 3);
    for y in top..top + h {
        let start = (y as usize * img.width as usize + left as usize) * 3;
        pixels.extend_from_slice(&img.pixels[start..start + w as usize * 3]);
    }
    RgbImage {
        width: w,
        height: h,
        pixels,
    }
}

/// The JPEG and PNG files under `dir` (subdirectories included), sorted by path, so every run and
/// every tool sees the same order.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, PreprocessError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| PreprocessError::Io {
            path: d.clone(),
            source,
        })?;
        for e in entries {
            let e = e.map_err(|source| PreprocessError::Io {
                path: d.clone(),
                source,
            })?;
            let p = e.path();
            let kind = e.file_type().map_err(|source| PreprocessError::Io {
                path: p.clone(),
                source,
            })?;
            if kind.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.iter().any(|e| x.eq_ignore_ascii_case(e)))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2×2 image: red, green / blue, white.
    fn quad() -> RgbImage {
        RgbImage::new(2, 2, vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]).unwrap()
    }

    fn spec(w: u32, h: u32) -> Preprocess {
        Preprocess {
            width: w,
            height: h,
            resize: ResizeMode::Stretch,
            filter: Filter::Nearest,
            layout: Layout::Nchw,
            channels: ChannelOrder::Rgb,
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            dtype: InputDtype::Float32,
        }
    }

    fn check(spec: Preprocess, img: &RgbImage, shape: &[usize], expected: &[f32]) {
        let t = Preprocessor::new(spec).unwrap().tensor(img).unwrap();
        assert_eq!(t.shape(), shape);
        let got: Vec<f32> = t.to_f64_vec().into_iter().map(|v| v as f32).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn nchw_planes_hold_one_channel_each() {
        check(
            spec(2, 2),
            &quad(),
            &[1, 3, 2, 2],
            &[255., 0., 0., 255., 0., 255., 0., 255., 0., 0., 255., 255.],
        );
    }

    #[test]
    fn nhwc_keeps_pixels_together_and_bgr_swaps_red_and_blue() {
        let s = Preprocess {
            layout: Layout::Nhwc,
            channels: ChannelOrder::Bgr,
            ..spec(2, 2)
        };
        check(
            s,
            &quad(),
            &[1, 2, 2, 3],
            &[0., 0., 255., 0., 255., 0., 255., 0., 0., 255., 255., 255.],
        );
    }

    #[test]
    fn scale_mean_and_std_apply_per_tensor_channel() {
        let s = Preprocess {
            scale: 0.5,
            mean: [0.5, 0.0, 1.0],
            std: [0.5, 1.0, 2.0],
            ..spec(1, 1)
        };
        let img = RgbImage::new(1, 1, vec![255, 51, 102]).unwrap();
        check(s, &img, &[1, 3, 1, 1], &[254.0, 25.5, 25.0]);
    }

    #[test]
    fn shorter_side_crop_takes_the_center() {
        // 6×4 image whose columns are 0, 10, ..., 50: no resize needed (shorter side is 4), crop 4×4.
        let mut px = Vec::new();
        for _y in 0..4 {
            for x in 0..6u8 {
                px.extend_from_slice(&[x * 10, 0, 0]);
            }
        }
        let img = RgbImage::new(6, 4, px).unwrap();
        let s = Preprocess {
            resize: ResizeMode::ShorterSideCrop { shorter: 4 },
            ..spec(4, 4)
        };
        let t = Preprocessor::new(s).unwrap().tensor(&img).unwrap();
        let red: Vec<f64> = t.to_f64_vec()[..4].to_vec();
        assert_eq!(red, vec![10.0, 20.0, 30.0, 40.0], "first row of the red plane");
    }

    #[test]
    fn letterbox_pads_with_black_and_keeps_the_aspect_ratio() {
        let img = RgbImage::new(4, 2, vec![200; 4 * 2 * 3]).unwrap();
        let s = Preprocess {
            resize: ResizeMode::Letterbox,
            dtype: InputDtype::Uint8,
            ..spec(4, 4)
        };
        let t = Preprocessor::new(s).unwrap().tensor(&img).unwrap();
        assert!(matches!(t, Tensor::U8(_)));
        let red: Vec<f64> = t.to_f64_vec()[..16].to_vec();
        let rows: Vec<f64> = red.chunks(4).map(|r| r[0]).collect();
        assert_eq!(rows, vec![0.0, 200.0, 200.0, 0.0]);
    }

    #[test]
    fn bilinear_downscaling_of_a_flat_image_stays_flat() {
        let img = RgbImage::new(64, 48, vec![77; 64 * 48 * 3]).unwrap();
        let s = Preprocess {
            filter: Filter::Bilinear,
            ..spec(16, 16)
        };
        let t = Preprocessor::new(s).unwrap().tensor(&img).unwrap();
        assert!(t.to_f64_vec().iter().all(|&v| v == 77.0));
    }

    #[test]
    fn png_decodes_exactly_and_garbage_is_a_decode_error() {
        let mut png = Vec::new();
        image::RgbImage::from_raw(2, 2, quad().pixels().to_vec())
            .unwrap()
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(RgbImage::decode(&png).unwrap(), quad());
        let e = RgbImage::decode(b"GIF89a....").unwrap_err().to_string();
        assert!(e.contains("cannot decode"), "{e}");
        let e = RgbImage::decode(&png[..png.len() / 2]).unwrap_err();
        assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
    }

    #[test]
    fn bad_specs_are_refused() {
        let e = Preprocessor::new(Preprocess {
            std: [1.0, 0.0, 1.0],
            ..spec(2, 2)
        })
        .unwrap_err();
        assert!(matches!(e, PreprocessError::Spec(_)));
    }
}
