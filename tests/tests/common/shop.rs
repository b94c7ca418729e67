//! The test shop both the personalization and the contract tests run: a home page with a hero,
//! products on sale, a JSON API, segment rules, an experiment, campaigns and fragments, behind
//! a real host with the plugins a test names.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the fixture"
)]

use std::collections::HashMap;

use veneer::visitor::{COOKIE, CookieSigner, VisitorState};
use veneer_tests::{Host, HostSpec, Origin, Page, SECRET};

pub const HOME: &str = r#"<!doctype html><html><head><title>Shop</title></head><body>
<h1>Winter gear that lasts</h1>
<section id="hero"><h2>Gear for every season</h2></section>
<div class="product" data-sale="true"><a href="/p/jacket">Jacket</a><p class="price">NOK 2500</p></div>
<div class="product"><a href="/p/boots">Boots</a><p class="price">NOK 1900</p></div>
<div class="product" data-sale="true"><a href="/p/pack?c=red">Pack</a><p class="price">NOK 1000</p></div>
</body></html>"#;

pub const RULES: &str = r#"{
  "segments": {
    "new": {"visitCount": {"$lte": 1}},
    "returning": {"visitCount": {"$gt": 1}},
    "mobile": {"device": "mobile"}
  },
  "experiments": [
    {"key": "headline", "variations": ["Control headline", "Variant headline"], "weights": [0.0, 1.0],
     "hashVersion": 2, "bucketVersion": 1, "meta": [{"key": "control"}, {"key": "variant"}]}
  ],
  "campaigns": [
    {"id": "sale", "name": "Winter sale", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z", "priority": 1,
     "params": {"banner": "Big sale", "discount": "20"}},
    {"id": "expired", "start": "2020-01-01T00:00:00Z", "end": "2021-01-01T00:00:00Z", "priority": 99,
     "params": {"banner": "Long gone"}},
    {"id": "future", "start": "2098-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z", "priority": 99,
     "params": {"banner": "Not yet"}}
  ]
}"#;

pub const FRAGMENTS: &str = r#"
[hero-new]
en = "<h2>Hello, new friend</h2>"
nb = "<h2>Hei, ny venn</h2>"
[hero-returning]
en = "<h2>Welcome back</h2>"
[hero-returning-mobile]
en = "<h2>Back on your phone</h2>"
"#;

pub fn config(plugins: &str) -> String {
    format!(
        r#"
[[tenant]]
name = "shop"
hosts = ["shop.test", "127.0.0.1"]
origin = "{{origin}}"
rules = "rules.json"
fragments = "fragments.toml"
{plugins}
"#
    )
}

pub fn plugin(name: &str, params: &str) -> String {
    format!(
        "[[tenant.plugin]]\nname = \"{name}\"\npath = \"{{plugins}}/{}.wasm\"\nparams = {{ {params} }}\n",
        name.replace('-', "_")
    )
}

pub async fn shop(plugins: &str) -> (Origin, Host) {
    let mut pages = HashMap::new();
    pages.insert("/".to_owned(), Page::html(HOME));
    pages.insert(
        "/api/home.json".to_owned(),
        Page::new("application/json", r#"{"hero":{"title":"Hi"},"n":1}"#),
    );
    let origin = Origin::start(pages).await;
    let cfg = config(plugins);
    let host = Host::start(
        HostSpec {
            config: &cfg,
            files: &[("rules.json", RULES), ("fragments.toml", FRAGMENTS)],
        },
        origin.addr,
    )
    .await;
    (origin, host)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A cookie for a visitor who has been here `visits` times (signed with the test secret, as
/// the host would have issued it).
pub fn returning_cookie(visits: u32) -> String {
    let state = VisitorState {
        id: "visitor-42".into(),
        first: 1,
        last: 2,
        visits,
        sticky: Default::default(),
        caps: Default::default(),
        customer: None,
        customer_of: None,
    };
    format!(
        "{COOKIE}={}",
        CookieSigner::new(SECRET.as_bytes()).encode(&state)
    )
}

/// The visitor state in the cookie a response set (verifying the host's signature).
pub fn issued_state(headers: &reqwest::header::HeaderMap) -> Option<VisitorState> {
    let set = headers.get("set-cookie")?.to_str().ok()?;
    let value = set.split(';').next()?.strip_prefix("veneer_vid=")?;
    CookieSigner::new(SECRET.as_bytes()).decode(value)
}

pub async fn get(
    host: &Host,
    path: &str,
    headers: &[(&str, &str)],
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let mut req = client().get(host.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.text().await.expect("body"))
}

/// A `[[tenant.plugin]]` entry for the component at `path`.
pub fn plugin_at(name: &str, path: &std::path::Path, params: &str) -> String {
    format!(
        "[[tenant.plugin]]\nname = \"{name}\"\npath = \"{}\"\nparams = {{ {params} }}\n",
        path.display()
    )
}
