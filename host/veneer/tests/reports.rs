//! The marketer's loop against the real `veneer` binary: visitors exposed to an experiment by
//! a golden plugin, conversions from the beacon and from a goal path, attribution, and the
//! report through `veneer report` — before and after a graceful restart.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Answer, free_port, origin, send};

const OPERATOR: &str = "operator-secret-0123456789";

struct Veneer {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Veneer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Veneer {
    /// SIGTERM, and the exit status of the graceful stop.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait")
    }
}

fn start(dir: &Path, origin: SocketAddr) -> Veneer {
    let (listen, admin) = (free_port(), free_port());
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/v0.2.0");
    let plugin = golden.join("headline_ab.wasm");
    let banner = golden.join("campaign_banner.wasm");
    std::fs::write(
        dir.join("rules.json"),
        r#"{"experiments": [{"key": "headline", "variations": ["Old", "New"], "weights": [0.5, 0.5],
            "meta": [{"key": "control"}, {"key": "new"}]}],
            "segments": {"mobile": {"device": "mobile"}},
            "campaigns": [{"id": "xmas", "name": "Christmas", "start": "2026-12-01T00:00:00Z",
                "end": "2026-12-24T23:00:00Z", "priority": 10, "params": {"banner": "Merry Christmas"}},
              {"id": "sale", "name": "Sale", "start": "2026-01-01T00:00:00Z",
                "end": "2027-12-31T00:00:00Z", "priority": 1, "cost": 100, "frequency_cap": 2,
                "attribution_days": 7, "params": {"banner": "Sale now on"}},
              {"id": "loyalty", "name": "Loyalty", "start": "2026-01-01T00:00:00Z",
                "end": "2027-12-31T00:00:00Z", "holdout": 0.5, "params": {"discount": "5"}},
              {"id": "kiosk-deal", "name": "Kiosk deal", "start": "2026-01-01T00:00:00Z",
                "end": "2027-12-31T00:00:00Z", "priority": 5, "channels": ["kiosk"],
                "params": {"banner": "Scan for a deal"}}]}"#,
    )
    .expect("rules");
    let config = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{data}\"\n\
         cookie_secret = \"0123456789abcdef0123456789abcdef\"\ncache_dir = \"{cache}\"\n\n\
         [[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\"]\norigin = \"http://{origin}\"\n\
         rules = \"rules.json\"\n\
         [tenant.limits]\nrequests_per_second_per_client = 0\n\
         [[tenant.channel_rule]]\nname = \"kiosk\"\nheader = \"x-channel\"\nvalue = \"kiosk\"\n\
         [[tenant.goal]]\nname = \"purchase\"\nevent = \"purchase\"\ncurrency = \"EUR\"\n\
         [[tenant.goal]]\nname = \"thank-you\"\npath = \"/checkout/thank-*\"\nvalue = 5\n\
         [[tenant.plugin]]\nname = \"headline\"\npath = \"{plugin}\"\n\
         params = {{ experiment = \"headline\", path = \"/\" }}\n\
         [[tenant.plugin]]\nname = \"banner\"\npath = \"{banner}\"\nparams = {{ selector = \"#a\" }}\n",
        data = dir.join("data").display(),
        cache = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/veneer-test-cache")
            .display(),
        plugin = plugin.display(),
        banner = banner.display(),
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
        child,
        listen,
        admin,
    };
    let started = Instant::now();
    while send(v.admin, "GET", "/readyz", "admin.test", &[], b"").status != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    v
}

/// A visitor: the cookie the host gave them and the variation they saw.
struct Visitor {
    cookie: String,
    variation: String,
}

fn visit(v: &Veneer, ua: &str) -> Visitor {
    let a = send(
        v.listen,
        "GET",
        "/",
        "shop.test",
        &[("user-agent", ua)],
        b"",
    );
    assert_eq!(a.status, 200, "{}", a.head);
    let cookie = cookie_of(&a).expect("the visitor cookie");
    let variation = a
        .header("x-veneer-experiment")
        .and_then(|h| h.strip_prefix("headline=").map(str::to_owned))
        .expect("in the experiment");
    Visitor { cookie, variation }
}

fn event(v: &Veneer, cookie: &str, body: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("cookie", cookie), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    send(
        v.listen,
        "POST",
        "/_veneer/event",
        "shop.test",
        &headers,
        body.as_bytes(),
    )
}

fn report(v: &Veneer, goal: &str) -> serde_json::Value {
    report_of(v, &["--experiment", "headline", "--goal", goal])
}

/// `veneer report ... --json` for the shop.
fn report_of(v: &Veneer, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args(["report", "--tenant", "shop", "--json"])
        .args(args)
        .env("VENEER_ADMIN_URL", format!("http://{}", v.admin))
        .env("VENEER_ADMIN_TOKEN", OPERATOR)
        .output()
        .expect("veneer report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

/// The visitor cookie a response issued, as a `Cookie` header value.
fn cookie_of(a: &Answer) -> Option<String> {
    a.header("set-cookie")
        .and_then(|c| c.split(';').next().map(str::to_owned))
}

/// A fresh folder for one test: the tests run in parallel, so each has its own (a shared one
/// was removed by one test while the other was starting in it).
fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veneer-reports-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0";
const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";
const BOT: &str = "Googlebot/2.1 (+http://www.google.com/bot.html)";

#[test]
fn conversions_are_attributed_to_the_variation_seen_and_reports_survive_a_restart() {
    let dir = data_dir("experiments");
    let origin = origin();
    let v = start(&dir, origin);

    // A purchase before any exposure counts for nobody's variation.
    let early = send(v.listen, "GET", "/about", "shop.test", &[], b"");
    let early_cookie = cookie_of(&early).expect("cookie");
    assert_eq!(
        event(
            &v,
            &early_cookie,
            r#"{"event": "purchase", "value": 99}"#,
            &[]
        )
        .status,
        204
    );

    let visitors: Vec<Visitor> = (0..40)
        .map(|i| visit(&v, if i % 4 == 0 { MOBILE } else { DESKTOP }))
        .collect();
    let bot = visit(&v, BOT);
    // The early visitor is exposed now, after their purchase.
    let early_exposed = send(
        v.listen,
        "GET",
        "/",
        "shop.test",
        &[("cookie", &early_cookie)],
        b"",
    );
    assert_eq!(early_exposed.status, 200);

    // Every third visitor buys (one of them twice); a repeat visit does not expose again.
    let mut expected: std::collections::HashMap<String, (u64, f64, u64)> = Default::default();
    for (i, visitor) in visitors.iter().enumerate() {
        let e = expected.entry(visitor.variation.clone()).or_default();
        e.0 += 1;
        assert_eq!(visit_again(&v, visitor), visitor.variation, "sticky");
        if i % 3 == 0 {
            let a = event(
                &v,
                &visitor.cookie,
                r#"{"event": "purchase", "value": 20.5, "currency": "EUR", "properties": {"sku": "boots"}}"#,
                &[("origin", "http://shop.test")],
            );
            assert_eq!(a.status, 204, "{}", a.head);
            e.1 += 20.5;
            e.2 += 1;
            if i == 0 {
                assert_eq!(
                    event(
                        &v,
                        &visitor.cookie,
                        r#"{"event": "purchase", "value": 10}"#,
                        &[]
                    )
                    .status,
                    204
                );
                e.1 += 10.0;
            }
        }
    }
    assert_eq!(
        event(&v, &bot.cookie, r#"{"event": "purchase", "value": 1}"#, &[]).status,
        204
    );

    // What the beacon refuses.
    let first = &visitors[1].cookie;
    let refused = [
        (
            event(
                &v,
                first,
                r#"{"event": "purchase"}"#,
                &[("origin", "https://evil.test")],
            ),
            403,
        ),
        (
            event(
                &v,
                first,
                r#"{"event": "purchase", "visitor": "someone-else"}"#,
                &[],
            ),
            400,
        ),
        (event(&v, first, r#"{"event": ""}"#, &[]), 400),
        (
            event(
                &v,
                first,
                r#"{"event": "purchase", "currency": "euro"}"#,
                &[],
            ),
            400,
        ),
        (
            event(
                &v,
                first,
                &format!(
                    r#"{{"event": "purchase", "properties": {{"x": "{}"}}}}"#,
                    "y".repeat(5000)
                ),
                &[],
            ),
            413,
        ),
        (
            send(
                v.listen,
                "GET",
                "/_veneer/event",
                "shop.test",
                &[("cookie", first)],
                b"",
            ),
            405,
        ),
    ];
    for (i, (answer, status)) in refused.iter().enumerate() {
        assert_eq!(answer.status, *status, "case {i}: {}", answer.head);
    }
    // Without analytics consent the event is acknowledged and not recorded.
    let no_consent = format!("{first}; veneer_consent=personalization");
    assert_eq!(
        event(
            &v,
            &no_consent,
            r#"{"event": "purchase", "value": 1000}"#,
            &[]
        )
        .status,
        204
    );

    let check = |r: &serde_json::Value| {
        let rows = r["variations"].as_array().expect("variations");
        assert_eq!(rows.len(), 2, "{r}");
        for row in rows {
            let key = if row["variation"] == 0 {
                "control"
            } else {
                "new"
            };
            let (users, value, converted) = expected.get(key).copied().unwrap_or_default();
            // The early visitor was exposed too, but their purchase came before.
            let early = u64::from(
                early_exposed.header("x-veneer-experiment").as_deref()
                    == Some(&format!("headline={key}")),
            );
            assert_eq!(row["users"], users + early, "{key}: {r}");
            assert_eq!(row["conversions"], converted, "{key}: {r}");
            let got = row["value"].as_f64().unwrap_or(-1.0);
            assert!((got - value).abs() < 1e-9, "{key}: value {got} vs {value}");
        }
        assert_eq!(r["bots_excluded"], 1, "{r}");
        let stats = r["conversion_rate"].as_array().expect("stats");
        assert_eq!(stats.len(), 1);
        assert!(stats[0]["chance_to_win"].as_f64().is_some(), "{r}");
        let mobile = r["by_segment"]
            .as_array()
            .and_then(|s| s.iter().find(|g| g["segment"] == "mobile"))
            .expect("the mobile segment");
        let mobile_users: u64 = mobile["variations"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x["users"].as_u64()).sum())
            .unwrap_or(0);
        assert_eq!(mobile_users, 10, "{r}");
        assert_eq!(r["by_day"].as_array().map(Vec::len), Some(1), "{r}");
    };
    // Money in another currency than the goal's is not added to it.
    assert_eq!(
        event(
            &v,
            &visitors[1].cookie,
            r#"{"event": "purchase", "value": 70, "currency": "USD"}"#,
            &[]
        )
        .status,
        204
    );
    let before = report(&v, "purchase");
    check(&before);
    // Segment sizes count the same exposed visitors (the bot left out), each once.
    let sizes = report_of(&v, &["--segments"]);
    assert_eq!(sizes["segments"][0]["segment"], "mobile", "{sizes}");
    assert_eq!(sizes["segments"][0]["visitors"], 10, "{sizes}");
    assert_eq!(sizes["exposed_visitors"], 41, "{sizes}");
    let stats = &before["conversion_rate"][0];
    assert!(
        stats["p_value"].as_f64().is_some() && stats["chance_to_win"].as_f64().is_some(),
        "both engines' verdicts: {stats}"
    );

    // A goal reached by visiting a path, with its configured value; a reload is the same
    // conversion.
    for _ in 0..2 {
        let a = send(
            v.listen,
            "GET",
            "/checkout/thank-you",
            "shop.test",
            &[("cookie", &visitors[2].cookie)],
            b"",
        );
        assert_eq!(a.status, 200);
    }
    let thanks = report(&v, "thank-you");
    let converted: u64 = thanks["variations"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["conversions"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(converted, 1, "{thanks}");
    let value: f64 = thanks["variations"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["value"].as_f64()).sum())
        .unwrap_or(0.0);
    assert_eq!(value, 5.0, "counted once: {thanks}");

    // The table marketers read.
    let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args(["report", "--tenant", "shop", "--experiment", "headline"])
        .args(["--goal", "purchase", "--engine", "frequentist"])
        .args(["--url", &format!("http://{}", v.admin), "--token", OPERATOR])
        .output()
        .expect("veneer report");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("p-value") && table.contains("1 new") && table.contains("by segment"),
        "{table}"
    );

    // Previews: the page at an instant, as a variation, recording nothing.
    let preview = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
            .args(["admin", "preview", "create", "--tenant", "shop"])
            .args(args)
            .env("VENEER_ADMIN_URL", format!("http://{}", v.admin))
            .env("VENEER_ADMIN_TOKEN", OPERATOR)
            .output()
            .expect("veneer admin preview");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let today = send(
        v.listen,
        "GET",
        "/",
        "shop.test",
        &[("cookie", &visitors[3].cookie)],
        b"",
    );
    assert!(!today.body.contains("Merry Christmas"), "not started yet");
    let before_end = preview(&["--at", "2026-12-24T22:59:59Z", "--variation", "headline=1"]);
    let at_end = preview(&["--at", "2026-12-24T23:00:00Z", "--variation", "headline=0"]);
    assert!(before_end.starts_with("/?veneer_preview="), "{before_end}");
    let shown = send(v.listen, "GET", &before_end, "shop.test", &[], b"");
    assert_eq!(shown.status, 200, "{}", shown.head);
    assert!(shown.body.contains("Merry Christmas"), "{}", shown.body);
    assert_eq!(
        shown.header("x-veneer-experiment").as_deref(),
        Some("headline=new")
    );
    assert_eq!(
        shown.header("cache-control").as_deref(),
        Some("private, no-store")
    );
    assert!(
        shown.header("set-cookie").is_none(),
        "a preview is not a visit"
    );
    let ended = send(v.listen, "GET", &at_end, "shop.test", &[], b"");
    assert!(!ended.body.contains("Merry Christmas"), "{}", ended.body);
    assert_eq!(
        ended.header("x-veneer-experiment").as_deref(),
        Some("headline=control")
    );
    let mut tampered = before_end.clone();
    tampered.push('x');
    assert_eq!(
        send(v.listen, "GET", &tampered, "shop.test", &[], b"").status,
        403
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args([
            "admin",
            "preview",
            "create",
            "--tenant",
            "shop",
            "--variation",
            "headline=7",
        ])
        .env("VENEER_ADMIN_URL", format!("http://{}", v.admin))
        .env("VENEER_ADMIN_TOKEN", OPERATOR)
        .output()
        .expect("veneer admin preview");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("headline"));
    let after_previews = report(&v, "purchase");
    let users = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["variations"]
            .as_array()
            .map(|v| v.iter().map(|x| x["users"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        users(&after_previews),
        users(&before),
        "previews record nothing"
    );

    // A graceful stop keeps everything accepted, right up to the signal: a purchase posted
    // just before it is in the restarted host's report.
    let late = visitors
        .iter()
        .enumerate()
        .find(|(i, _)| i % 3 != 0)
        .map(|(_, v)| v)
        .expect("a visitor who has not bought");
    assert_eq!(
        event(
            &v,
            &late.cookie,
            r#"{"event": "purchase", "value": 7}"#,
            &[]
        )
        .status,
        204
    );
    let status = v.stop();
    assert!(status.success(), "{status:?}");
    let v = start(&dir, origin);
    let after = report(&v, "purchase");
    let total = |r: &serde_json::Value, field: &str| -> f64 {
        r["variations"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x[field].as_f64()).sum())
            .unwrap_or(0.0)
    };
    assert_eq!(
        total(&after, "conversions"),
        total(&before, "conversions") + 1.0
    );
    assert_eq!(total(&after, "value"), total(&before, "value") + 7.0);
    assert_eq!(total(&after, "users"), total(&before, "users"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn visit_again(v: &Veneer, visitor: &Visitor) -> String {
    let a = send(
        v.listen,
        "GET",
        "/",
        "shop.test",
        &[("cookie", &visitor.cookie)],
        b"",
    );
    a.header("x-veneer-experiment")
        .and_then(|h| h.strip_prefix("headline=").map(str::to_owned))
        .unwrap_or_default()
}

fn campaign_report(v: &Veneer, campaign: &str) -> serde_json::Value {
    report_of(v, &["--campaign", campaign, "--goal", "purchase"])
}

#[test]
fn campaigns_follow_the_channel_stop_at_their_cap_and_report_reach_conversions_and_roi() {
    let dir = data_dir("campaigns");
    let origin = origin();
    let v = start(&dir, origin);
    let shown = |a: &Answer| -> Option<String> {
        a.body
            .split("data-campaign=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned)
    };
    // The web sees the sale twice a day (its cap), then nothing.
    let first = send(v.listen, "GET", "/", "shop.test", &[], b"");
    assert_eq!(shown(&first).as_deref(), Some("sale"), "{}", first.body);
    let cookie = cookie_of(&first).expect("cookie");
    let mut cookie = cookie;
    let mut seen = vec![shown(&first)];
    for _ in 0..2 {
        let a = send(
            v.listen,
            "GET",
            "/",
            "shop.test",
            &[("cookie", &cookie)],
            b"",
        );
        seen.push(shown(&a));
        if let Some(c) = cookie_of(&a) {
            cookie = c;
        }
    }
    assert_eq!(
        seen,
        vec![Some("sale".to_owned()), Some("sale".to_owned()), None],
        "capped at 2 a day"
    );
    // A kiosk (by its header) gets the kiosk-only campaign, which the web never sees.
    let kiosk = send(
        v.listen,
        "GET",
        "/",
        "shop.test",
        &[("x-channel", "kiosk")],
        b"",
    );
    assert_eq!(
        shown(&kiosk).as_deref(),
        Some("kiosk-deal"),
        "{}",
        kiosk.body
    );
    // The capped visitor buys: the conversion counts for the sale (seen within 7 days).
    let a = event(&v, &cookie, r#"{"event": "purchase", "value": 30}"#, &[]);
    assert_eq!(a.status, 204);
    // Someone who never saw a campaign buys too (their first request is the beacon's).
    let stranger = send(
        v.listen,
        "POST",
        "/_veneer/event",
        "shop.test",
        &[("content-type", "application/json")],
        br#"{"event": "purchase", "value": 500}"#,
    );
    assert_eq!(stranger.status, 204);

    let sale = campaign_report(&v, "sale");
    assert_eq!(sale["impressions"], 2, "{sale}");
    assert_eq!(sale["reach"], 1, "{sale}");
    assert_eq!(sale["conversions"], 1, "{sale}");
    assert_eq!(sale["value"].as_f64(), Some(30.0), "{sale}");
    assert_eq!(sale["cost"].as_f64(), Some(100.0), "{sale}");
    assert!(
        (sale["roi"].as_f64().unwrap_or(0.0) + 0.7).abs() < 1e-9,
        "{sale}"
    );
    let channels: Vec<&str> = sale["by_channel"]
        .as_array()
        .map(|c| c.iter().filter_map(|r| r["key"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(channels, vec!["web"], "{sale}");
    let kiosk_deal = campaign_report(&v, "kiosk-deal");
    assert_eq!(kiosk_deal["impressions"], 1, "{kiosk_deal}");
    assert_eq!(kiosk_deal["conversions"], 0, "{kiosk_deal}");
    assert!(kiosk_deal["roi"].is_null(), "no cost, no ROI");

    // A holdout campaign: every eligible visitor is recorded in a group, half never see it,
    // and the report compares the groups. 30 more visitors, every third one buying.
    let mut buyers = 0;
    for i in 0..30 {
        let a = send(v.listen, "GET", "/", "shop.test", &[], b"");
        let c = cookie_of(&a).expect("cookie");
        if i % 3 == 0 {
            assert_eq!(
                event(&v, &c, r#"{"event": "purchase", "value": 10}"#, &[]).status,
                204
            );
            buyers += 1;
        }
    }
    let loyalty = campaign_report(&v, "loyalty");
    let groups = loyalty["holdout"]["groups"].as_array().expect("groups");
    let users: Vec<u64> = groups.iter().filter_map(|g| g["users"].as_u64()).collect();
    // The 30, the capped visitor and the kiosk: every page request above saw the campaign
    // list (the stranger only posted an event).
    assert_eq!(users.iter().sum::<u64>(), 32, "{loyalty}");
    assert!(
        users.iter().all(|u| *u > 0),
        "both groups hold visitors: {loyalty}"
    );
    let converted: u64 = groups
        .iter()
        .filter_map(|g| g["conversions"].as_u64())
        .sum();
    assert_eq!(
        converted,
        buyers + 1,
        "the capped visitor bought too: {loyalty}"
    );
    assert!(
        loyalty["holdout"]["conversion_rate"][0]["chance_to_win"].is_number(),
        "{loyalty}"
    );
    assert_eq!(loyalty["impressions"], 0, "nothing shows it: {loyalty}");

    let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args([
            "report",
            "--tenant",
            "shop",
            "--campaign",
            "sale",
            "--goal",
            "purchase",
        ])
        .env("VENEER_ADMIN_URL", format!("http://{}", v.admin))
        .env("VENEER_ADMIN_TOKEN", OPERATOR)
        .output()
        .expect("veneer report");
    let table = String::from_utf8_lossy(&out.stdout);
    // By now the sale also brought the holdout test's 10 buyers of 10: (30 + 100 − 100) ÷ 100.
    assert!(table.contains("return on investment +30.0%"), "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}
