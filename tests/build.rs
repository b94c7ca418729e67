//! Compiles every plugin in `plugins/` to a wasm32-wasip2 component before the tests build,
//! the way wasmtime's test-programs do, and tells the tests where the `.wasm` files are. A
//! plugin that fails to compile fails the test build, so no test runs against a stale plugin.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("..");
    let root = root.canonicalize().expect("project root exists");
    for watched in ["plugins", "guest-sdk/src", "guest-sdk/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // Its own target directory: the outer cargo holds the lock on the main one.
    let target_dir = root.join("target").join("plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("plugins/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_LLVM_COV")
        .status()
        .expect("running cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip2 failed; if the target is missing, run `rustup target add wasm32-wasip2` (tests/run.sh does)"
    );
    println!(
        "cargo:rustc-env=VENEER_PLUGIN_DIR={}",
        target_dir.join("wasm32-wasip2/release").display()
    );
}
