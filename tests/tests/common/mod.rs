//! Fixtures shared by several end-to-end test binaries.

pub mod shop;
