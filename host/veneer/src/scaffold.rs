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

/// The page the fixtures' origin answers.
const ORIGIN: &str = "<!doctype html>\n<html><head><title>Shop</title></head>\n<body><main><h1>Shop</h1><p>Boots and jackets.</p></main></body></html>\n";

/// What the host answers a fixture case with: `veneer plugin test` compares it whole, so the
/// scaffold's own test catches any change in what the host adds.
fn expected(returning: bool) -> String {
    let body = if returning {
        ORIGIN.replace("<h1>", "<p class=\"greeting\">Welcome back!</p><h1>")
    } else {
        ORIGIN.replace("<p>Boots", "<p class=\"greeting\">Welcome!</p><p>Boots")
    };
    // A case that sets the visitor's segments runs as a preview, which is never cached.
    let cache = if returning { "no-store" } else { "no-cache" };
    format!(
        "200 /\ncache-control: private, {cache}\ncontent-type: text/html; charset=utf-8\n\
         transfer-encoding: chunked\nvary: Accept-Encoding\n\n{body}\n--- events\n\
         greeting_shown {{\"returning\":\"{}\"}}\npage_view {{}}\n--- faults\nnone\n",
        if returning { "yes" } else { "no" }
    )
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
    for sub in ["src", "fixtures/returning-visitor", "fixtures/first-visit"] {
        std::fs::create_dir_all(root.join(sub))
            .with_context(|| format!("creating {}", root.join(sub).display()))?;
    }
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
# The SDK from a Veneer checkout; it is a self-contained package (`cargo package -p veneer-sdk`
# builds), so from a registry it is `veneer-sdk = "0.2.2"`.
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

/// What a visitor is told.
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
    use super::*;
    use veneer_sdk::testing::FakeHost;

    #[test]
    fn returning_visitors_are_welcomed_back_above_the_first_heading() {{
        let mut host = FakeHost::new();
        let visitor = Visitor::new("v-1").with_segment("returning");
        let plan = host.on_response::<{ty}>(&Request::get("/"), &Response::html(), &visitor);
        assert_eq!(
            plan.ops_on("h1"),
            [&HtmlOp::BeforeHtml("<p class=\"greeting\">Welcome back!</p>".into())]
        );
        assert_eq!(host.events()[0].name, "greeting_shown");
        assert_eq!(host.events()[0].property("returning"), Some("yes"));
    }}

    #[test]
    fn the_selector_parameter_moves_the_greeting() {{
        let mut host = FakeHost::new().with_config("selector", "main h2");
        let plan = host.on_response::<{ty}>(&Request::get("/"), &Response::html(), &Visitor::new("v-2"));
        assert_eq!(
            plan.ops_on("main h2"),
            [&HtmlOp::BeforeHtml("<p class=\"greeting\">Welcome!</p>".into())]
        );
    }}

    #[test]
    fn json_and_errors_are_left_alone() {{
        let mut host = FakeHost::new();
        let visitor = Visitor::new("v-3");
        let json = host.on_response::<{ty}>(&Request::get("/api"), &Response::json(), &visitor);
        let missing = host.on_response::<{ty}>(&Request::get("/x"), &Response::new(404), &visitor);
        assert!(json.html.is_empty() && missing.html.is_empty());
        assert!(host.events().is_empty());
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
cargo test                                       # native tests, on the SDK's fake host
cargo build --release --target wasm32-wasip2     # the component:
                                                 # target/wasm32-wasip2/release/{lib}.wasm

# the component in the real host, one folder per case in fixtures/ (case.toml, origin.html,
# expected.txt); --bless records expected.txt from what the plugin does now
veneer plugin test target/wasm32-wasip2/release/{lib}.wasm

# what it does to a page, as a returning visitor
veneer plugin run target/wasm32-wasip2/release/{lib}.wasm --page page.html --segment returning

# ship it to a host (admin URL and token: VENEER_ADMIN_URL, VENEER_ADMIN_TOKEN)
veneer admin plugin push target/wasm32-wasip2/release/{lib}.wasm --tenant shop --name {name}
```

Hooks run in a fresh instance per request, bounded in time and memory; a plugin that
traps or runs out of time is skipped and the visitor gets the origin's page (its panic message
is in the host's log). Parameters come from the deployment (`config("selector")`).
"#
            ),
        ),
        (".gitignore", "/target\n".to_owned()),
        ("fixtures/page.html", ORIGIN.to_owned()),
        (
            "fixtures/returning-visitor/case.toml",
            "# A returning visitor on a phone. Every field is optional: path, headers, params,\n\
             # rules, fragments, segments, variations, consent, at, device, country, language, status, origin.\n\
             segments = [\"returning\"]\ndevice = \"mobile\"\norigin = \"../page.html\"\n"
                .to_owned(),
        ),
        ("fixtures/returning-visitor/expected.txt", expected(true)),
        (
            "fixtures/first-visit/case.toml",
            "# A first visit, with the greeting moved by the plugin's parameter.\n\
             params = { selector = \"main p\" }\norigin = \"../page.html\"\n"
                .to_owned(),
        ),
        ("fixtures/first-visit/expected.txt", expected(false)),
    ];
    for (file, text) in files {
        std::fs::write(root.join(file), text)
            .with_context(|| format!("writing {}", root.join(file).display()))?;
    }
    Ok(root)
}
