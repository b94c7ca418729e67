//! `veneer-rules` for the browser. The host's build script compiles this crate to
//! `wasm32-unknown-unknown` and runs wasm-bindgen on it (`host/veneer/build.rs`); the dashboard's
//! segment tester calls [`evaluate`] with the same JSON lines `veneer rules eval` reads, so the
//! page and the edge answer from one implementation.

use wasm_bindgen::prelude::wasm_bindgen;

/// Answers one `veneer rules eval` request line (`{"op": "rules", ...}`, `condition`, `hash`,
/// `assign`) with its JSON answer, exactly as the command line does.
#[wasm_bindgen]
pub fn evaluate(line: &str) -> String {
    veneer_rules::cli::eval_line(line).to_string()
}

/// The version of the rules engine built in, shown on the page.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
