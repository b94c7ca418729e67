//! The marketer's dashboard in a real browser: Debian's headless Chromium, driven through
//! chromedriver, against the real `veneer` binary with seeded traffic. Screenshots land in
//! `target/artifacts/dashboard/`.
//!
//! Chromium reaches the tenant's site (`shop.test`) through Veneer's own listener as its HTTP
//! proxy, so a preview link opens exactly as a visitor's browser would open it; the dashboard on
//! the loopback address is reached directly.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::{Killed, browser, wait_for};
use common::{free_port, origin, send};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

const OPERATOR: &str = "operator-secret-0123456789";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0";
const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";

struct Veneer {
    _child: Killed,
    listen: SocketAddr,
    admin: SocketAddr,
}

/// Instants around now, so the campaigns are live, scheduled and ended whatever the date.
struct Instants {
    now: jiff::Timestamp,
}

impl Instants {
    fn days(&self, n: i64) -> jiff::Timestamp {
        self.now
            .checked_add(jiff::SignedDuration::from_hours(24 * n))
            .expect("instant")
    }
}

fn rules(at: &Instants) -> String {
    json!({
        "segments": {
            "mobile": {"device": "mobile"},
            "nordic": {"country": {"$in": ["NO", "SE", "DK"]}},
            "stammkunde-ü": {"visitCount": {"$gt": 1}}
        },
        "experiments": [{"key": "headline", "variations": ["Old", "New"], "weights": [0.5, 0.5],
                         "meta": [{"key": "control", "name": "Old headline"},
                                  {"key": "new", "name": "New headline"}]}],
        "campaigns": [
            {"id": "sale", "name": "Sale", "start": at.days(-3).to_string(),
             "end": at.days(30).to_string(), "priority": 1, "cost": 100,
             "params": {"banner": "Sale now on"}},
            {"id": "xmas", "name": "Christmas", "start": at.days(10).to_string(),
             "end": at.days(20).to_string(), "priority": 10, "segments": ["mobile"],
             "params": {"banner": "Merry Christmas"}},
            {"id": "autumn", "name": "Autumn", "start": at.days(-40).to_string(),
             "end": at.days(-10).to_string(), "priority": 5,
             "params": {"banner": "Autumn leaves"}}
        ]
    })
    .to_string()
}

fn start(dir: &Path, origin: SocketAddr, at: &Instants) -> Veneer {
    let (listen, admin) = (free_port(), free_port());
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/v0.2.0");
    std::fs::write(dir.join("rules.json"), rules(at)).expect("rules");
    let config = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{data}\"\n\
         cookie_secret = \"0123456789abcdef0123456789abcdef\"\n\n\
         [[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\"]\norigin = \"http://{origin}\"\n\
         rules = \"rules.json\"\n\
         [tenant.limits]\nrequests_per_second_per_client = 0\n\
         [[tenant.goal]]\nname = \"purchase\"\nevent = \"purchase\"\ncurrency = \"EUR\"\n\
         [[tenant.plugin]]\nname = \"headline\"\npath = \"{headline}\"\n\
         params = {{ experiment = \"headline\", path = \"/\" }}\n\
         [[tenant.plugin]]\nname = \"banner\"\npath = \"{banner}\"\nparams = {{ selector = \"#a\" }}\n\n\
         [[tenant]]\nname = \"other\"\nhosts = [\"other.test\"]\norigin = \"http://{origin}\"\n",
        data = dir.join("data").display(),
        headline = golden.join("headline_ab.wasm").display(),
        banner = golden.join("campaign_banner.wasm").display(),
    );
    std::fs::write(dir.join("veneer.toml"), config).expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args(["serve", "--config"])
        .arg(dir.join("veneer.toml"))
        .env("VENEER_ADMIN_TOKEN", OPERATOR)
        .env("VENEER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start veneer");
    let v = Veneer {
        _child: Killed(child),
        listen,
        admin,
    };
    wait_for(|| send(v.admin, "GET", "/readyz", "admin.test", &[], b"").status == 200);
    v
}

struct Seen {
    id: String,
    mobile: bool,
    variation: u64,
}

/// Visitors of both devices, exposed to the headline experiment; some of them buy.
fn seed_traffic(v: &Veneer) -> Vec<Seen> {
    let signer = veneer::visitor::CookieSigner::new(b"0123456789abcdef0123456789abcdef");
    let mut seen = Vec::new();
    for i in 0..24 {
        let mobile = i % 3 == 0;
        let ua = if mobile { MOBILE } else { DESKTOP };
        let a = send(
            v.listen,
            "GET",
            "/",
            "shop.test",
            &[("user-agent", ua)],
            b"",
        );
        assert_eq!(a.status, 200, "{}", a.head);
        let cookie = a
            .header("set-cookie")
            .and_then(|c| c.split(';').next().map(str::to_owned))
            .expect("the visitor cookie");
        let state = cookie
            .split_once('=')
            .and_then(|(_, value)| signer.decode(value))
            .expect("a cookie the host signed");
        let variation = a
            .header("x-veneer-experiment")
            .and_then(|h| match h.strip_prefix("headline=") {
                // The plugin names the variation by its meta key.
                Some("control") => Some(0),
                Some("new") => Some(1),
                _ => None,
            })
            .expect("in the experiment");
        seen.push(Seen {
            id: state.id,
            mobile,
            variation,
        });
        if i % 4 == 1 {
            let body = format!(r#"{{"event":"purchase","value":{}}}"#, 20 + i);
            let e = send(
                v.listen,
                "POST",
                "/_veneer/event",
                "shop.test",
                &[("cookie", &cookie), ("content-type", "application/json")],
                body.as_bytes(),
            );
            assert!(e.status < 300, "{}", e.head);
        }
    }
    seen
}

/// The admin API's answer, as `veneer report --json` and the page read it.
fn api(v: &Veneer, token: &str, method: &str, path: &str, body: &str) -> Value {
    let auth = format!("Bearer {token}");
    let a = send(
        v.admin,
        method,
        path,
        "admin.test",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert!(a.status < 300, "{method} {path}: {} {}", a.head, a.body);
    serde_json::from_str(&a.body).expect("JSON")
}

/// `veneer rules eval` on one line.
fn rules_eval(line: &str) -> Value {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args(["rules", "eval"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("veneer rules eval");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{line}\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("one JSON answer")
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts/dashboard");
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("save screenshot");
}

async fn wait_css(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("waiting for {css}: {e}"))
}

async fn attr(e: &fantoccini::elements::Element, name: &str) -> String {
    e.attr(name)
        .await
        .expect("attribute")
        .unwrap_or_else(|| panic!("no attribute {name}"))
}

/// The exact number a page element carries in `data-value`, once it is there.
async fn data_value(c: &Client, css: &str) -> f64 {
    number(&attr(&wait_css(c, css).await, "data-value").await)
}

fn number(s: &str) -> f64 {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not a number"))
}

async fn script(c: &Client, js: &str, args: Vec<Value>) -> Value {
    c.execute(js, args).await.expect("script")
}

/// The segment tester's raw answer for `attributes` at `at`, from the page.
async fn ask_tester(c: &Client, attributes: &Value, at: &str) -> Value {
    script(
        c,
        "document.getElementById('attributes').value = arguments[0];
         document.getElementById('at').value = arguments[1];
         document.getElementById('tester-json')?.replaceChildren();",
        vec![json!(attributes.to_string()), json!(at)],
    )
    .await;
    c.find(Locator::Css("#evaluate"))
        .await
        .expect("evaluate button")
        .click()
        .await
        .expect("click");
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(
            "//*[@id='tester-json'][normalize-space(string())!='']",
        ))
        .await
        .expect("an answer");
    let shown = script(
        c,
        "return document.getElementById('tester-json').textContent",
        vec![],
    )
    .await;
    serde_json::from_str(shown.as_str().expect("text")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_one_tenant_its_reports_and_the_edges_own_decisions() {
    let dir = std::env::temp_dir().join(format!("veneer-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let at = Instants {
        now: jiff::Timestamp::now(),
    };
    let v = start(&dir, origin(), &at);
    let seen = seed_traffic(&v);
    let shop_token = api(&v, OPERATOR, "POST", "/v1/tokens", r#"{"tenant": "shop"}"#)["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let report = api(
        &v,
        &shop_token,
        "GET",
        "/v1/tenants/shop/reports/experiments/headline?goal=purchase&engine=bayesian",
        "",
    );
    let (_driver, c) = browser(v.listen, &["--window-size=1280,1600", "--lang=en-GB"]).await;
    let base = format!("http://{}/dashboard/", v.admin);

    // Signing in, with the keyboard: a wrong token is refused with the API's reason.
    c.goto(&base).await.expect("open the dashboard");
    let input = wait_css(&c, "#signin #token").await;
    input.send_keys("not-a-token\n").await.expect("type");
    let refused = wait_css(&c, "#signin-error").await;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(
            "//*[@id='signin-error'][normalize-space(string())!='']",
        ))
        .await
        .expect("a reason for the refusal");
    assert!(!refused.text().await.expect("text").is_empty());
    input.clear().await.expect("clear");
    input
        .send_keys(&format!("{shop_token}\n"))
        .await
        .expect("type");

    // A tenant token sees its own tenant only.
    wait_css(&c, "#tenant option").await;
    let tenants = script(
        &c,
        "return [...document.querySelectorAll('#tenant option')].map(o => o.value)",
        vec![],
    )
    .await;
    assert_eq!(tenants, json!(["shop"]));

    // The overview: campaigns by status, experiments, segment sizes from the report route.
    wait_css(&c, "#campaigns [data-campaign='autumn']").await;
    for (id, status) in [("sale", "live"), ("xmas", "scheduled"), ("autumn", "ended")] {
        let row = wait_css(&c, &format!("#campaigns [data-campaign='{id}']")).await;
        assert_eq!(attr(&row, "data-status").await, status, "campaign {id}");
    }
    wait_css(&c, "#timeline rect[data-campaign='xmas']").await;
    wait_css(&c, "#experiments [data-experiment='headline']").await;
    let sizes = api(
        &v,
        &shop_token,
        "GET",
        "/v1/tenants/shop/reports/segments",
        "",
    );
    for s in sizes["segments"].as_array().expect("segments") {
        let name = s["segment"].as_str().expect("name");
        for field in ["visitors", "share"] {
            let css = format!("#segments [data-segment='{name}'] [data-field='{field}']");
            assert_eq!(
                data_value(&c, &css).await,
                s[field].as_f64().expect("number"),
                "segment {name} {field}"
            );
        }
    }
    assert!(sizes["segments"][0]["visitors"].as_u64() > Some(0));
    screenshot(&c, "overview").await;

    // The experiment page: the report's numbers, its charts.
    c.goto(&format!(
        "{base}#/t/shop/experiment/headline?goal=purchase&engine=bayesian"
    ))
    .await
    .expect("experiment page");
    wait_css(
        &c,
        "#experiment-table [data-variation='1'] [data-field='users']",
    )
    .await;
    for (i, row) in report["variations"]
        .as_array()
        .expect("rows")
        .iter()
        .enumerate()
    {
        for field in ["users", "conversions", "rate"] {
            let css = format!("#experiment-table [data-variation='{i}'] [data-field='{field}']");
            assert_eq!(
                data_value(&c, &css).await,
                row[field].as_f64().expect("number"),
                "variation {i} {field}"
            );
        }
    }
    // The statistics compare each variation with the control: the first entry is variation 1.
    let uplift = &report["conversion_rate"][0];
    assert_eq!(
        data_value(
            &c,
            "#experiment-table [data-variation='1'] [data-field='uplift']"
        )
        .await,
        uplift["expected"].as_f64().expect("expected")
    );
    let ci = wait_css(
        &c,
        "#experiment-table [data-variation='1'] [data-field='ci']",
    )
    .await;
    assert_eq!(
        number(&attr(&ci, "data-low").await),
        uplift["ci"][0].as_f64().expect("low")
    );
    assert_eq!(
        number(&attr(&ci, "data-high").await),
        uplift["ci"][1].as_f64().expect("high")
    );
    wait_css(&c, "#uplift-chart [data-variation='1']").await;
    for series in ["users", "conversions"] {
        for i in 0..2 {
            wait_css(
                &c,
                &format!("#cumulative-chart path[data-variation='{i}'][data-series='{series}']"),
            )
            .await;
        }
    }
    let srm_shown = script(
        &c,
        "const e = document.getElementById('srm-warning'); return !!e && !e.hidden && e.offsetParent !== null",
        vec![],
    )
    .await;
    assert_eq!(srm_shown, report["srm_warning"]);
    screenshot(&c, "experiment").await;

    // The campaign page.
    let campaign = api(
        &v,
        &shop_token,
        "GET",
        "/v1/tenants/shop/reports/campaigns/sale?goal=purchase",
        "",
    );
    c.goto(&format!("{base}#/t/shop/campaign/sale?goal=purchase"))
        .await
        .expect("campaign page");
    for field in ["impressions", "reach", "conversions", "value"] {
        let css = format!("#campaign-figures [data-field='{field}']");
        assert_eq!(
            data_value(&c, &css).await,
            campaign[field].as_f64().expect("number"),
            "campaign {field}"
        );
    }
    assert!(campaign["impressions"].as_u64() > Some(0));
    wait_css(&c, "#campaign-by-day").await;
    screenshot(&c, "campaign").await;

    // The segment tester answers as `veneer rules eval` does, in the browser.
    c.goto(&format!("{base}#/t/shop/tester"))
        .await
        .expect("tester");
    wait_css(&c, "#tester-json").await;
    let rules_doc = api(&v, &shop_token, "GET", "/v1/tenants/shop/rules", "");
    let cases = [
        (
            json!({"id": "visitor-1", "device": "mobile", "country": "NO"}),
            at.days(12),
        ),
        (
            json!({"id": "Ærøskøbing-ü-7", "device": "desktop", "visitCount": 4}),
            at.now,
        ),
        (
            json!({"id": "訪問者-42", "device": "mobile", "visitCount": 2}),
            at.days(-20),
        ),
        (json!({"id": "🦀-krabbe", "country": "SE"}), at.days(400)),
        (json!({"device": "mobile"}), at.days(15)),
    ];
    for (attributes, instant) in &cases {
        let at_text = instant.to_string();
        let shown = ask_tester(&c, attributes, &at_text).await;
        let line = json!({"op": "rules", "rules": rules_doc, "attributes": attributes,
                          "at": at_text, "channel": "web"});
        assert_eq!(shown, rules_eval(&line.to_string()), "case {attributes}");
    }
    // And as the edge itself decided for the visitors it served: their variation and segments.
    for visitor in seen.iter().take(8) {
        let device = if visitor.mobile { "mobile" } else { "desktop" };
        let attributes = json!({"id": visitor.id, "device": device, "visitCount": 1});
        let shown = ask_tester(&c, &attributes, &at.now.to_string()).await;
        assert_eq!(
            shown["experiments"][0]["variation"],
            json!(visitor.variation),
            "visitor {}",
            visitor.id
        );
        let segments = shown["segments"].as_array().expect("segments");
        assert_eq!(segments.contains(&json!("mobile")), visitor.mobile);
    }
    let first = rules_eval(
        &json!({"op": "rules", "rules": rules_doc, "attributes": cases[0].0,
                "at": cases[0].1.to_string(), "channel": "web"})
        .to_string(),
    );
    assert_eq!(first["segments"], json!(["mobile", "nordic"]));
    assert_eq!(first["campaigns"][0]["id"], json!("xmas"));

    // A preview link for a mobile visitor at Christmas opens the site as one, in the browser,
    // though the browser itself is a desktop one and Christmas is days away.
    let (attributes, instant) = &cases[0];
    script(
        &c,
        "document.getElementById('attributes').value = arguments[0];
         document.getElementById('at').value = arguments[1];",
        vec![json!(attributes.to_string()), json!(instant.to_string())],
    )
    .await;
    c.find(Locator::Css("#evaluate"))
        .await
        .expect("evaluate")
        .click()
        .await
        .expect("click");
    wait_css(&c, "#live-campaigns [data-campaign='xmas']").await;
    screenshot(&c, "tester").await;
    c.find(Locator::Css("#preview-visitor"))
        .await
        .expect("preview button")
        .click()
        .await
        .expect("click");
    let link = wait_css(&c, "#preview-link").await;
    let href = attr(&link, "href").await;
    assert!(href.starts_with("http://shop.test/"), "{href}");
    c.goto(&href).await.expect("open the preview");
    let page = c.source().await.expect("page");
    assert!(page.contains("Merry Christmas"), "{page}");
    // The same site without the link: the sale, as now.
    c.goto("http://shop.test/").await.expect("open the site");
    let page = c.source().await.expect("page");
    assert!(
        page.contains("Sale now on") && !page.contains("Merry Christmas"),
        "{page}"
    );

    // An operator link carries its token in the fragment: it is moved out of the address
    // bar, and every tenant is listed.
    c.goto(&format!("{base}#token={OPERATOR}"))
        .await
        .expect("operator link");
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#tenant option[value='other']"))
        .await
        .expect("both tenants");
    let url = c.current_url().await.expect("url");
    assert!(!url.as_str().contains(OPERATOR), "{url}");

    // Phone width: no page wider than the screen (wide tables scroll inside themselves).
    c.set_window_size(390, 844).await.expect("resize");
    for (name, route, ready) in [
        ("overview", "#/t/shop", "#campaigns [data-campaign='sale']"),
        (
            "experiment",
            "#/t/shop/experiment/headline?goal=purchase",
            "#experiment-table [data-variation='1']",
        ),
        (
            "campaign",
            "#/t/shop/campaign/sale?goal=purchase",
            "#campaign-figures",
        ),
        ("tester", "#/t/shop/tester", "#tester-json"),
    ] {
        c.goto(&format!("{base}{route}")).await.expect("page");
        wait_css(&c, ready).await;
        let overflow = script(
            &c,
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .as_f64()
        .expect("a width");
        assert!(
            overflow <= 0.0,
            "{name} is wider than a phone by {overflow}px"
        );
        screenshot(&c, &format!("{name}-phone")).await;
    }
    c.set_window_size(1280, 1600).await.expect("resize");

    // A split far from the experiment's weights is flagged: the same traffic against weights
    // changed to 90/10 is a sample-ratio mismatch.
    let mut skewed = rules_doc.clone();
    skewed["experiments"][0]["weights"] = json!([0.9, 0.1]);
    api(
        &v,
        OPERATOR,
        "PUT",
        "/v1/tenants/shop/rules",
        &skewed.to_string(),
    );
    let report = api(
        &v,
        &shop_token,
        "GET",
        "/v1/tenants/shop/reports/experiments/headline?goal=purchase&engine=bayesian",
        "",
    );
    assert_eq!(report["srm_warning"], json!(true), "{report}");
    c.goto(&format!("{base}#/t/shop/experiment/headline?goal=purchase"))
        .await
        .expect("experiment page");
    let warning = wait_css(&c, "#srm-warning").await;
    assert!(warning.is_displayed().await.expect("displayed"));
    assert!(
        warning
            .text()
            .await
            .expect("text")
            .to_lowercase()
            .contains("sample ratio"),
        "the warning says what is wrong"
    );
    screenshot(&c, "experiment-srm").await;

    c.close().await.expect("close the browser");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_dashboards_files_are_embedded_and_locked_down() {
    let dir = std::env::temp_dir().join(format!("veneer-dashboard-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let at = Instants {
        now: jiff::Timestamp::now(),
    };
    let v = start(&dir, origin(), &at);
    let page = send(v.admin, "GET", "/dashboard/", "admin.test", &[], b"");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let wasm = send(
        v.admin,
        "GET",
        "/dashboard/rules_web_bg.wasm",
        "admin.test",
        &[],
        b"",
    );
    assert_eq!(wasm.status, 200);
    assert_eq!(
        wasm.header("content-type").as_deref(),
        Some("application/wasm")
    );
    let etag = wasm.header("etag").expect("an ETag");
    let again = send(
        v.admin,
        "GET",
        "/dashboard/rules_web_bg.wasm",
        "admin.test",
        &[("if-none-match", &etag)],
        b"",
    );
    assert_eq!(again.status, 304);
    assert_eq!(
        send(v.admin, "GET", "/dashboard", "admin.test", &[], b"").status,
        308
    );
    assert_eq!(
        send(
            v.admin,
            "GET",
            "/dashboard/../v1/tenants",
            "admin.test",
            &[],
            b""
        )
        .status,
        404
    );
    assert_eq!(
        send(v.admin, "POST", "/dashboard/app.js", "admin.test", &[], b"").status,
        405
    );
    // The page holds no data: the API behind it still wants a token.
    assert_eq!(
        send(
            v.admin,
            "GET",
            "/v1/tenants/shop/rules",
            "admin.test",
            &[],
            b""
        )
        .status,
        401
    );
    let _ = std::fs::remove_dir_all(&dir);
}
