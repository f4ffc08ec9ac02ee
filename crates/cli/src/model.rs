//! `edgemlops model ...` commands.

pub mod bench;
pub mod build;
pub mod data;
pub mod eval;
pub mod inspect;
pub mod optimize;
pub mod package;
pub mod quantize;
pub mod verify;
