//! Writes the contract as a future 0.2.9 would be: today's `wit/veneer.wit` with its version
//! bumped and one function added, as the growth rules allow. Generated, so the fixture always
//! tracks the real contract instead of a stale copy.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let source = dir.join("../../wit/veneer.wit");
    println!("cargo:rerun-if-changed={}", source.display());
    let wit = std::fs::read_to_string(&source).expect("reading wit/veneer.wit");
    assert!(
        wit.contains("package veneer:plugin@0.2.2;"),
        "the contract moved on: update this fixture"
    );
    let future = wit
        .replace("package veneer:plugin@0.2.2;", "package veneer:plugin@0.2.9;")
        .replace(
            "interface host {\n",
            "interface host {\n    /// Added in 0.2.9 (this fixture never calls it).\n    region: func() -> option<string>;\n",
        );
    let out = dir.join("wit-generated");
    std::fs::create_dir_all(&out).expect("creating wit-generated");
    // Written only when it changes: the test build watches `plugins/` and would otherwise
    // rebuild every plugin on every run.
    let target = out.join("veneer.wit");
    if std::fs::read_to_string(&target).ok().as_deref() != Some(future.as_str()) {
        std::fs::write(target, future).expect("writing the 0.2.9 contract");
    }
}
