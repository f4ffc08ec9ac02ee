//! The wire contract shared by the toolchain, the hub and the agent. Pure data: no IO, no async.
//!
//! - [`pipeline`]: how an image becomes a model input and how model outputs become a result
//!   (the `preprocess`/`postprocess` sections of a package manifest), and the asset-condition
//!   vocabulary of visual inspection.

pub mod pipeline;
