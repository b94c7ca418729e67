//! Known customers and journeys over real sockets: the origin identifies a visitor with
//! `veneer-identify` and the next request knows the customer without it; imported CRM
//! attributes reach segments; page views build affinity that decays as configured; journey
//! stages change with behaviour and every change is an event; an abandoned cart is nudged on
//! the web page and in the app's JSON until a purchase, after which cross-sell shows; erasure
//! removes every trace.

mod common;

use std::collections::HashMap;

use common::shop::{client, issued_state};
use veneer_tests::{Host, HostSpec, Origin, Page, TempDir};

const HOME: &str = r#"<!doctype html><html><head><title>Shop</title></head><body>
<section id="hero"><h2>Gear for every season</h2></section>
<main><div id="recommendations"></div></main>
</body></html>"#;

const RULES: &str = r#"{
  "segments": {
    "gold": {"customer.tier": "gold"},
    "boot-fan": {"affinity.boots": {"$gte": 1.5}},
    "abandoned-cart": {"cart.abandoned": true},
    "considering": {"journey": "consider"}
  },
  "campaigns": [
    {"id": "gold-offer", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
     "segments": ["gold"], "params": {"banner": "Gold members ship free"}},
    {"id": "boots", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
     "segments": ["boot-fan"], "params": {"banner": "Boots for you"}},
    {"id": "cart-nudge", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
     "segments": ["abandoned-cart"], "frequency_cap": 20,
     "params": {"nudge": "You left {items} item(s) worth {value}"}}
  ]
}"#;

const FRAGMENTS: &str = r#"
[cross-sell-boots]
en = "<p>Socks that go with your boots</p>"
[hero-affinity-boots]
en = "<h2>Boots for every trail</h2>"
"#;

fn config(identity: &str) -> String {
    let plugin = |name: &str| {
        format!(
            "[[tenant.plugin]]\nname = \"{name}\"\npath = \"{{plugins}}/{}.wasm\"\n",
            name.replace('-', "_")
        )
    };
    format!(
        r#"
[[tenant]]
name = "shop"
hosts = ["shop.test", "127.0.0.1"]
origin = "{{origin}}"
rules = "rules.json"
fragments = "fragments.toml"

{identity}

[tenant.profile]
affinity_half_life_hours = 24
cart_abandoned_after_secs = 1

[[tenant.profile.category]]
path = "/boots/*"
name = "boots"

[[tenant.profile.journey]]
stage = "discover"

[[tenant.profile.journey]]
stage = "consider"
when = {{ "affinity.boots" = {{ "$gt" = 0 }} }}

[[tenant.profile.journey]]
stage = "purchased"
when = {{ "purchases.count" = {{ "$gt" = 0 }} }}

{}{}{}{}
"#,
        plugin("campaign-banner"),
        plugin("cart-nudge"),
        plugin("cross-sell"),
        plugin("affinity-hero"),
    )
}

struct Shop {
    host: Host,
    _origin: Origin,
    _data: TempDir,
}

async fn shop() -> Shop {
    shop_with("").await
}

async fn shop_with(identity: &str) -> Shop {
    let mut pages = HashMap::new();
    pages.insert("/".to_owned(), Page::html(HOME));
    pages.insert("/boots/trail".to_owned(), Page::html(HOME));
    pages.insert(
        "/login".to_owned(),
        Page::html("<html><body>Welcome, Ada</body></html>").header("veneer-identify", "c-ada"),
    );
    pages.insert(
        "/logout".to_owned(),
        Page::html("<html><body>Bye</body></html>").header("veneer-identify", "-"),
    );
    pages.insert(
        "/api/home.json".to_owned(),
        Page::new("application/json", r#"{"hero":{"title":"Hi"}}"#),
    );
    let origin = Origin::start(pages).await;
    let data = TempDir::new();
    let host = Host::start_with_server(
        HostSpec {
            config: &config(identity),
            files: &[("rules.json", RULES), ("fragments.toml", FRAGMENTS)],
        },
        origin.addr,
        &format!("data_dir = \"{}\"", data.0.join("data").display()),
    )
    .await;
    Shop {
        host,
        _origin: origin,
        _data: data,
    }
}

/// A visitor with a cookie jar of one cookie: Veneer's.
struct Browser<'a> {
    host: &'a Host,
    cookie: Option<String>,
    /// Other cookies the browser sends (consent).
    extra: Option<&'static str>,
}

impl Browser<'_> {
    async fn get(&mut self, path: &str) -> (reqwest::header::HeaderMap, String) {
        let mut req = client()
            .get(self.host.url(path))
            .header("host", "shop.test");
        if let Some(c) = self.cookies() {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.expect("request");
        let headers = resp.headers().clone();
        self.keep(&headers);
        (headers, resp.text().await.expect("body"))
    }

    async fn event(&mut self, body: &str) -> u16 {
        let mut req = client()
            .post(self.host.url("/_veneer/event"))
            .header("host", "shop.test")
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(c) = self.cookies() {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.expect("beacon");
        let headers = resp.headers().clone();
        self.keep(&headers);
        resp.status().as_u16()
    }

    fn cookies(&self) -> Option<String> {
        match (&self.cookie, self.extra) {
            (Some(c), Some(e)) => Some(format!("{c}; {e}")),
            (Some(c), None) => Some(c.clone()),
            (None, e) => e.map(str::to_owned),
        }
    }

    fn keep(&mut self, headers: &reqwest::header::HeaderMap) {
        if let Some(set) = headers.get("set-cookie").and_then(|v| v.to_str().ok())
            && let Some(pair) = set.split(';').next()
        {
            self.cookie = Some(pair.to_owned());
        }
    }
}

#[tokio::test]
async fn the_origin_identifies_a_customer_and_the_next_request_knows_them() {
    let s = shop().await;
    let imported = s.host.app.profiles.import(
        "shop",
        b"{\"customer\": \"c-ada\", \"attributes\": {\"tier\": \"gold\", \"ltv\": 1830}}\n",
        1,
    );
    assert_eq!(imported.imported, 1, "{imported:?}");
    let mut ada = Browser {
        host: &s.host,
        cookie: None,
        extra: None,
    };
    let (_, body) = ada.get("/").await;
    assert!(!body.contains("Gold members"), "not known yet: {body}");

    let (headers, body) = ada.get("/login").await;
    assert!(
        headers.get("veneer-identify").is_none(),
        "the identify header never reaches the client"
    );
    assert!(body.contains("Welcome, Ada"));
    let state = issued_state(&headers).expect("cookie");
    assert_eq!(state.customer.as_deref(), Some("c-ada"));

    // Known from the cookie alone: the gold segment applies before the origin is asked.
    let (_, body) = ada.get("/").await;
    assert!(body.contains("Gold members ship free"), "{body}");

    // A forged cookie naming another customer is refused with the rest of the cookie.
    let mut forged = Browser {
        host: &s.host,
        cookie: Some("veneer_vid=eyJpZCI6IngifQ.AAAA".into()),
        extra: None,
    };
    let (_, body) = forged.get("/").await;
    assert!(!body.contains("Gold members"), "{body}");
    // A genuine cookie whose link another tenant made (every tenant's cookies share one key)
    // names nobody here.
    let mut elsewhere = Browser {
        host: &s.host,
        cookie: Some(cookie_for("c-ada", "another-shop")),
        extra: None,
    };
    let (_, body) = elsewhere.get("/").await;
    assert!(!body.contains("Gold members"), "{body}");
    let mut here = Browser {
        host: &s.host,
        cookie: Some(cookie_for("c-ada", "shop")),
        extra: None,
    };
    let (_, body) = here.get("/").await;
    assert!(body.contains("Gold members"), "{body}");

    // Logout unlinks.
    let (headers, _) = ada.get("/logout").await;
    assert_eq!(issued_state(&headers).and_then(|s| s.customer), None);
    let (_, body) = ada.get("/").await;
    assert!(!body.contains("Gold members"), "{body}");
}

/// A visitor cookie linked to `customer` by `tenant`, signed as the host signs them.
fn cookie_for(customer: &str, tenant: &str) -> String {
    let state = veneer::visitor::VisitorState {
        id: "visitor-7".into(),
        first: 1,
        last: 2,
        visits: 1,
        sticky: Default::default(),
        caps: Default::default(),
        customer: Some(customer.into()),
        customer_of: Some(tenant.into()),
    };
    format!(
        "veneer_vid={}",
        veneer::visitor::CookieSigner::new(veneer_tests::SECRET.as_bytes()).encode(&state)
    )
}

/// An HS256 JWT for `claims`.
fn jwt(claims: &str, secret: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (h, b) = (
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(claims),
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{h}.{b}").as_bytes());
    format!("{h}.{b}.{}", b64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_jwt_cookie_identifies_for_as_long_as_it_is_there() {
    let secret = "jwt-secret-0123456789abcdef0123456789";
    let s = shop_with(&format!(
        "[tenant.identity]\njwt_cookie = \"session\"\njwt_secret = \"{secret}\"\n"
    ))
    .await;
    s.host.app.profiles.import(
        "shop",
        b"{\"customer\": \"c-ada\", \"attributes\": {\"tier\": \"gold\"}}",
        1,
    );
    let exp = jiff::Timestamp::now().as_second() + 600;
    let token = jwt(
        &format!(r#"{{"sub":"c-ada","exp":{exp}}}"#),
        secret.as_bytes(),
    );
    let session = Box::leak(format!("session={token}").into_boxed_str());
    let mut v = Browser {
        host: &s.host,
        cookie: None,
        extra: Some(session),
    };
    let (_, body) = v.get("/").await;
    assert!(
        body.contains("Gold members"),
        "known at the first request: {body}"
    );
    // Signed with another key, or expired: nobody.
    let forged = jwt(
        r#"{"sub":"c-ada"}"#,
        b"another-key-another-key-another-key!",
    );
    let expired = jwt(r#"{"sub":"c-ada","exp":1000}"#, secret.as_bytes());
    for bad in [forged, expired] {
        let mut other = Browser {
            host: &s.host,
            cookie: None,
            extra: Some(Box::leak(format!("session={bad}").into_boxed_str())),
        };
        let (_, body) = other.get("/").await;
        assert!(!body.contains("Gold members"), "{body}");
    }
    // The session cookie gone (signed out at the tenant's edge): no longer known.
    v.extra = None;
    let (headers, body) = v.get("/").await;
    assert!(!body.contains("Gold members"), "{body}");
    assert_eq!(issued_state(&headers).and_then(|s| s.customer), None);
}

/// The home page through a preview link at `hours` from now (recording nothing).
fn preview_in_hours(host: &Host, hours: i64) -> String {
    let link = veneer::preview::Preview {
        tenant: "shop".into(),
        segments: None,
        variations: Default::default(),
        consent: None,
        at: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(hours)),
        expires: jiff::Timestamp::now().as_second() + 600,
        record: false,
    }
    .sign(&host.app.signer);
    format!("/?veneer_preview={link}")
}

#[tokio::test]
async fn affinity_builds_with_views_and_decays_with_the_half_life() {
    let s = shop().await;
    let mut v = Browser {
        host: &s.host,
        cookie: None,
        extra: None,
    };
    v.get("/").await;
    v.get("/boots/trail").await;
    v.get("/boots/trail").await;
    // Two views: a score of 2 (≥ 1.5), so the boot-fan campaign and the affinity hero show.
    let (_, body) = v.get("/").await;
    assert!(body.contains("Boots for you"), "{body}");
    assert!(body.contains("Boots for every trail"), "{body}");

    // The same visitor 23 hours later, just under one half-life (24 h): a score of 1.03,
    // under 1.5. A preview link at that instant reads the profile at that instant (and
    // records nothing).
    let (_, body) = v.get(&preview_in_hours(&s.host, 23)).await;
    assert!(!body.contains("Boots for you"), "decayed below 1.5: {body}");
    assert!(
        body.contains("Boots for every trail"),
        "still the strongest category, at 1.03: {body}"
    );
    // Two half-lives on, the score is 0.5, under the hero's min_score of 1.
    let (_, body) = v.get(&preview_in_hours(&s.host, 49)).await;
    assert!(!body.contains("Boots for every trail"), "{body}");
}

#[tokio::test]
async fn stage_transitions_are_events() {
    let s = shop().await;
    let mut v = Browser {
        host: &s.host,
        cookie: None,
        extra: None,
    };
    v.get("/").await;
    v.get("/boots/trail").await;
    // The view of a boots page moves the visitor on at their next request.
    v.get("/").await;
    let events = s.host.events(1).await;
    let stages: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "journey_stage")
        .map(|e| {
            (
                e["properties"]["from"].as_str().unwrap_or("?").to_owned(),
                e["properties"]["to"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            (String::new(), "discover".to_owned()),
            ("discover".to_owned(), "consider".to_owned())
        ],
        "{events:#?}"
    );
}

#[tokio::test]
async fn an_abandoned_cart_is_nudged_on_web_and_in_json_until_a_purchase() {
    let s = shop().await;
    let mut v = Browser {
        host: &s.host,
        cookie: None,
        extra: None,
    };
    v.get("/").await;
    let status = v
        .event(r#"{"event": "cart_add", "items": [{"sku": "b-1", "category": "boots", "price": 120, "quantity": 2}]}"#)
        .await;
    assert_eq!(status, 204);
    // Not abandoned while fresh.
    let (_, body) = v.get("/").await;
    assert!(!body.contains("veneer-cart-nudge"), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let (_, body) = v.get("/").await;
    assert!(
        body.contains("You left 2 item(s) worth 240.00"),
        "nudged on the web page: {body}"
    );
    let (_, json) = v.get("/api/home.json").await;
    let doc: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(doc["nudge"]["items"], 2, "{json}");
    assert_eq!(doc["nudge"]["campaign"], "cart-nudge", "{json}");

    // A purchase empties the cart: no more nudges, and cross-sell for what was bought.
    let status = v.event(r#"{"event": "purchase", "value": 240}"#).await;
    assert_eq!(status, 204);
    let (_, body) = v.get("/").await;
    assert!(!body.contains("veneer-cart-nudge"), "{body}");
    assert!(body.contains("Socks that go with your boots"), "{body}");
    let (_, json) = v.get("/api/home.json").await;
    assert!(!json.contains("nudge"), "{json}");

    // A malformed cart line is refused with the reason.
    let status = v
        .event(r#"{"event": "cart_add", "items": [{"sku": "", "price": -1}]}"#)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_personalization_consent_nothing_is_stored_or_used() {
    let s = shop().await;
    s.host.app.profiles.import(
        "shop",
        b"{\"customer\": \"c-ada\", \"attributes\": {\"tier\": \"gold\"}}",
        1,
    );
    let mut v = Browser {
        host: &s.host,
        cookie: None,
        extra: Some("veneer_consent=analytics,marketing"),
    };
    let (headers, _) = v.get("/login").await;
    assert_eq!(issued_state(&headers).and_then(|s| s.customer), None);
    v.get("/boots/trail").await;
    v.get("/boots/trail").await;
    let (_, body) = v.get("/").await;
    assert!(
        !body.contains("Boots for you") && !body.contains("Gold members"),
        "{body}"
    );
    let state = issued_state(&headers).expect("cookie");
    assert!(
        s.host
            .app
            .profiles
            .export("shop", &veneer::profile::Subject::Visitor(state.id.clone()))
            .is_none(),
        "no profile kept without personalization consent"
    );
}

#[tokio::test]
async fn erasing_a_customer_removes_every_trace() {
    let s = shop().await;
    let profiles = &s.host.app.profiles;
    profiles.import(
        "shop",
        b"{\"customer\": \"c-ada\", \"attributes\": {\"tier\": \"gold\"}}",
        1,
    );
    let mut v = Browser {
        host: &s.host,
        cookie: None,
        extra: None,
    };
    // Anonymous behaviour, then the login takes it to the customer.
    let (headers, _) = v.get("/boots/trail").await;
    let visitor = issued_state(&headers).expect("cookie").id;
    v.get("/login").await;
    v.event(
        r#"{"event": "cart_add", "items": [{"sku": "b-1", "category": "boots", "price": 120}]}"#,
    )
    .await;
    profiles.flush();
    let customer = veneer::profile::Subject::Customer("c-ada".into());
    let kept = profiles.export("shop", &customer).expect("profile");
    assert!(kept.affinity.contains_key("boots"), "{kept:?}");
    assert_eq!(kept.cart.items.len(), 1);
    assert_eq!(kept.visitors, std::slice::from_ref(&visitor));

    profiles.erase(
        "shop",
        &[
            customer.clone(),
            veneer::profile::Subject::Visitor(visitor.clone()),
        ],
    );
    assert!(profiles.export("shop", &customer).is_none());
    // Nothing left on disk either: a fresh store over the same file finds nothing.
    let path = profiles.path().expect("stored").to_owned();
    let conn = rusqlite::Connection::open(&path).expect("open profiles.db");
    let left: i64 = conn
        .query_row("SELECT count(*) FROM profiles", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0);
}
