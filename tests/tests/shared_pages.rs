//! The real pages in `../shared/pages`: through a no-op plugin they must come out byte for
//! byte, and through a rewriting plugin only the targeted element may change. Skips with a
//! message when `../shared` is absent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use lol_html::html_content::ContentType;
use lol_html::{RewriteStrSettings, element, rewrite_str};
use veneer_tests::{Host, HostSpec, Origin, Page};

const PAGES: [&str; 3] = [
    "cloudflare.com.html",
    "ecma402-spec.html",
    "html-parsing-spec.html",
];

fn load() -> Option<Vec<(String, Vec<u8>)>> {
    let Some(dir) = veneer_tests::shared_pages() else {
        eprintln!(
            "SKIPPED: ../shared/pages not found; clone the project with ../shared beside it to run the real-page tests"
        );
        return None;
    };
    Some(
        PAGES
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    std::fs::read(dir.join(p)).expect("read shared page"),
                )
            })
            .collect(),
    )
}

async fn host_for(pages: &[(String, Vec<u8>)], plugin: &str) -> (Origin, Host) {
    let mut map = HashMap::new();
    for (name, bytes) in pages {
        // Served in 16 KiB chunks with a pause, so the rewriter sees the page arrive in pieces.
        map.insert(
            format!("/{name}"),
            Page::new("text/html; charset=utf-8", bytes.clone())
                .chunked(16 << 10, Duration::from_millis(1)),
        );
    }
    let origin = Origin::start(map).await;
    let fragments = "[hero-new]\nen = \"<b>Personalized</b>\"\n";
    let cfg = format!(
        "[[tenant]]\nname = \"pages\"\nhosts = [\"127.0.0.1\"]\norigin = \"{{origin}}\"\nfragments = \"fragments.toml\"\n{plugin}"
    );
    let host = Host::start(
        HostSpec {
            config: &cfg,
            files: &[("fragments.toml", fragments)],
        },
        origin.addr,
    )
    .await;
    (origin, host)
}

#[tokio::test]
async fn noop_plugin_passes_real_pages_byte_identical() {
    let Some(pages) = load() else { return };
    let (_o, host) = host_for(
        &pages,
        "[[tenant.plugin]]\nname = \"noop\"\npath = \"{plugins}/noop.wasm\"\n",
    )
    .await;
    for (name, bytes) in &pages {
        let got = reqwest::get(host.url(&format!("/{name}")))
            .await
            .expect("request")
            .bytes()
            .await
            .expect("body");
        assert!(
            got.as_ref() == bytes.as_slice(),
            "{name}: {} bytes in, {} out",
            bytes.len(),
            got.len()
        );
    }
}

#[tokio::test]
async fn rewriting_plugin_changes_only_the_targeted_element() {
    let Some(pages) = load() else { return };
    let plugin = "[[tenant.plugin]]\nname = \"hero\"\npath = \"{plugins}/hero.wasm\"\nparams = { selector = \"title\" }\n";
    let (_o, host) = host_for(&pages, plugin).await;
    for (name, bytes) in &pages {
        let got = reqwest::get(host.url(&format!("/{name}")))
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        // The oracle: the same edit made in one pass over the whole page, outside Veneer.
        let source = String::from_utf8_lossy(bytes);
        let expected = rewrite_str(
            &source,
            RewriteStrSettings::new().append_element_content_handler(element!("title", |el| {
                el.set_inner_content("<b>Personalized</b>", ContentType::Html);
                el.set_attribute("data-segment", "new")?;
                Ok(())
            })),
        )
        .expect("oracle rewrite");
        assert_ne!(
            Cow::from(expected.as_str()),
            source,
            "{name}: the page has a <title> to change"
        );
        assert!(
            got == expected,
            "{name}: Veneer's output differs from a one-pass rewrite of only <title>"
        );
        assert!(
            got.contains("data-segment=\"new\"><b>Personalized</b></title>"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn rules_applied_once_give_the_same_page_as_a_full_pass() {
    let Some(pages) = load() else { return };
    // Targets that occur once in a page: applying each to its first match only (and passing
    // the rest through unparsed once all are placed) must give what a full pass gives.
    let rules = "rule1 = \"title | set-inner-text | Personalized title\", \
        rule2 = \"meta[charset] | set-attribute | data-veneer=1\", \
        rule3 = \"title | after-html | <meta name=veneer>\"";
    let plugin = |once: &str| {
        format!(
            "[[tenant.plugin]]\nname = \"copy\"\npath = \"{{plugins}}/static_rewrites.wasm\"\nparams = {{ {once}{rules} }}\n"
        )
    };
    let (_a, full) = host_for(&pages, &plugin("")).await;
    let (_b, once) = host_for(&pages, &plugin("once = \"true\", ")).await;
    for (name, bytes) in &pages {
        let get = |host: &Host| {
            let url = host.url(&format!("/{name}"));
            async move {
                reqwest::get(url)
                    .await
                    .expect("request")
                    .text()
                    .await
                    .expect("body")
            }
        };
        let (whole, first_only) = (get(&full).await, get(&once).await);
        assert!(
            whole.contains("<title>Personalized title</title>")
                && whole.contains("</title><meta name=veneer>"),
            "{name}: the rules apply"
        );
        assert!(
            first_only == whole,
            "{name}: once-only rules changed the page differently ({} vs {} bytes, origin {})",
            first_only.len(),
            whole.len(),
            bytes.len()
        );
    }
}
