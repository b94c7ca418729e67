#!/usr/bin/env bash
# Rebuilds the golden plugins of one released contract version from their frozen sources and
# copies the components next to them: `bash tests/golden/build.sh v0.1.0`. CI never runs this;
# the committed .wasm files are the fixtures, so a host change is tested against exactly the
# bytes tenants deployed. Run it only to reproduce a fixture, and commit nothing else with it.
set -euo pipefail
cd "$(dirname "$0")"
version="${1:?usage: build.sh VERSION (e.g. v0.1.0)}"
rustup target add wasm32-wasip2
# A target directory per version: the versions' crates share names.
target="../../target/golden/$version"
rm -f "$target"/wasm32-wasip2/release/*.wasm
CARGO_TARGET_DIR="$target" cargo build --locked --release --target wasm32-wasip2 \
    --manifest-path "$version/Cargo.toml"
for wasm in "$target"/wasm32-wasip2/release/*.wasm; do
    cp "$wasm" "$version/"
done
ls -l "$version"/*.wasm
