//! Each demo plugin's effect per segment, through the real host, a real origin and the
//! compiled plugins.

mod common;

use std::collections::HashMap;
use std::io::Read;

use common::shop::*;
use veneer::visitor::{COOKIE, CookieSigner};
use veneer_tests::{Host, HostSpec, Origin, Page, SECRET};

#[tokio::test]
async fn hero_differs_for_new_returning_and_mobile_visitors() {
    let (_origin, host) = shop(&plugin("hero", "selector = \"#hero\"")).await;

    let (status, headers, new) = get(&host, "/", &[]).await;
    assert_eq!(status, 200);
    assert!(
        new.contains(
            r#"<section id="hero" data-segment="new"><h2>Hello, new friend</h2></section>"#
        ),
        "{new}"
    );
    assert!(
        headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("veneer_vid=")),
        "new visitors get a cookie"
    );
    assert!(headers.get("content-length").is_none());

    let (_, _, norwegian) = get(&host, "/", &[("accept-language", "nb-NO,nb;q=0.9")]).await;
    assert!(
        norwegian.contains("<h2>Hei, ny venn</h2>"),
        "locale falls back from nb-NO to nb: {norwegian}"
    );

    let cookie = returning_cookie(3);
    let (_, _, returning) = get(&host, "/", &[("cookie", &cookie)]).await;
    assert!(
        returning.contains(r#"data-segment="returning"><h2>Welcome back</h2>"#),
        "{returning}"
    );

    let (_, _, phone) = get(
        &host,
        "/",
        &[
            ("cookie", &cookie),
            (
                "user-agent",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile/15E148",
            ),
        ],
    )
    .await;
    assert!(phone.contains(r#"<section id="hero" data-segment="returning" class="hero--compact"><h2>Back on your phone</h2>"#), "{phone}");

    // Everything outside the hero is the origin's.
    let strip = |s: &str| {
        s.split("<section")
            .next()
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert_eq!(strip(&new), strip(HOME));
}

#[tokio::test]
async fn visit_count_grows_through_the_cookie_the_host_issues() {
    let (_origin, host) = shop(&plugin("hero", "")).await;
    let (_, headers, _) = get(&host, "/", &[]).await;
    let mut state = issued_state(&headers).expect("host issues a valid signed cookie");
    assert_eq!(state.visits, 1);
    // Thirty-one minutes later (the host counts a visit after a 30-minute gap).
    state.last -= 31 * 60;
    let cookie = format!(
        "{COOKIE}={}",
        CookieSigner::new(SECRET.as_bytes()).encode(&state)
    );
    let (_, headers, page) = get(&host, "/", &[("cookie", &cookie)]).await;
    assert!(page.contains("Welcome back"), "{page}");
    let next = issued_state(&headers).expect("valid");
    assert_eq!((next.id, next.visits), (state.id, 2));
}

#[tokio::test]
async fn tampered_cookie_is_ignored_and_reissued() {
    let (_origin, host) = shop(&plugin("hero", "")).await;
    let cookie = returning_cookie(5);
    let (payload, _) = cookie.split_once('.').expect("signed");
    let forged = format!("{payload}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (_, headers, page) = get(&host, "/", &[("cookie", &forged)]).await;
    assert!(
        page.contains("Hello, new friend"),
        "a forged cookie must not make a returning visitor: {page}"
    );
    let issued = issued_state(&headers).expect("a fresh valid cookie");
    assert_ne!(issued.id, "visitor-42");
    assert_eq!(issued.visits, 1);
}

#[tokio::test]
async fn campaign_banner_shows_only_live_campaigns_and_respects_consent() {
    let (_origin, host) = shop(&plugin("campaign-banner", "")).await;
    let (_, _, page) = get(&host, "/", &[]).await;
    assert!(
        page.contains(r#"<body><div class="veneer-banner" data-campaign="sale""#),
        "{page}"
    );
    assert!(page.contains("Big sale"));
    assert!(
        !page.contains("Long gone") && !page.contains("Not yet"),
        "expired and future campaigns stay off: {page}"
    );

    let (_, _, no_marketing) = get(
        &host,
        "/",
        &[("cookie", "veneer_consent=analytics,personalization")],
    )
    .await;
    assert!(
        !no_marketing.contains("veneer-banner"),
        "no marketing consent, no banner"
    );
    let (_, _, gpc) = get(&host, "/", &[("sec-gpc", "1")]).await;
    assert!(
        !gpc.contains("veneer-banner"),
        "Global Privacy Control withdraws marketing"
    );

    let (_, _, json) = get(&host, "/api/home.json", &[]).await;
    assert!(!json.contains("veneer-banner"), "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        json["campaign"]["id"], "sale",
        "apps get the campaign as data: {json}"
    );
    assert_eq!(json["hero"]["title"], "Hi", "the rest untouched");

    let events = host.events(1).await;
    let impressions: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "campaign_impression")
        .collect();
    assert_eq!(
        impressions.len(),
        2,
        "the page and the app each showed the campaign; opted-out visitors count none: {events:?}"
    );
    assert_eq!(impressions[0]["properties"]["campaign"], "sale");
}

/// A preview link at `at` for the shop (signed as the admin API would sign it).
fn preview_at(host: &veneer_tests::Host, at: &str) -> String {
    let p = veneer::preview::Preview {
        tenant: "shop".into(),
        at: Some(at.parse().expect("instant")),
        expires: jiff::Timestamp::now().as_second() + 600,
        ..Default::default()
    };
    format!("{}={}", veneer::preview::PARAM, p.sign(&host.app.signer))
}

#[tokio::test]
async fn campaigns_switch_on_and_off_at_their_instants_on_pages_and_in_json_alike() {
    let (_origin, host) = shop(&plugin("campaign-banner", "")).await;
    // "expired" (priority 99) and "sale" start at 2020-01-01T00:00:00Z; "expired" ends at
    // 2021-01-01T00:00:00Z, "sale" runs on.
    for (at, live) in [
        ("2019-12-31T23:59:59Z", None),
        ("2020-01-01T00:00:00Z", Some("expired")),
        ("2020-12-31T23:59:59Z", Some("expired")),
        ("2021-01-01T00:00:00Z", Some("sale")),
    ] {
        let q = preview_at(&host, at);
        let (status, headers, page) = get(&host, &format!("/?{q}"), &[]).await;
        assert_eq!(status, 200);
        match live {
            Some(id) => assert!(
                page.contains(&format!("data-campaign=\"{id}\"")),
                "at {at}: {page}"
            ),
            None => assert!(!page.contains("veneer-banner"), "at {at}: {page}"),
        }
        assert!(
            headers.get("set-cookie").is_none(),
            "previews write no cookie"
        );
        let (_, _, json) = get(&host, &format!("/api/home.json?{q}"), &[]).await;
        let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        match live {
            Some(id) => assert_eq!(json["campaign"]["id"], id, "at {at}: {json}"),
            None => assert!(json.get("campaign").is_none(), "at {at}: {json}"),
        }
    }
    // Previews record nothing.
    let (_, _, _) = get(&host, "/", &[]).await;
    let events = host.events(1).await;
    assert!(
        events
            .iter()
            .all(|e| e["properties"]["campaign"] != "expired"),
        "{events:?}"
    );
}

#[tokio::test]
async fn headline_experiment_is_sticky_and_tracks_exposure() {
    let (_origin, host) = shop(&plugin("headline-ab", "selector = \"h1\"")).await;
    let (_, headers, page) = get(&host, "/", &[]).await;
    assert!(
        page.contains("<h1>Variant headline</h1>"),
        "weights [0, 1] put everyone in the variant: {page}"
    );
    assert_eq!(
        headers
            .get("x-veneer-experiment")
            .and_then(|v| v.to_str().ok()),
        Some("headline=variant")
    );
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();

    let events = host.events(1).await;
    let exposure = events
        .iter()
        .find(|e| e["event"] == "experiment_viewed")
        .expect("exposure tracked");
    assert_eq!(exposure["properties"]["variation"], "variant");
    assert_eq!(exposure["tenant"], "shop");

    // QA links override the assignment without touching the sticky bucket.
    let (_, _, forced) = get(&host, "/?headline=0", &[]).await;
    assert!(forced.contains("<h1>Control headline</h1>"), "{forced}");

    // The same visitor on a host whose weights changed keeps the variant; a new visitor does
    // not; and bumping the bucket version re-buckets everyone.
    let rules_flipped = RULES.replace("[0.0, 1.0]", "[1.0, 0.0]");
    let rules_bumped = rules_flipped.replace("\"bucketVersion\": 1", "\"bucketVersion\": 2");
    for (rules, sticky_expected) in [
        (rules_flipped, "Variant headline"),
        (rules_bumped, "Control headline"),
    ] {
        let origin = Origin::start(HashMap::from([("/".to_owned(), Page::html(HOME))])).await;
        let cfg = config(&plugin("headline-ab", ""));
        let host2 = Host::start(
            HostSpec {
                config: &cfg,
                files: &[("rules.json", &rules), ("fragments.toml", FRAGMENTS)],
            },
            origin.addr,
        )
        .await;
        let (_, _, same) = get(&host2, "/", &[("cookie", &cookie)]).await;
        assert!(
            same.contains(&format!("<h1>{sticky_expected}</h1>")),
            "{same}"
        );
        let (_, _, fresh) = get(&host2, "/", &[]).await;
        assert!(fresh.contains("<h1>Control headline</h1>"), "{fresh}");
    }
}

/// A metric's value from the host's exposition (0 when absent).
fn metric(host: &Host, series: &str) -> u64 {
    host.app
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_deterministic_plugin_runs_once_per_variation_and_its_events_are_every_visitors() {
    // headline-ab declares itself deterministic: its answer depends on the URL and the
    // visitor's assignment, which the host reads again for every visitor it serves it to.
    let rules = RULES.replace("[0.0, 1.0]", "[0.5, 0.5]");
    let origin = Origin::start(HashMap::from([("/".to_owned(), Page::html(HOME))])).await;
    let cfg = config(&plugin("headline-ab", "selector = \"h1\""));
    let host = Host::start(
        HostSpec {
            config: &cfg,
            files: &[("rules.json", &rules), ("fragments.toml", FRAGMENTS)],
        },
        origin.addr,
    )
    .await;
    let experiment = |h: &reqwest::header::HeaderMap| {
        h.get("x-veneer-experiment")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut seen = std::collections::BTreeMap::new();
    let visitors = 16;
    for _ in 0..visitors {
        let (_, headers, page) = get(&host, "/", &[]).await;
        let got = experiment(&headers);
        let headline = match got.as_str() {
            "headline=control" => "<h1>Control headline</h1>",
            "headline=variant" => "<h1>Variant headline</h1>",
            other => panic!("no assignment header: {other:?}"),
        };
        assert!(page.contains(headline), "{got}: {page}");
        *seen.entry(got.clone()).or_insert(0) += 1;
        // The same visitor again (now returning): the same variation, kept or not.
        let cookie = headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .unwrap_or_default()
            .to_owned();
        let (_, again, page) = get(&host, "/", &[("cookie", &cookie)]).await;
        assert_eq!(experiment(&again), got);
        assert!(page.contains(headline), "{got}: {page}");
    }
    assert_eq!(seen.len(), 2, "both variations served: {seen:?}");
    let series = |result: &str| {
        format!(
            r#"veneer_plugin_memo_total{{tenant="shop",plugin="headline-ab",result="{result}"}}"#
        )
    };
    let (hits, misses) = (
        metric(&host, &series("hit")),
        metric(&host, &series("miss")),
    );
    assert_eq!(hits + misses, 2 * visitors, "every request asked the memo");
    // One run per (new or returning) × variation; every other answer was a kept one.
    assert!(misses <= 4, "{misses} misses, {hits} hits");
    // Its event, and the host's exposure, for every visitor as if it had run each time.
    let events = host.events(3 * visitors as usize).await;
    let viewed: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "experiment_viewed")
        .collect();
    assert_eq!(viewed.len() as u64, 2 * visitors, "{events:?}");
    let exposures = events
        .iter()
        .filter(|e| e["event"] == "experiment_exposure")
        .count();
    assert_eq!(exposures as u64, visitors, "one first exposure per visitor");
    let visitors_seen: std::collections::HashSet<_> =
        viewed.iter().map(|e| e["visitor"].to_string()).collect();
    assert_eq!(
        visitors_seen.len() as u64,
        visitors,
        "each under its own visitor"
    );
}

#[tokio::test]
async fn element_callbacks_rewrite_only_matching_links_and_whole_prices() {
    let (_origin, host) = shop(&plugin("product-links", "")).await;
    let (_, _, page) = get(&host, "/", &[]).await;
    assert!(page.contains(r#"<a href="/p/jacket?campaign=sale" class="on-sale">Jacket</a><p class="price"><s>NOK 2500</s> NOK 2000</p>"#), "{page}");
    assert!(
        page.contains(r#"<a href="/p/pack?c=red&amp;campaign=sale" class="on-sale">"#)
            || page.contains(r#"<a href="/p/pack?c=red&campaign=sale" class="on-sale">"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<a href="/p/boots">Boots</a><p class="price">NOK 1900</p>"#),
        "not on sale, untouched: {page}"
    );
}

#[tokio::test]
async fn json_responses_get_the_same_decision() {
    let (_origin, host) = shop(&plugin("hero", "")).await;
    let cookie = returning_cookie(2);
    let (status, headers, body) = get(&host, "/api/home.json", &[("cookie", &cookie)]).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(doc["hero"]["segment"], "returning");
    assert_eq!(doc["hero"]["html"], "<h2>Welcome back</h2>");
    assert_eq!(doc["hero"]["title"], "Hi");
    assert_eq!(doc["n"], 1);
    assert_eq!(
        headers.get("content-length").and_then(|v| v.to_str().ok()),
        Some(body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn whole_chain_with_gzip_and_brotli_clients() {
    let plugins = [
        plugin("campaign-banner", ""),
        plugin("hero", ""),
        plugin("headline-ab", ""),
        plugin("product-links", ""),
    ]
    .concat();
    let (_origin, host) = shop(&plugins).await;
    let identity = get(&host, "/", &[("cookie", &returning_cookie(2))]).await.2;
    for (accept, expected) in [("gzip", "gzip"), ("br, gzip", "br")] {
        let resp = client()
            .get(host.url("/"))
            .header("cookie", returning_cookie(2))
            .header("accept-encoding", accept)
            .send()
            .await
            .expect("request");
        assert_eq!(
            resp.headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok()),
            Some(expected)
        );
        let wire = resp.bytes().await.expect("body");
        let mut plain = String::new();
        match expected {
            "gzip" => flate2::read::GzDecoder::new(&wire[..])
                .read_to_string(&mut plain)
                .expect("valid gzip"),
            _ => brotli::Decompressor::new(&wire[..], 4096)
                .read_to_string(&mut plain)
                .expect("valid brotli"),
        };
        assert_eq!(plain, identity, "{accept}");
    }
    for needle in [
        "Big sale",
        "Welcome back",
        "<h1>Variant headline</h1>",
        "<s>NOK 2500</s>",
    ] {
        assert!(identity.contains(needle), "{needle} missing: {identity}");
    }
}

/// Every example plugin's fixtures (`plugins/NAME/fixtures`, run by `veneer plugin test`) pass
/// in the real runtime: the same check a plugin author's CI runs, on this repository's plugins.
#[tokio::test]
async fn example_plugins_pass_their_fixtures() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut ran = 0;
    for entry in std::fs::read_dir(&root).expect("plugins") {
        let dir = entry.expect("entry").path();
        let fixtures = dir.join("fixtures");
        // Rust plugins here; the JavaScript one has its own test below.
        if !fixtures.is_dir() || !dir.join("Cargo.toml").is_file() {
            continue;
        }
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let verdicts =
            veneer::plugin_test::run_cases(&veneer_tests::plugin(&name), &fixtures, false)
                .await
                .expect("fixtures run");
        let mut report = String::new();
        assert!(
            veneer::plugin_test::report(&verdicts, &mut report),
            "{name}: {report}"
        );
        ran += verdicts.len();
    }
    assert!(ran >= 8, "the example plugins' fixtures ran ({ran} cases)");
}

/// A plugin written in JavaScript (componentize-js, from the same WIT) personalizes through
/// the same host: its fixtures pass, and it sits beside Rust plugins in one tenant.
#[tokio::test]
async fn a_javascript_plugin_runs_from_the_same_contract() {
    let js = veneer_tests::js_plugin();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/js-greeter/fixtures");
    let verdicts = veneer::plugin_test::run_cases(&js, &fixtures, false)
        .await
        .expect("fixtures run");
    let mut report = String::new();
    assert!(
        veneer::plugin_test::report(&verdicts, &mut report),
        "{report}"
    );
    assert_eq!(verdicts.len(), 4, "{report}");

    // Beside the Rust hero in one tenant: both rewrite the page, each its own part.
    let cfg =
        plugin("hero", "selector = \"#hero\"") + &plugin_at("greeter", &js, "selector = \"#hero\"");
    let (_origin, host) = shop(&cfg).await;
    let (status, _, page) = get(&host, "/", &[]).await;
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<p class="greeting" data-lang="js">Welcome!</p><section id="hero" data-segment="new">"#),
        "{page}"
    );
}
