//! `veneer render`: messages rendered with the same rules, campaigns and plugins as the web,
//! through `veneer::render::run` (what the command runs; `main` only maps its answer to the
//! exit status). Real plugins, a real host and origin for the web side of parity, and the
//! send ledger on disk across runs.

use std::collections::HashMap;

use serde_json::{Value, json};
use veneer::render::{RenderArgs, run};
use veneer::visitor::{COOKIE, CookieSigner, VisitorState};
use veneer_tests::{Host, HostSpec, Origin, Page, SECRET, TempDir, plugin};

const EMAIL: &str = r#"<!doctype html><html><head><title>News</title></head><body>
<h1>Winter gear that lasts</h1>
<section id="hero"><h2>Gear for every season</h2></section>
<p>See you soon.</p>
</body></html>
"#;

const FRAGMENTS: &str = r#"
[hero-new]
en = "<h2>Hello, new friend</h2>"
[hero-returning]
en = "<h2>Welcome back</h2>"
"#;

/// Rules with a live campaign on every channel, a Christmas campaign on e-mail and push only
/// that ends at a known instant, an experiment, and `caps`.
fn rules(caps: &Value, extra_campaigns: &[Value]) -> String {
    let mut campaigns = vec![
        json!({"id": "sale", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
               "priority": 1, "params": {"banner": "Big sale"}}),
        json!({"id": "xmas", "start": "2026-12-01T00:00:00+01:00", "end": "2026-12-27T00:00:00+01:00",
               "priority": 10, "segments": ["returning"], "tags": ["promo/xmas"],
               "params": {"banner": "Merry Christmas"}}),
    ];
    campaigns.extend(extra_campaigns.iter().cloned());
    json!({
        "timezone": "Europe/Oslo",
        "segments": {
            "new": {"visitCount": {"$lte": 1}},
            "returning": {"visitCount": {"$gt": 1}},
            "nordic": {"country": {"$in": ["NO", "SE"]}}
        },
        "experiments": [
            {"key": "headline", "variations": ["Control headline", "Variant headline"],
             "weights": [0.5, 0.5], "hashVersion": 2, "bucketVersion": 1,
             "meta": [{"key": "control"}, {"key": "variant"}]}
        ],
        "campaigns": campaigns,
        "caps": caps
    })
    .to_string()
}

struct Setup {
    dir: TempDir,
}

impl Setup {
    /// A config with `plugins` for tenant `shop`, its rules, and a data_dir for the ledger.
    fn new(rules: &str, plugins: &[(&str, &str)]) -> Setup {
        let dir = TempDir::new();
        std::fs::write(dir.0.join("rules.json"), rules).expect("rules");
        std::fs::write(dir.0.join("fragments.toml"), FRAGMENTS).expect("fragments");
        std::fs::write(dir.0.join("email.html"), EMAIL).expect("template");
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncookie_secret = \"{SECRET}\"\ncache_dir = \"{}\"\n\
             data_dir = \"{}\"\nanalytics_log = \"{}\"\n\n[[tenant]]\nname = \"shop\"\n\
             hosts = [\"shop.test\"]\norigin = \"http://127.0.0.1:9\"\nrules = \"rules.json\"\n\
             fragments = \"fragments.toml\"\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/veneer-test-cache")
                .display(),
            dir.0.join("data").display(),
            dir.0.join("analytics.jsonl").display(),
        );
        for (name, params) in plugins {
            config.push_str(&format!(
                "[[tenant.plugin]]\nname = \"{name}\"\npath = \"{}\"\nparams = {{ {params} }}\n",
                plugin(name).display()
            ));
        }
        std::fs::write(dir.0.join("veneer.toml"), config).expect("config");
        Setup { dir }
    }

    fn file(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let p = self.dir.0.join(name);
        std::fs::write(&p, contents).expect("write");
        p
    }

    /// Runs `veneer render`; the output lines and whether the exit status is 2.
    async fn render(
        &self,
        channel: &str,
        template: &str,
        recipients: &[Value],
        at: &str,
        extra: &[(&str, &str)],
    ) -> (Vec<Value>, bool) {
        let lines: Vec<String> = recipients.iter().map(Value::to_string).collect();
        let recipients = self.file("recipients.jsonl", &(lines.join("\n") + "\n"));
        self.render_file(channel, template, &recipients, at, extra)
            .await
    }

    async fn render_file(
        &self,
        channel: &str,
        template: &str,
        recipients: &std::path::Path,
        at: &str,
        extra: &[(&str, &str)],
    ) -> (Vec<Value>, bool) {
        let get = |k: &str| {
            extra
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        let args = RenderArgs {
            config: self.dir.0.join("veneer.toml"),
            tenant: "shop".into(),
            channel: channel.into(),
            template: self.dir.0.join(template),
            recipients: recipients.to_owned(),
            at: Some(at.into()),
            send_id: get("send-id"),
            format: get("format"),
            jobs: get("jobs").map_or(1, |j| j.parse().unwrap_or(1)),
        };
        let mut out = Vec::new();
        let bad = run(args, &mut out).await.expect("render runs");
        let text = String::from_utf8(out).expect("utf-8 output");
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        (lines, bad)
    }
}

fn recipient(id: &str, attributes: Value) -> Value {
    json!({"id": id, "consent": {"marketing": true}, "attributes": attributes})
}

fn statuses(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let s = l["status"].as_str().unwrap_or("?");
            match l["reason"].as_str() {
                Some(r) => format!("{s} {r}"),
                None => s.to_owned(),
            }
        })
        .collect()
}

const PLUGINS: &[(&str, &str)] = &[
    ("campaign-banner", ""),
    ("hero", "selector = \"#hero\""),
    ("headline-ab", ""),
];

#[tokio::test]
async fn an_email_is_the_web_page_for_the_same_visitor_on_every_channel() {
    let setup = Setup::new(&rules(&json!([]), &[]), PLUGINS);
    // The web: the same plugins and rules in front of an origin serving the template.
    let origin = Origin::start(HashMap::from([("/".to_owned(), Page::html(EMAIL))])).await;
    let config = std::fs::read_to_string(setup.dir.0.join("veneer.toml")).expect("config");
    let tenant = &config[config.find("[[tenant]]").unwrap_or(0)..];
    let rules_text = std::fs::read_to_string(setup.dir.0.join("rules.json")).expect("rules");
    let host = Host::start(
        HostSpec {
            // One test client sends a thousand requests: no per-client limit.
            config: &format!(
                "{}\n[tenant.limits]\nrequests_per_second_per_client = 0\n",
                tenant.replace("http://127.0.0.1:9", "{origin}")
            ),
            files: &[("rules.json", &rules_text), ("fragments.toml", FRAGMENTS)],
        },
        origin.addr,
    )
    .await;
    let signer = CookieSigner::new(SECRET.as_bytes());
    let client = reqwest::Client::new();
    let now = jiff::Timestamp::now().to_string();
    let now_secs = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
    let recipients: Vec<Value> = (0..1000)
        .map(|i| recipient(&format!("cust-{i}"), json!({"visitCount": 1 + i % 3})))
        .collect();
    let (lines, bad) = setup
        .render("email", "email.html", &recipients, &now, &[])
        .await;
    assert!(!bad);
    assert_eq!(lines.len(), 1000);
    let mut variants = std::collections::BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["status"], "rendered", "{line}");
        assert_eq!(line["id"], format!("cust-{i}"));
        // Seen a moment ago, so this request is not counted as another visit.
        let state = VisitorState {
            visits: 1 + u32::try_from(i % 3).unwrap_or(0),
            ..VisitorState::fresh(format!("cust-{i}"), now_secs)
        };
        let cookie = format!("{COOKIE}={}", signer.encode(&state));
        let web = client
            .get(host.url("/"))
            .header("host", "shop.test")
            .header("cookie", cookie)
            .send()
            .await
            .expect("web request")
            .text()
            .await
            .expect("web body");
        assert_eq!(line["body"].as_str(), Some(web.as_str()), "recipient {i}");
        assert!(web.contains("Big sale"));
        let a = &line["assignments"][0];
        assert_eq!(a["experiment"], "headline");
        let shown = if a["variation"] == 1 {
            "Variant headline"
        } else {
            "Control headline"
        };
        assert!(web.contains(shown), "{web}");
        variants.insert(a["variation"].to_string());
    }
    // Both groups are used: the recipient id is hashed, as a visitor id is.
    assert_eq!(variants.len(), 2);
    // The same recipients on push, app, kiosk and voice get the same decisions.
    // The hero plugin patches `/hero/segment` in JSON: the payload has a `hero` object.
    setup.file(
        "push.json",
        r#"{"aps":{"alert":{"title":"Hello"}},"hero":{}}"#,
    );
    for (channel, template) in [
        ("push", "push.json"),
        ("app", "push.json"),
        ("kiosk", "email.html"),
    ] {
        let (other, bad) = setup
            .render(channel, template, &recipients[..20], &now, &[])
            .await;
        assert!(!bad, "{channel}");
        for (a, b) in other.iter().zip(&lines) {
            assert_eq!(a["status"], "rendered", "{channel}: {a}");
            assert_eq!(a["campaigns"], b["campaigns"], "{channel}");
            if channel == "kiosk" {
                assert_eq!(a["body"], b["body"]);
            } else {
                let payload: Value =
                    serde_json::from_str(a["body"].as_str().unwrap_or("")).expect("JSON");
                assert_eq!(payload["campaign"]["banner"], "Big sale", "{channel}");
            }
        }
    }
}

#[tokio::test]
async fn campaigns_start_and_end_at_the_same_instant_on_every_channel() {
    let xmas_everywhere = json!({"id": "xmas-all", "start": "2026-12-01T00:00:00Z",
        "end": "2026-12-27T00:00:00Z", "priority": 50, "params": {"banner": "Christmas everywhere"}});
    let setup = Setup::new(
        &rules(&json!([]), &[xmas_everywhere]),
        &[("campaign-banner", "")],
    );
    setup.file("push.json", r#"{"aps":{"alert":{"title":"Hello"}}}"#);
    setup.file("voice.ssml", "<speak><p>Hello.</p></speak>");
    let who = [recipient("r1", json!({}))];
    for (channel, template) in [
        ("email", "email.html"),
        ("kiosk", "email.html"),
        ("push", "push.json"),
        ("app", "push.json"),
        ("voice", "voice.ssml"),
    ] {
        let (before, _) = setup
            .render(channel, template, &who, "2026-12-26T23:59:59.999Z", &[])
            .await;
        let (after, _) = setup
            .render(channel, template, &who, "2026-12-27T00:00:00Z", &[])
            .await;
        assert_eq!(
            before[0]["campaigns"][0], "xmas-all",
            "{channel}: {}",
            before[0]
        );
        assert!(
            !after[0]["campaigns"].to_string().contains("xmas-all"),
            "{channel}"
        );
        if channel != "voice" {
            let (b, a) = (before[0]["body"].to_string(), after[0]["body"].to_string());
            assert!(b.contains("Christmas everywhere"), "{channel}: {b}");
            assert!(
                !a.contains("Christmas everywhere") && a.contains("Big sale"),
                "{channel}: {a}"
            );
        }
    }
}

#[tokio::test]
async fn caps_hold_across_channels_runs_and_workers() {
    let caps = json!([
        {"id": "push-week", "channel": "push", "max": 2, "per": {"count": 1, "unit": "week"}, "window": "calendar"},
        {"id": "email-day", "channel": "email", "max": 1, "per": {"count": 1, "unit": "day"}, "window": "calendar"},
        {"id": "push-day", "channel": "push", "max": 1, "per": {"count": 1, "unit": "day"}, "window": "calendar"}
    ]);
    let notice = json!({"id": "notice", "start": "2026-01-01T00:00:00Z", "end": "2027-06-01T00:00:00Z",
        "priority": 100, "channels": ["push"], "segments": ["nordic"],
        "counts_toward_caps": false, "params": {"banner": "Service notice"}});
    let setup = Setup::new(&rules(&caps, &[notice]), &[("campaign-banner", "")]);
    setup.file("push.json", r#"{"aps":{"alert":{"title":"Hello"}}}"#);
    let r = [recipient("r1", json!({"visitCount": 3}))];
    let send = |at: &'static str, id: &'static str| (at, id);
    // ≤ 2 push a week: Monday and Wednesday sent, Thursday capped (7–10 December 2026).
    let mut got = Vec::new();
    for (at, id) in [
        send("2026-12-07T09:00:00Z", "mon"),
        send("2026-12-09T09:00:00Z", "wed"),
        send("2026-12-10T09:00:00Z", "thu"),
    ] {
        let (lines, _) = setup
            .render("push", "push.json", &r, at, &[("send-id", id)])
            .await;
        got.push(statuses(&lines)[0].clone());
    }
    assert_eq!(got, ["rendered", "rendered", "capped cap:push-week"]);
    // A push+e-mail campaign against ≤ 1 push/day and ≤ 1 e-mail/day: the e-mail goes the
    // same day as a push, a second e-mail that day does not.
    let (e1, _) = setup
        .render(
            "email",
            "email.html",
            &r,
            "2026-12-09T10:00:00Z",
            &[("send-id", "e1")],
        )
        .await;
    let (e2, _) = setup
        .render(
            "email",
            "email.html",
            &r,
            "2026-12-09T18:00:00Z",
            &[("send-id", "e2")],
        )
        .await;
    assert_eq!(statuses(&e1), ["rendered"]);
    assert_eq!(statuses(&e2), ["capped cap:email-day"]);
    assert!(e1[0]["campaigns"].to_string().contains("xmas"));
    // An exempt campaign (counts_toward_caps = false) is sent and not counted: a Nordic
    // recipient gets the notice on Monday 14th, and the normal push that follows still goes.
    let nordic = [recipient("r2", json!({"country": "NO"}))];
    let (n1, _) = setup
        .render(
            "push",
            "push.json",
            &nordic,
            "2026-12-14T08:00:00Z",
            &[("send-id", "n1")],
        )
        .await;
    assert_eq!(n1[0]["campaigns"][0], "notice");
    let plain = [recipient("r2", json!({}))];
    let (n2, _) = setup
        .render(
            "push",
            "push.json",
            &plain,
            "2026-12-14T09:00:00Z",
            &[("send-id", "n2")],
        )
        .await;
    assert_eq!(statuses(&n1), ["rendered"]);
    assert_eq!(statuses(&n2), ["rendered"], "the exempt notice was counted");
    // A re-run of the same send does not count twice (nor cap itself).
    let (again, _) = setup
        .render(
            "push",
            "push.json",
            &plain,
            "2026-12-14T09:00:00Z",
            &[("send-id", "n2")],
        )
        .await;
    assert_eq!(statuses(&again), ["rendered"]);
}

#[tokio::test]
async fn calendar_days_are_local_and_rolling_windows_are_not() {
    for (window, second) in [
        ("calendar", "rendered"),
        ("rolling", "capped cap:one-a-day"),
    ] {
        let caps = json!([{"id": "one-a-day", "channel": "any", "max": 1,
            "per": {"count": 1, "unit": "day"}, "window": window}]);
        let setup = Setup::new(&rules(&caps, &[]), &[("campaign-banner", "")]);
        // 23:00 and 00:00 in Oslo (UTC+1 in December), the recipient's own zone.
        let r = [recipient("r1", json!({"tz": "Europe/Oslo"}))];
        let (a, _) = setup
            .render(
                "email",
                "email.html",
                &r,
                "2026-12-09T22:00:00Z",
                &[("send-id", "a")],
            )
            .await;
        let (b, _) = setup
            .render(
                "email",
                "email.html",
                &r,
                "2026-12-09T23:00:00Z",
                &[("send-id", "b")],
            )
            .await;
        assert_eq!(statuses(&a), ["rendered"], "{window}");
        assert_eq!(statuses(&b), [second], "{window}");
        // In New York the same two instants are one local day (17:00 and 18:00).
        let ny = [recipient("r9", json!({"tz": "America/New_York"}))];
        let (a, _) = setup
            .render(
                "push",
                "email.html",
                &ny,
                "2026-12-09T22:00:00Z",
                &[("send-id", "a"), ("format", "html")],
            )
            .await;
        let (b, _) = setup
            .render(
                "push",
                "email.html",
                &ny,
                "2026-12-09T23:00:00Z",
                &[("send-id", "b"), ("format", "html")],
            )
            .await;
        assert_eq!(statuses(&a), ["rendered"]);
        assert_eq!(statuses(&b), ["capped cap:one-a-day"], "{window}");
    }
}

#[tokio::test]
async fn the_output_is_the_same_whatever_the_number_of_workers() {
    let caps = json!([{"id": "two-a-week", "channel": "any", "max": 2,
        "per": {"count": 1, "unit": "week"}, "window": "calendar"}]);
    let mut outputs = Vec::new();
    for jobs in ["1", "8"] {
        let setup = Setup::new(&rules(&caps, &[]), PLUGINS);
        // 100 recipients, each three times in the file: the third message of each is capped.
        let list: Vec<Value> = (0..300)
            .map(|i| recipient(&format!("r{}", i % 100), json!({"visitCount": 1 + i % 2})))
            .collect();
        let (lines, bad) = setup
            .render(
                "email",
                "email.html",
                &list,
                "2026-12-10T09:00:00Z",
                &[("jobs", jobs), ("send-id", "weekly")],
            )
            .await;
        assert!(!bad);
        // One send id: the second line of a recipient in the same send is the same message.
        let capped = lines.iter().filter(|l| l["status"] == "capped").count();
        assert_eq!(capped, 0, "one send counts once per recipient");
        let again: Vec<Value> = (0..100)
            .map(|i| recipient(&format!("r{i}"), json!({})))
            .collect();
        let (second, _) = setup
            .render(
                "email",
                "email.html",
                &again,
                "2026-12-10T10:00:00Z",
                &[("jobs", jobs), ("send-id", "second")],
            )
            .await;
        let (third, _) = setup
            .render(
                "email",
                "email.html",
                &again,
                "2026-12-10T11:00:00Z",
                &[("jobs", jobs), ("send-id", "third")],
            )
            .await;
        assert!(second.iter().all(|l| l["status"] == "rendered"));
        assert!(
            third.iter().all(|l| l["status"] == "capped"),
            "{:?}",
            statuses(&third)
        );
        outputs.push((lines, second, third));
    }
    assert_eq!(outputs[0], outputs[1], "--jobs 1 and --jobs 8 differ");
}

#[tokio::test]
async fn consent_bad_lines_payload_limits_and_faulty_plugins() {
    let setup = Setup::new(
        &rules(&json!([]), &[]),
        &[("campaign-banner", ""), ("chaos", "mode = \"trap\"")],
    );
    let recipients = setup.file(
        "mixed.jsonl",
        &[
            json!({"id": "ok", "consent": {"marketing": true}}).to_string(),
            json!({"id": "no", "consent": {"marketing": false}}).to_string(),
            "{not json".to_owned(),
            json!({"id": "ok2", "consent": {"marketing": true}}).to_string(),
        ]
        .join("\n"),
    );
    let (lines, bad) = setup
        .render_file(
            "email",
            "email.html",
            &recipients,
            "2026-12-10T09:00:00Z",
            &[],
        )
        .await;
    assert!(bad, "an invalid line makes the exit status 2");
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["status"], "rendered");
    // The trapping plugin is left out; the banner is still there.
    assert_eq!(lines[0]["faults"], json!(["chaos"]));
    assert!(lines[0]["body"].as_str().unwrap_or("").contains("Big sale"));
    assert_eq!(statuses(&lines[1..2]), ["skipped no_consent"]);
    assert_eq!(lines[2]["status"], "fault");
    assert!(
        lines[2]["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("line 3:"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3]["id"], "ok2");
    // An APNs payload over 4 KB is too large, never truncated; exit status 2.
    let big = format!(
        r#"{{"aps":{{"alert":{{"title":"{}"}}}}}}"#,
        "x".repeat(5000)
    );
    setup.file("big.json", &big);
    let (lines, bad) = setup
        .render(
            "push",
            "big.json",
            &[recipient("p", json!({}))],
            "2026-12-10T09:00:00Z",
            &[("format", "apns")],
        )
        .await;
    assert!(bad);
    assert_eq!(lines[0]["status"], "too_large");
    assert!(lines[0]["body"].is_null());
    // SSML has a character limit.
    setup.file("long.ssml", &format!("<speak>{}</speak>", "a".repeat(8000)));
    let (lines, bad) = setup
        .render(
            "voice",
            "long.ssml",
            &[recipient("v", json!({}))],
            "2026-12-10T09:00:00Z",
            &[],
        )
        .await;
    assert!(bad);
    assert_eq!(lines[0]["status"], "too_large");
}

const SLOT_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="300" height="80" data-href="/offers/{{campaign:id}}">
<rect width="300" height="80" fill="#0b6e3d"/>
<text id="greeting" x="10" y="30" font-size="18" fill="#fff">Hi {{attr:customer.firstName}}</text>
<text x="10" y="60" font-size="14" fill="#fff">{{campaign:name}}: {{campaign:countdown}} left</text>
</svg>"##;

/// A host serving e-mail slots for tenant `shop`, with `plugins` (`extra` in `[server]`); the
/// fallback image is [`veneer::email::BLANK_PNG`], written to the returned directory.
async fn open_host(plugins: &str, extra: &str) -> (Origin, Host, TempDir) {
    let origin = Origin::start(HashMap::new()).await;
    let images = TempDir::new();
    let fallback = images.0.join("fallback.png");
    std::fs::write(&fallback, veneer::email::BLANK_PNG).expect("fallback");
    let rules = json!({
        "campaigns": [{"id": "sale", "name": "Winter sale", "start": "2020-01-01T00:00:00Z",
                       "end": "2099-01-01T00:00:00Z", "params": {"banner": "Big sale"}}]
    })
    .to_string();
    let config = format!(
        "[[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\"]\norigin = \"{{origin}}\"\nrules = \"rules.json\"\n\
         [[tenant.goal]]\nname = \"purchase\"\nevent = \"purchase\"\n\
         [[tenant.email_slot]]\nname = \"hero\"\nsvg = \"hero.svg\"\nfallback = \"{}\"\nlink = \"/sale\"\n{plugins}",
        fallback.display()
    );
    // A data_dir, so opens and clicks reach the ledger behind the campaign report.
    let extra = format!(
        "data_dir = \"{}\"\n{extra}",
        images.0.join("data").display()
    );
    let host = Host::start_with_server(
        HostSpec {
            config: &config,
            files: &[("rules.json", &rules), ("hero.svg", SLOT_SVG)],
        },
        origin.addr,
        &extra,
    )
    .await;
    (origin, host, images)
}

fn token_for(host: &Host, recipient: &str, attributes: Value) -> String {
    let Value::Object(attributes) = attributes else {
        return String::new();
    };
    veneer::email::Token::new(
        "shop",
        recipient,
        "send-1",
        &attributes,
        jiff::Timestamp::now(),
    )
    .sign(&host.app.signer)
}

#[tokio::test]
async fn render_puts_each_recipients_token_in_the_template() {
    let setup = Setup::new(&rules(&json!([]), &[]), &[("campaign-banner", "")]);
    setup.file(
        "tokens.html",
        r#"<html><body><a href="https://shop.test/_veneer/c/{{veneer:token}}/hero"><img src="https://shop.test/_veneer/i/{{veneer:token}}/hero.png"></a></body></html>"#,
    );
    let (lines, _) = setup
        .render(
            "email",
            "tokens.html",
            &[recipient("c1", json!({"customer": {"firstName": "Ada"}}))],
            "2026-12-10T09:00:00Z",
            &[("send-id", "s9")],
        )
        .await;
    let body = lines[0]["body"].as_str().unwrap_or("");
    assert!(!body.contains("{{veneer:token}}"), "{body}");
    let token = body
        .split("/_veneer/i/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let config = veneer::config::Config::load(&setup.dir.0.join("veneer.toml")).expect("config");
    let app = veneer::app::App::build(&config).expect("app");
    let t = veneer::email::Token::verify(&app.signer, token, "shop", 1_796_893_200)
        .expect("the token in the e-mail verifies");
    assert_eq!((t.recipient.as_str(), t.send_id.as_str()), ("c1", "s9"));
    assert_eq!(t.attributes["customer"]["firstName"], "Ada");
    assert!(
        !body.contains("Ada"),
        "the e-mail URL carries a token, not the attributes in clear"
    );
}

#[tokio::test]
async fn email_images_are_drawn_at_open_time_and_never_fail() {
    let (_origin, host, _images) = open_host(
        "[[tenant.plugin]]\nname = \"static-rewrites\"\npath = \"{plugins}/static_rewrites.wasm\"\n\
         params = { rule1 = \"#greeting | set-attribute | fill=#ffd700\" }\n",
        "",
    )
    .await;
    let client = reqwest::Client::new();
    let token = token_for(&host, "c1", json!({"customer": {"firstName": "Ada"}}));
    let get = |path: String| {
        client
            .get(host.url(&path))
            .header("host", "shop.test")
            .header("user-agent", "Mozilla/5.0 Thunderbird/128.0")
    };
    let r = get(format!("/_veneer/i/{token}/hero.png"))
        .send()
        .await
        .expect("image");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["cache-control"], "no-cache, max-age=0");
    let png = r.bytes().await.expect("bytes");
    assert!(png.starts_with(b"\x89PNG"));
    assert_ne!(
        &png[..],
        veneer::email::BLANK_PNG,
        "drawn, not the fallback"
    );
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts/email");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    std::fs::write(artifacts.join("slot-hero-ada.png"), &png).expect("save the drawn slot");
    // The same recipient and values draw the same image (cached by the SVG's hash); another
    // recipient's name draws another.
    let again = get(format!("/_veneer/i/{token}/hero.png"))
        .send()
        .await
        .expect("image")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(png, again);
    let bob = token_for(&host, "c2", json!({"customer": {"firstName": "Bob"}}));
    let other = get(format!("/_veneer/i/{bob}/hero.png"))
        .send()
        .await
        .expect("image")
        .bytes()
        .await
        .expect("bytes");
    assert_ne!(png, other);
    // A click lands where the drawn slot links: the live campaign's page.
    let r = shop_get(&host, &format!("/_veneer/c/{token}/hero")).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/offers/sale");
    // Tampered, truncated and foreign tokens: always a 200 image, never an open.
    let signer = CookieSigner::new(b"another-host-secret-0123456789abcdef");
    let foreign = veneer::email::Token::new(
        "shop",
        "c1",
        "s",
        &serde_json::Map::new(),
        jiff::Timestamp::now(),
    )
    .sign(&signer);
    let mut bad = vec![
        foreign,
        String::new(),
        "x".into(),
        token[..token.len() / 2].to_owned(),
    ];
    for i in 0..10_000usize {
        let mut t = token.clone().into_bytes();
        let at = i % t.len();
        t[at] = if t[at] == b'A' { b'B' } else { b'A' };
        bad.push(String::from_utf8_lossy(&t).into_owned());
    }
    for t in &bad {
        let r = get(format!("/_veneer/i/{t}/hero.png"))
            .send()
            .await
            .expect("image");
        assert_eq!(r.status(), 200, "{t}");
        assert_eq!(r.headers()["content-type"], "image/png");
        assert_eq!(
            &r.bytes().await.expect("bytes")[..],
            veneer::email::BLANK_PNG
        );
    }
    let events = host.events(4).await;
    let opens = events.iter().filter(|e| e["event"] == "email_open").count();
    assert_eq!(opens, 3, "only the three genuine opens are logged");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "email_click" && e["properties"]["target"] == "/offers/sale")
    );
}

#[tokio::test]
async fn a_faulty_plugin_or_a_slow_slot_gives_the_fallback_image() {
    let (_origin, host, _images) = open_host(
        "[[tenant.plugin]]\nname = \"chaos\"\npath = \"{plugins}/chaos.wasm\"\nparams = { mode = \"trap\" }\n",
        "",
    )
    .await;
    let token = token_for(&host, "c1", json!({}));
    let r = shop_get(&host, &format!("/_veneer/i/{token}/hero.gif")).await;
    assert_eq!(r.status(), 200);
    // The bytes are PNG, and the type says so whatever the URL's extension.
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(
        &r.bytes().await.expect("bytes")[..],
        veneer::email::BLANK_PNG
    );
    // Once the plugin's breaker opens it is skipped, not run: still the fallback, never an
    // image drawn without it.
    for _ in 0..30 {
        let r = shop_get(&host, &format!("/_veneer/i/{token}/hero.png")).await;
        assert_eq!(
            &r.bytes().await.expect("bytes")[..],
            veneer::email::BLANK_PNG
        );
    }
    let metrics = host.app.metrics.render();
    assert!(
        metrics.contains("reason=\"breaker_open\""),
        "the breaker never opened"
    );
    // An unknown slot is still an image.
    let r = shop_get(&host, &format!("/_veneer/i/{token}/nope.png")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
}

#[tokio::test]
async fn the_five_kinds_of_image_hits_are_told_apart_and_only_two_count() {
    let (_origin, host, _images) = open_host(
        "",
        "trusted_proxies = [\"127.0.0.1/32\"]\napple_mpp_cidrs = [\"17.58.0.0/16\"]",
    )
    .await;
    let token = token_for(&host, "c1", json!({}));
    let url = host.url(&format!("/_veneer/i/{token}/hero.png"));
    let client = reqwest::Client::new();
    let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
    let gmail =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    // Method, agent, extra headers, how many.
    type Hit<'a> = (reqwest::Method, &'a str, Vec<(&'a str, &'a str)>, usize);
    let hits: Vec<Hit> = vec![
        (reqwest::Method::GET, chrome, vec![], 3),
        (reqwest::Method::GET, gmail, vec![], 2),
        (
            reqwest::Method::GET,
            gmail,
            vec![("x-purpose", "preview")],
            4,
        ),
        (
            reqwest::Method::GET,
            chrome,
            vec![("x-forwarded-for", "17.58.3.4")],
            5,
        ),
        (reqwest::Method::HEAD, chrome, vec![], 1),
        (reqwest::Method::GET, "Barracuda Sentinel (EE)", vec![], 1),
    ];
    let mut total = 0;
    for (method, agent, headers, n) in &hits {
        for _ in 0..*n {
            let mut req = client
                .request(method.clone(), &url)
                .header("host", "shop.test")
                .header("user-agent", *agent);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let r = req.send().await.expect("hit");
            assert_eq!(r.status(), 200);
            total += 1;
        }
    }
    let events = host.events(total).await;
    let mut kinds: HashMap<String, (usize, usize)> = HashMap::new();
    for e in events.iter().filter(|e| e["event"] == "email_open") {
        let entry = kinds
            .entry(e["properties"]["kind"].as_str().unwrap_or("?").to_owned())
            .or_default();
        entry.0 += 1;
        if e["properties"]["counted"] == "true" {
            entry.1 += 1;
        }
    }
    let expect: HashMap<String, (usize, usize)> = [
        ("human", (3, 3)),
        ("gmail_proxy", (2, 2)),
        ("gmail_prefetch", (4, 0)),
        ("apple_mpp", (5, 0)),
        ("scanner", (2, 0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(kinds, expect);
    // The campaign report counts the five counted opens, on the e-mail channel, and a click.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(host.url(&format!("/_veneer/c/{token}/hero")))
        .header("host", "shop.test")
        .header("user-agent", chrome)
        .send()
        .await
        .expect("click");
    assert_eq!(r.status(), 302);
    let report = veneer::report::campaign(&host.app, "shop", "sale", "purchase").expect("report");
    assert_eq!(
        (report["opens"].as_u64(), report["clicks"].as_u64()),
        (Some(5), Some(1)),
        "{report}"
    );
    let email = report["by_channel"]
        .as_array()
        .and_then(|c| c.iter().find(|p| p["key"] == "email"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (email["opens"].as_u64(), email["clicks"].as_u64()),
        (Some(5), Some(1)),
        "{report}"
    );
}

/// A GET of `path` on tenant `shop`, redirects not followed.
async fn shop_get(host: &Host, path: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(host.url(path))
        .header("host", "shop.test")
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn a_replayed_token_is_drawn_at_the_tenants_rate_then_gets_the_fallback() {
    let (_origin, host, _images) = open_host(
        "[tenant.limits]\nemail_draws_per_minute_per_token = 2\n",
        "",
    )
    .await;
    let ada = token_for(&host, "c1", json!({}));
    let image = |token: &str| format!("/_veneer/i/{token}/hero.png");
    for _ in 0..2 {
        let png = shop_get(&host, &image(&ada))
            .await
            .bytes()
            .await
            .expect("png");
        assert_ne!(&png[..], veneer::email::BLANK_PNG, "drawn");
    }
    // Past the rate: still a 200 image, the slot's fallback, and no plugin run for it.
    let r = shop_get(&host, &image(&ada)).await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["content-type"].to_str().ok()
        ),
        (200, Some("image/png"))
    );
    assert!(
        r.bytes().await.expect("png")[..] == *veneer::email::BLANK_PNG,
        "the fallback"
    );
    // A click is not drawn either: it goes to the slot's own link, not the drawn one
    // (`/offers/sale`).
    let r = shop_get(&host, &format!("/_veneer/c/{ada}/hero")).await;
    assert_eq!(
        (r.status().as_u16(), r.headers()["location"].to_str().ok()),
        (302, Some("/sale"))
    );
    // Another recipient of the same send has a bucket of their own.
    let bob = token_for(&host, "c2", json!({}));
    let png = shop_get(&host, &image(&bob))
        .await
        .bytes()
        .await
        .expect("png");
    assert_ne!(
        &png[..],
        veneer::email::BLANK_PNG,
        "bob's first open is drawn"
    );
    let m = &host.app.metrics;
    let limited = |path| {
        m.get(
            "veneer_email_draws_limited_total",
            &[("tenant", "shop"), ("path", path)],
        )
    };
    assert_eq!(
        (limited("image"), limited("click")),
        (1, 1),
        "{}",
        m.render()
    );
    assert_eq!(
        m.get(
            "veneer_email_images_total",
            &[("tenant", "shop"), ("result", "limited")]
        ),
        1
    );
    // A replay past the rate is not logged as an open (nor its click): only the three drawn.
    let events = host.events(3).await;
    let opens = events.iter().filter(|e| e["event"] == "email_open").count();
    let clicks = events
        .iter()
        .filter(|e| e["event"] == "email_click")
        .count();
    assert_eq!((opens, clicks), (3, 0), "{events:?}");
}
