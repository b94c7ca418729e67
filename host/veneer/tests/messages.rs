//! `veneer render` as scripts drive it (the real binary: its arguments, stdout, stderr and exit
//! status), and the e-mails it renders for two segments opened in Debian's headless Chromium
//! with the open-time image served by a running `veneer serve`. Screenshots land in
//! `target/artifacts/email/`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{Killed, browser, wait_for};
use common::{free_port, origin, send};
use fantoccini::Locator;
use serde_json::{Value, json};

const SLOT: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="300" height="80" data-href="/offers/{{campaign:id}}">
<rect width="300" height="80" fill="#0b6e3d"/>
<text x="12" y="32" font-size="18" fill="#fff">Hi {{attr:customer.firstName}}</text>
<text x="12" y="62" font-size="14" fill="#fff">{{campaign:name}}</text>
</svg>"##;

/// A tenant `shop` (host `shop.test`) with the hero and banner plugins, a live sale, and an
/// e-mail slot; its config in `dir`.
fn setup(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> PathBuf {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/v0.2.2");
    std::fs::write(
        dir.join("rules.json"),
        json!({
            "segments": {"new": {"visitCount": {"$lte": 1}}, "returning": {"visitCount": {"$gt": 1}}},
            "campaigns": [{"id": "sale", "name": "Winter sale", "start": "2020-01-01T00:00:00Z",
                           "end": "2099-01-01T00:00:00Z", "params": {"banner": "Big winter sale"}}]
        })
        .to_string(),
    )
    .expect("rules");
    std::fs::write(
        dir.join("fragments.toml"),
        "[hero-new]\nen = \"<h2>Welcome, new friend</h2>\"\n[hero-returning]\nen = \"<h2>Welcome back</h2>\"\n",
    )
    .expect("fragments");
    std::fs::write(dir.join("slot.svg"), SLOT).expect("slot");
    std::fs::write(dir.join("fallback.png"), veneer::email::BLANK_PNG).expect("fallback");
    std::fs::write(
        dir.join("email.html"),
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>News</title></head>\
         <body style=\"font-family:sans-serif\"><section id=\"hero\"><h2>Gear for every season</h2></section>\
         <a href=\"http://shop.test/_veneer/c/{{veneer:token}}/offer\"><img id=\"offer\" width=\"300\" height=\"80\" \
         src=\"http://shop.test/_veneer/i/{{veneer:token}}/offer.png\"></a></body></html>\n",
    )
    .expect("template");
    std::fs::write(
        dir.join("push.json"),
        format!(
            "{{\"aps\":{{\"alert\":{{\"title\":\"{}\"}}}}}}",
            "x".repeat(5000)
        ),
    )
    .expect("push");
    let config = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{data}\"\n\
         cookie_secret = \"0123456789abcdef0123456789abcdef\"\n\n\
         [[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\"]\norigin = \"http://{origin}\"\n\
         rules = \"rules.json\"\nfragments = \"fragments.toml\"\n\
         [tenant.limits]\nrequests_per_second_per_client = 0\n\
         [[tenant.email_slot]]\nname = \"offer\"\nsvg = \"slot.svg\"\nfallback = \"fallback.png\"\n\
         [[tenant.plugin]]\nname = \"banner\"\npath = \"{banner}\"\n\
         [[tenant.plugin]]\nname = \"hero\"\npath = \"{hero}\"\nparams = {{ selector = \"#hero\" }}\n",
        data = dir.join("data").display(),
        origin = origin(),
        banner = golden.join("campaign_banner.wasm").display(),
        hero = golden.join("hero.wasm").display(),
    );
    let file = dir.join("veneer.toml");
    std::fs::write(&file, config).expect("config");
    file
}

/// Runs `veneer render ARGS`: stdout lines as JSON, stderr, exit status.
fn render(args: &[&str]) -> (Vec<Value>, String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .arg("render")
        .args(args)
        .output()
        .expect("run veneer render");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "veneer-messages-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn render_keeps_its_command_contract() {
    let dir = temp_dir();
    let config = setup(&dir, free_port(), free_port());
    let recipients = dir.join("r.jsonl");
    std::fs::write(
        &recipients,
        "{\"id\":\"a\",\"consent\":{\"marketing\":true}}\n\n{\"id\":\"b\",\"consent\":{\"marketing\":false}}\n{\"id\":\n",
    )
    .expect("recipients");
    let c = config.to_str().unwrap_or_default();
    let r = recipients.to_str().unwrap_or_default();
    let t = dir.join("email.html");
    let t = t.to_str().unwrap_or_default();
    // A bad line: exit 2, named by its number on stderr, every other line still written.
    let (lines, stderr, code) = render(&[
        "--config",
        c,
        "--tenant",
        "shop",
        "--channel",
        "email",
        "--template",
        t,
        "--recipients",
        r,
        "--at",
        "2026-12-10T09:00:00Z",
        "--jobs",
        "2",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["status"], "rendered");
    assert_eq!(lines[1]["status"], "skipped");
    assert_eq!(lines[2]["status"], "fault");
    // Numbered as in an editor: the blank line 2 counts.
    assert!(stderr.contains("line 4:"), "{stderr}");
    for key in [
        "id",
        "status",
        "reason",
        "body",
        "bytes",
        "campaigns",
        "assignments",
        "faults",
    ] {
        assert!(
            lines[0].get(key).is_some(),
            "{key} missing from {}",
            lines[0]
        );
    }
    // An oversized APNs payload: too_large, exit 2, never truncated.
    std::fs::write(
        &recipients,
        "{\"id\":\"a\",\"consent\":{\"marketing\":true}}\n",
    )
    .expect("one");
    let p = dir.join("push.json");
    let (lines, _, code) = render(&[
        "--config",
        c,
        "--tenant",
        "shop",
        "--channel",
        "push",
        "--template",
        p.to_str().unwrap_or_default(),
        "--recipients",
        r,
        "--format",
        "apns",
    ]);
    assert_eq!((code, lines[0]["status"].as_str()), (2, Some("too_large")));
    // Every line fine: exit 0.
    let (lines, _, code) = render(&[
        "--config",
        c,
        "--tenant",
        "shop",
        "--channel",
        "kiosk",
        "--template",
        t,
        "--recipients",
        r,
    ]);
    assert_eq!((code, lines.len()), (0, 1));
    // A setup error: exit 1, one line on stderr naming what is wrong.
    let (_, stderr, code) = render(&[
        "--config",
        c,
        "--tenant",
        "shop",
        "--channel",
        "fax",
        "--template",
        t,
        "--recipients",
        r,
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--channel \"fax\"") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    let (_, stderr, code) = render(&[
        "--config",
        c,
        "--tenant",
        "nobody",
        "--channel",
        "email",
        "--template",
        t,
        "--recipients",
        r,
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no tenant named \"nobody\""), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts/email");
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_rendered_for_two_segments_opens_in_a_browser_with_its_image() {
    let dir = temp_dir();
    let (listen, admin) = (free_port(), free_port());
    let config = setup(&dir, listen, admin);
    let recipients = dir.join("r.jsonl");
    std::fs::write(
        &recipients,
        "{\"id\":\"new-1\",\"consent\":{\"marketing\":true},\"attributes\":{\"customer\":{\"firstName\":\"Ada\"}}}\n\
         {\"id\":\"back-1\",\"consent\":{\"marketing\":true},\"attributes\":{\"visitCount\":5,\"customer\":{\"firstName\":\"Bo\"}}}\n",
    )
    .expect("recipients");
    let t = dir.join("email.html");
    let (lines, stderr, code) = render(&[
        "--config",
        config.to_str().unwrap_or_default(),
        "--tenant",
        "shop",
        "--channel",
        "email",
        "--template",
        t.to_str().unwrap_or_default(),
        "--recipients",
        recipients.to_str().unwrap_or_default(),
        "--send-id",
        "winter-1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let serve = Killed(
        Command::new(env!("CARGO_BIN_EXE_veneer"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("VENEER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start veneer"),
    );
    wait_for(|| send(admin, "GET", "/readyz", "admin.test", &[], b"").status == 200);
    // A desktop mail client's agent: a headless browser's own would be classed a scanner.
    let (_driver, client) = browser(
        listen,
        &[
            "--window-size=700,500",
            "--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        ],
    )
    .await;
    for (line, name, hero) in [
        (&lines[0], "email-new", "Welcome, new friend"),
        (&lines[1], "email-returning", "Welcome back"),
    ] {
        let body = line["body"].as_str().unwrap_or_default();
        assert!(
            body.contains(hero) && body.contains("Big winter sale"),
            "{body}"
        );
        let file = dir.join(format!("{name}.html"));
        std::fs::write(&file, body).expect("e-mail file");
        client
            .goto(&format!("file://{}", file.display()))
            .await
            .expect("open the e-mail");
        // The image is drawn by the running host for this recipient, now.
        let loaded = client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("img#offer"))
            .await
            .expect("the image element");
        let started = Instant::now();
        loop {
            let width = client
                .execute(
                    "return arguments[0].complete ? arguments[0].naturalWidth : -1",
                    vec![serde_json::to_value(&loaded).expect("element")],
                )
                .await
                .expect("script");
            if width.as_i64() == Some(300) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "image not drawn: {width}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let png = client.screenshot().await.expect("screenshot");
        std::fs::write(artifacts().join(format!("{name}.png")), png).expect("save screenshot");
    }
    // Both opens were a person's (a desktop browser), counted.
    let started = Instant::now();
    loop {
        let metrics = send(admin, "GET", "/metrics", "admin.test", &[], b"").body;
        if metrics.contains("veneer_email_opens_total{tenant=\"shop\",kind=\"human\"} 2") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
