//! Pages in legacy charsets are rewritten in their own encoding, so inserted text arrives
//! correctly encoded; charsets that cannot be rewritten safely pass through untouched. Rules
//! do not reach into `<template>` content, as browsers' `querySelector` does not.

use std::collections::HashMap;

use encoding_rs::{Encoding, ISO_8859_2, KOI8_R, WINDOWS_1250};
use veneer_tests::{Host, HostSpec, Origin, Page};

async fn host_with_rule(page: Page, rule: &str) -> (Origin, Host) {
    let origin = Origin::start(HashMap::from([("/".to_owned(), page)])).await;
    let cfg = format!(
        "[[tenant]]\nname = \"site\"\nhosts = [\"127.0.0.1\"]\norigin = \"{{origin}}\"\n\
         [[tenant.plugin]]\nname = \"copy\"\npath = \"{{plugins}}/static_rewrites.wasm\"\n\
         params = {{ rule1 = \"{rule}\" }}\n"
    );
    let host = Host::start(
        HostSpec {
            config: &cfg,
            files: &[],
        },
        origin.addr,
    )
    .await;
    (origin, host)
}

async fn body(host: &Host) -> Vec<u8> {
    let resp = reqwest::get(host.url("/")).await.expect("request");
    assert_eq!(resp.status(), 200);
    resp.bytes().await.expect("body").to_vec()
}

fn encode(encoding: &'static Encoding, text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding.encode(text);
    assert!(!unmappable, "test text fits {}", encoding.name());
    bytes.into_owned()
}

#[tokio::test]
async fn legacy_charsets_get_inserted_text_in_their_own_encoding() {
    let polish = "Zażółć gęślą jaźń";
    let cases: [(&'static Encoding, &str, String); 3] = [
        // Declared by Content-Type.
        (
            WINDOWS_1250,
            "text/html; charset=windows-1250",
            "<html><head><title>Sklep</title></head><body><h1>Witaj</h1><p>Łódź</p></body></html>".to_owned(),
        ),
        // Declared only by <meta charset>.
        (
            ISO_8859_2,
            "text/html",
            "<html><head><meta charset=\"iso-8859-2\"><title>Sklep</title></head><body><h1>Witaj</h1><p>Łódź</p></body></html>".to_owned(),
        ),
        // Declared by <meta http-equiv>, a Cyrillic page.
        (
            KOI8_R,
            "text/html",
            "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=koi8-r\"></head><body><h1>Привет</h1><p>Москва</p></body></html>".to_owned(),
        ),
    ];
    for (encoding, content_type, page) in cases {
        let inserted = if encoding == KOI8_R {
            "Добро пожаловать"
        } else {
            polish
        };
        let (_o, host) = host_with_rule(
            Page::new(content_type, encode(encoding, &page)),
            &format!("h1 | set-inner-text | {inserted}"),
        )
        .await;
        let bytes = body(&host).await;
        let (text, _, malformed) = encoding.decode(&bytes);
        assert!(
            !malformed,
            "{}: the page stays valid {}",
            encoding.name(),
            encoding.name()
        );
        assert!(
            text.contains(&format!("<h1>{inserted}</h1>")),
            "{}: {text}",
            encoding.name()
        );
        let untouched = if encoding == KOI8_R {
            "<p>Москва</p>"
        } else {
            "<p>Łódź</p>"
        };
        assert!(text.contains(untouched), "{}: {text}", encoding.name());
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "{}: the bytes are not UTF-8 (no UTF-8 was spliced in)",
            encoding.name()
        );
    }
}

#[tokio::test]
async fn characters_the_page_encoding_lacks_become_character_references() {
    let (_o, host) = host_with_rule(
        Page::new(
            "text/html; charset=windows-1250",
            encode(WINDOWS_1250, "<h1>Witaj</h1>"),
        ),
        "h1 | set-inner-html | Cena: 10 € → 日本",
    )
    .await;
    let bytes = body(&host).await;
    let (text, _, malformed) = WINDOWS_1250.decode(&bytes);
    assert!(!malformed);
    // € exists in windows-1250; the arrow and the kanji do not.
    assert!(
        text.contains("Cena: 10 € &#8594; &#26085;&#26412;"),
        "{text}"
    );
}

#[tokio::test]
async fn utf16_pages_pass_through_untouched_and_are_counted() {
    let page = "<html><body><h1>Hello</h1></body></html>";
    // encoding_rs only decodes UTF-16, so the page is written out by hand, with its BOM.
    let mut bytes_le: Vec<u8> = vec![0xFF, 0xFE];
    for unit in page.encode_utf16() {
        bytes_le.extend(unit.to_le_bytes());
    }
    let (_o, host) = host_with_rule(
        Page::new("text/html; charset=utf-16", bytes_le.clone()),
        "h1 | set-inner-text | Changed",
    )
    .await;
    assert_eq!(body(&host).await, bytes_le, "byte for byte");
    assert_eq!(
        host.app.metrics.get(
            "veneer_html_unsupported_charset_total",
            &[("tenant", "site")]
        ),
        1
    );
}

#[tokio::test]
async fn rules_do_not_reach_into_template_content() {
    let page = "<html><body><template id=\"t\"><h1>Inert</h1><template><h1>Nested</h1></template></template>\
        <h1>Live</h1></body></html>";
    let (_o, host) = host_with_rule(Page::html(page), "h1 | set-inner-text | Changed").await;
    let text = String::from_utf8(body(&host).await).expect("utf-8");
    assert!(
        text.contains("<h1>Inert</h1>") && text.contains("<h1>Nested</h1>"),
        "{text}"
    );
    assert!(text.contains("<h1>Changed</h1></body>"), "{text}");
    // A rule on the template element itself still applies.
    let (_o, host) = host_with_rule(Page::html(page), "template | add-class | seen").await;
    let text = String::from_utf8(body(&host).await).expect("utf-8");
    assert!(
        text.contains("<template id=\"t\" class=\"seen\">"),
        "{text}"
    );
}
