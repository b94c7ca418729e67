//! The Veneer host library (the `veneer` binary is a thin CLI over it).
#![allow(missing_docs)]
pub mod config;
pub mod plugin;
pub mod rewrite;
pub mod visitor;
