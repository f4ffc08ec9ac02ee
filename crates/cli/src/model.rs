//! `edgemlops model ...` commands.

pub mod bench;
pub mod build;
pub mod inspect;
