//! `veneer new plugin NAME`: a plugin crate outside this repository that builds and tests at
//! once — the SDK dependency, `crate-type = ["cdylib"]` (without it cargo builds "successfully"
//! and writes no `.wasm`), a release profile for small components, a working hook, a native
//! unit test and a README that says how to build, run and ship it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where the SDK is: `--sdk`, else the repository this binary was built from.
fn sdk_path(sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidate = match sdk {
        Some(p) => p.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk"),
    };
    let found = std::fs::canonicalize(&candidate)
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file());
    found.with_context(|| {
        format!(
            "no veneer-sdk at {}: pass --sdk PATH (the guest-sdk directory of a Veneer checkout)",
            candidate.display()
        )
    })
}

fn camel(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Writes the crate; returns its directory.
pub fn new_plugin(name: &str, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    let valid = name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("plugin name {name:?}: lower-case letters, digits and '-', starting with a letter");
    }
    let sdk = sdk_path(sdk)?;
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if root.exists() && std::fs::read_dir(&root)?.next().is_some() {
        bail!("{} exists and is not empty", root.display());
    }
    std::fs::create_dir_all(root.join("src"))
        .with_context(|| format!("creating {}", root.display()))?;
    let lib = name.replace('-', "_");
    let ty = camel(name);
    let sdk_toml = toml::Value::String(sdk.to_string_lossy().into_owned());
    let files = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A Veneer plugin is a WebAssembly component: a cdylib built for wasm32-wasip2.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
veneer-sdk = {{ path = {sdk_toml} }}

# Its own workspace, so it builds wherever it is put.
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1
panic = "abort"
"#
            ),
        ),
        (
            "src/lib.rs",
            format!(
                r#"//! {name}: a Veneer personalization plugin. Returning visitors are welcomed back above
//! the page's first heading (or the element the `selector` parameter names).

use veneer_sdk::prelude::*;

struct {ty};

/// What a visitor is told; kept apart from the hook so a native unit test can check it.
pub fn greeting(returning: bool) -> &'static str {{
    if returning {{ "Welcome back!" }} else {{ "Welcome!" }}
}}

impl Plugin for {ty} {{
    fn on_response(_request: &Request, response: &Response, visitor: &Visitor) -> ResponsePlan {{
        let mut plan = Plan::new();
        let html = response
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/html"));
        if response.status() != 200 || !html {{
            return plan.build();
        }}
        let returning = visitor.in_segment("returning");
        let selector = config("selector").unwrap_or_else(|| "h1".to_owned());
        plan.select(&selector).before_html(&format!(
            "<p class=\"greeting\">{{}}</p>",
            text::escape_html(greeting(returning))
        ));
        analytics::track("greeting_shown", &[("returning", if returning {{ "yes" }} else {{ "no" }})]);
        plan.build()
    }}
}}

export_plugin!({ty});

#[cfg(test)]
mod tests {{
    use super::greeting;

    #[test]
    fn returning_visitors_are_welcomed_back() {{
        assert_eq!(greeting(true), "Welcome back!");
        assert_eq!(greeting(false), "Welcome!");
    }}
}}
"#
            ),
        ),
        (
            "README.md",
            format!(
                r#"# {name}

A Veneer personalization plugin.

```sh
rustup target add wasm32-wasip2                  # once
cargo test                                       # native unit tests
cargo build --release --target wasm32-wasip2     # the component:
                                                 # target/wasm32-wasip2/release/{lib}.wasm

# what it does to a page, as a returning visitor
veneer plugin run target/wasm32-wasip2/release/{lib}.wasm --page page.html --segment returning

# ship it to a host (admin URL and token: VENEER_ADMIN_URL, VENEER_ADMIN_TOKEN)
veneer admin plugin push target/wasm32-wasip2/release/{lib}.wasm --tenant shop --name {name} --activate
```

Hooks run in a fresh instance per request, bounded in time and memory; a plugin that
traps or runs out of time is skipped and the visitor gets the origin's page (its panic message
is in the host's log). Parameters come from the deployment (`config("selector")`).
"#
            ),
        ),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, text) in files {
        std::fs::write(root.join(file), text)
            .with_context(|| format!("writing {}", root.join(file).display()))?;
    }
    Ok(root)
}
