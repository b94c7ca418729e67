//! The control plane against the real `veneer` binary over real sockets: the admin API's
//! access rules, deploys through the CLI, refusals that change nothing, hot swaps under load,
//! rollback and a restart that keeps every change. Plugins are the committed golden
//! components (tests/golden), so this needs no plugin build.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;

use common::{free_port, origin};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const OPERATOR: &str = "operator-secret-0123456789";

fn golden(version: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(version)
        .join(name)
}

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

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veneer-admin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Starts `veneer serve` with a state store in `dir` (and a seed tenant in its config, which
/// only the first start imports). A port handed out free can be taken by a test running beside
/// this one before veneer binds it: then veneer exits at once, and it is started again on
/// other ports.
fn start(dir: &Path, origin: SocketAddr) -> Veneer {
    for _ in 0..5 {
        if let Some(v) = start_once(dir, origin) {
            return v;
        }
    }
    panic!("veneer did not start on five pairs of free ports");
}

fn start_once(dir: &Path, origin: SocketAddr) -> Option<Veneer> {
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{data}\"\n\
         cookie_secret = \"0123456789abcdef0123456789abcdef\"\ncache_dir = \"{cache}\"\n\
         analytics_log = \"{analytics}\"\n\n\
         [[tenant]]\nname = \"seeded\"\nhosts = [\"seeded.test\"]\norigin = \"http://{origin}\"\n",
        data = dir.join("data").display(),
        analytics = dir.join("analytics.jsonl").display(),
        cache = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/veneer-test-cache")
            .display(),
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
    let mut v = Veneer {
        child,
        listen,
        admin,
    };
    let started = Instant::now();
    loop {
        // Checked first: a ready answer could come from another test's veneer on a port
        // this one failed to bind.
        if matches!(v.child.try_wait(), Ok(Some(_))) {
            return None;
        }
        if http(v.admin, "GET", "/readyz", None, b"").0 == 200 {
            std::thread::sleep(Duration::from_millis(100));
            return matches!(v.child.try_wait(), Ok(None)).then_some(v);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "veneer did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request; (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    request(addr, method, path, "admin.test", token, body)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    request_from("127.0.0.1", addr, method, path, host, token, body)
}

/// Like [`request`], from a given loopback address (each is a client of its own).
fn request_from(
    source: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let source: SocketAddr = format!("{source}:0").parse().expect("source");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let connected = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(source)?;
        socket.connect(addr).await?.into_std()
    });
    let Ok(mut s) = connected else {
        return (0, String::new());
    };
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs `veneer admin ARGS` against `v`; (success, stdout, stderr).
fn cli(v: &Veneer, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .arg("admin")
        .args(args)
        .env("VENEER_ADMIN_URL", format!("http://{}", v.admin))
        .env("VENEER_ADMIN_TOKEN", token)
        .output()
        .expect("run veneer admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn ok(v: &Veneer, token: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = cli(v, token, args);
    assert!(success, "veneer admin {args:?} failed: {stderr}");
    stdout
}

fn page(v: &Veneer, host: &str) -> (u16, String) {
    request(v.listen, "GET", "/", host, None, b"")
}

/// Which of the two slots carries the banner: "a", "b", or something else for a mix.
fn banner_slot(body: &str) -> &'static str {
    let a = body.contains("<div id=\"a\"><div class=\"veneer-banner\"");
    let b = body.contains("<div id=\"b\"><div class=\"veneer-banner\"");
    match (a, b) {
        (true, false) => "a",
        (false, true) => "b",
        (false, false) => "none",
        (true, true) => "both",
    }
}

const RULES: &str = r#"{"campaigns": [{"id": "sale", "start": "2020-01-01T00:00:00Z",
    "end": "2099-01-01T00:00:00Z", "params": {"banner": "Big sale"}}]}"#;

#[test]
fn every_admin_route_needs_the_right_token() {
    let dir = data_dir("auth");
    let origin = origin();
    let v = start(&dir, origin);
    ok(
        &v,
        OPERATOR,
        &[
            "tenant",
            "create",
            "shop",
            "--host",
            "shop.test",
            "--origin",
            &format!("http://{origin}"),
        ],
    );
    ok(
        &v,
        OPERATOR,
        &[
            "tenant",
            "create",
            "rival",
            "--host",
            "rival.test",
            "--origin",
            "http://127.0.0.1:9",
        ],
    );
    let shop = ok(&v, OPERATOR, &["token", "create", "--tenant", "shop"]);
    let rival = ok(&v, OPERATOR, &["token", "create", "--tenant", "rival"]);
    assert!(
        shop.starts_with("vnr_") && shop.len() > 40 && !shop.contains('\n'),
        "{shop}"
    );

    // The tenant list: 401 without a valid token; a tenant token sees its own tenant only.
    for token in [None, Some("vnr_not-a-token")] {
        let (status, answer) = request_from(
            "127.0.0.200",
            v.admin,
            "GET",
            "/v1/tenants",
            "admin.test",
            token,
            b"",
        );
        assert_eq!(status, 401, "{token:?}: {answer}");
        assert!(!answer.contains("shop"), "{answer}");
    }
    let (status, answer) = request_from(
        "127.0.0.200",
        v.admin,
        "GET",
        "/v1/tenants",
        "admin.test",
        Some(&rival),
        b"",
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("rival") && !answer.contains("\"shop\""),
        "{answer}"
    );

    let routes: &[(&str, &str, &[u8])] = &[
        ("GET", "/v1/tenants/shop", b""),
        (
            "PATCH",
            "/v1/tenants/shop",
            b"{\"origin\": \"http://127.0.0.1:1\"}",
        ),
        ("DELETE", "/v1/tenants/shop", b""),
        ("POST", "/v1/tenants/shop/disable", b""),
        ("POST", "/v1/tenants/shop/enable", b""),
        ("GET", "/v1/tenants/shop/plugins", b""),
        (
            "POST",
            "/v1/tenants/shop/plugins/banner/versions?activate=true",
            b"\0asm",
        ),
        (
            "POST",
            "/v1/tenants/shop/plugins/banner/activate",
            b"{\"version\": 1}",
        ),
        ("POST", "/v1/tenants/shop/plugins/banner/rollback", b""),
        ("PUT", "/v1/tenants/shop/plugins/banner/params", b"{}"),
        ("DELETE", "/v1/tenants/shop/plugins/banner", b""),
        ("GET", "/v1/tenants/shop/rules", b""),
        ("PUT", "/v1/tenants/shop/rules", b"{}"),
        ("PATCH", "/v1/tenants/shop/rules", b"{}"),
        ("GET", "/v1/tenants/shop/fragments", b""),
        ("PUT", "/v1/tenants/shop/fragments", b"{}"),
        ("PATCH", "/v1/tenants/shop/fragments", b"{}"),
        ("GET", "/v1/tenants/shop/audit", b""),
        ("GET", "/v1/tenants/nosuch", b""),
        (
            "POST",
            "/v1/tenants",
            b"{\"name\": \"x\", \"hosts\": [\"x.test\"], \"origin\": \"http://127.0.0.1:1\"}",
        ),
        ("GET", "/v1/audit", b""),
        ("POST", "/v1/tokens", b"{\"tenant\": \"shop\"}"),
        ("DELETE", "/v1/tokens/1", b""),
    ];
    for (i, &(method, path, body)) in routes.iter().enumerate() {
        // Each route's failures from an address of their own, under the brute-force limit.
        let source = format!("127.0.0.{}", 10 + i);
        for token in [
            None,
            Some("vnr_not-a-token"),
            Some(OPERATOR.trim_end_matches('9')),
        ] {
            let (status, answer) =
                request_from(&source, v.admin, method, path, "admin.test", token, body);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert!(
                !answer.contains("shop") && !answer.contains("rival"),
                "{answer}"
            );
        }
        // Another tenant's token: 403 for shop's routes and for operator routes alike, the
        // same answer whether or not the tenant exists.
        let (status, answer) = request_from(
            &source,
            v.admin,
            method,
            path,
            "admin.test",
            Some(&rival),
            body,
        );
        assert_eq!(status, 403, "{method} {path} with rival's token: {answer}");
        assert!(
            !answer.contains("shop.test") && !answer.contains(&origin.to_string()),
            "{answer}"
        );
    }
    // A malformed token request never mints an operator token.
    for body in [&b"{\"tenant\": 5}"[..], b"{\"tenat\": \"shop\"}", b"{}"] {
        let (status, answer) = http(v.admin, "POST", "/v1/tokens", Some(OPERATOR), body);
        assert_eq!(status, 400, "{answer}");
    }
    // A tenant token sees only its own tenant.
    let (status, list) = http(v.admin, "GET", "/v1/tenants", Some(&shop), b"");
    assert_eq!(status, 200);
    assert!(
        list.contains("shop.test") && !list.contains("rival"),
        "{list}"
    );
    let (status, _) = http(v.admin, "GET", "/v1/tenants/shop", Some(&shop), b"");
    assert_eq!(status, 200);
    // Guessing at speed from one address is cut off, even before a right guess.
    let mut refused = 0;
    for _ in 0..40 {
        let (status, _) = request_from(
            "127.0.0.99",
            v.admin,
            "GET",
            "/v1/tenants",
            "admin.test",
            Some("vnr_guess"),
            b"",
        );
        refused += u32::from(status == 429);
    }
    assert!(refused >= 15, "{refused} of 40 guesses refused");
    let (status, _) = request_from(
        "127.0.0.99",
        v.admin,
        "GET",
        "/v1/tenants",
        "admin.test",
        Some(OPERATOR),
        b"",
    );
    assert_eq!(status, 429, "the address stays blocked for a while");
    // Failed attempts are counted.
    let (_, metrics) = http(v.admin, "GET", "/metrics", None, b"");
    assert!(
        metrics.contains("veneer_admin_auth_failures_total{reason=\"forbidden\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("veneer_admin_auth_failures_total{reason=\"invalid\"}"),
        "{metrics}"
    );
    // The CLI says why in one line and exits non-zero.
    let (success, _, stderr) = cli(&v, &rival, &["tenant", "show", "shop"]);
    assert!(!success);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn deploys_swap_atomically_refusals_change_nothing_and_a_restart_keeps_everything() {
    let dir = data_dir("deploy");
    let origin = origin();
    let mut v = start(&dir, origin);
    let o = format!("http://{origin}");
    ok(
        &v,
        OPERATOR,
        &[
            "tenant",
            "create",
            "shop",
            "--host",
            "shop.test",
            "--origin",
            &o,
        ],
    );
    let token = ok(&v, OPERATOR, &["token", "create", "--tenant", "shop"]);
    // The load below comes from one address; lift the per-client rate for it.
    ok(
        &v,
        OPERATOR,
        &[
            "tenant",
            "update",
            "shop",
            "--json",
            r#"{"limits": {"requests_per_second_per_client": 0}}"#,
        ],
    );
    std::fs::write(dir.join("rules.json"), RULES).expect("rules");
    ok(
        &v,
        &token,
        &[
            "rules",
            "set",
            dir.join("rules.json").to_str().unwrap_or_default(),
            "--tenant",
            "shop",
        ],
    );
    assert_eq!(banner_slot(&page(&v, "shop.test").1), "none");

    let a = golden("v0.1.0", "campaign_banner.wasm");
    let b = golden("v0.2.0", "campaign_banner.wasm");
    let a = a.to_str().unwrap_or_default();
    let b = b.to_str().unwrap_or_default();
    let first = ok(
        &v,
        &token,
        &[
            "plugin",
            "push",
            a,
            "--tenant",
            "shop",
            "--name",
            "banner",
            "--param",
            "selector=#a",
        ],
    );
    assert!(
        first.parse::<u64>().is_ok(),
        "the version id alone: {first:?}"
    );
    let (status, body) = page(&v, "shop.test");
    assert_eq!((status, banner_slot(&body)), (200, "a"), "{body}");

    // A bad upload and an invalid rules change are refused with a reason; the old keeps serving.
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").expect("core module");
    let (success, _, stderr) = cli(
        &v,
        &token,
        &[
            "plugin",
            "push",
            dir.join("core.wasm").to_str().unwrap_or_default(),
            "--tenant",
            "shop",
            "--name",
            "banner",
        ],
    );
    assert!(!success);
    assert!(
        stderr.contains("422") && stderr.contains("component"),
        "{stderr}"
    );
    // A component for a contract version this host does not have: the same golden banner with
    // its hooks export renamed to 0.3.0 (same length, every occurrence, so it stays valid).
    // The explicit flags work without the environment; a usage error is one line, status 2.
    let admin_url = format!("http://{}", v.admin);
    let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args(["admin", "--url", &admin_url, "--token", &token])
        .args(["tenant", "show", "shop"])
        .env_remove("VENEER_ADMIN_URL")
        .env_remove("VENEER_ADMIN_TOKEN")
        .output()
        .expect("run veneer admin");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("shop"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args(["admin", "tenant", "frobnicate"])
        .output()
        .expect("run veneer admin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("frobnicate"), "{stderr}");

    let golden_bytes = std::fs::read(b).expect("golden");
    let (from, to) = (b"veneer:plugin/hooks@0.2.0", b"veneer:plugin/hooks@0.3.0");
    let mut future = Vec::with_capacity(golden_bytes.len());
    let mut i = 0;
    while i < golden_bytes.len() {
        if golden_bytes[i..].starts_with(from) {
            future.extend_from_slice(to);
            i += from.len();
        } else {
            future.push(golden_bytes[i]);
            i += 1;
        }
    }
    assert_ne!(
        future, golden_bytes,
        "the golden 0.2.0 banner exports hooks@0.2.0"
    );
    std::fs::write(dir.join("future.wasm"), future).expect("future component");
    let (success, _, stderr) = cli(
        &v,
        &token,
        &[
            "plugin",
            "push",
            dir.join("future.wasm").to_str().unwrap_or_default(),
            "--tenant",
            "shop",
            "--name",
            "banner",
        ],
    );
    assert!(!success);
    assert!(
        stderr.contains("422")
            && stderr.contains("veneer:plugin@0.3.0")
            && stderr.contains("0.1.0")
            && stderr.contains("0.2.2"),
        "refused at upload with its version and the supported ones: {stderr}"
    );
    std::fs::write(
        dir.join("bad-rules.json"),
        r#"{"segments": {"x": {"country": {"$regex": "("}}}}"#,
    )
    .expect("rules");
    let (success, _, stderr) = cli(
        &v,
        &token,
        &[
            "rules",
            "set",
            dir.join("bad-rules.json").to_str().unwrap_or_default(),
            "--tenant",
            "shop",
        ],
    );
    assert!(!success);
    assert!(
        stderr.contains("422") && stderr.contains("segments"),
        "{stderr}"
    );
    assert_eq!(
        banner_slot(&page(&v, "shop.test").1),
        "a",
        "still the old version"
    );

    // Twenty swaps while four clients keep requesting: every response whole and from one
    // version.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let listen = v.listen;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, bad) = (stop.clone(), served.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut first_bad = None;
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = request(listen, "GET", "/", "shop.test", None, b"");
                    served.fetch_add(1, Ordering::Relaxed);
                    let slot = banner_slot(&body);
                    if status != 200
                        || (slot != "a" && slot != "b")
                        || !body.contains("<p>Hello</p>")
                    {
                        bad.fetch_add(1, Ordering::Relaxed);
                        first_bad.get_or_insert((status, body));
                    }
                }
                first_bad
            })
        })
        .collect();
    let mut last = String::new();
    for i in 0..20 {
        let (file, slot) = if i % 2 == 0 { (b, "#b") } else { (a, "#a") };
        last = ok(
            &v,
            &token,
            &[
                "plugin",
                "push",
                file,
                "--tenant",
                "shop",
                "--name",
                "banner",
                "--param",
                &format!("selector={slot}"),
            ],
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<_> = clients
        .into_iter()
        .filter_map(|c| c.join().ok().flatten())
        .collect();
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "of {} requests: {failures:?}",
        served.load(Ordering::Relaxed)
    );
    assert!(served.load(Ordering::Relaxed) >= 20);
    assert_eq!(
        banner_slot(&page(&v, "shop.test").1),
        "a",
        "the last push (v0.1.0 at #a) serves"
    );

    // Rollback restores the deployment before (v0.2.0 at #b), then the one before that.
    let back = ok(
        &v,
        &token,
        &["plugin", "rollback", "--tenant", "shop", "--name", "banner"],
    );
    assert_ne!(back, last);
    assert_eq!(banner_slot(&page(&v, "shop.test").1), "b");
    ok(
        &v,
        &token,
        &["plugin", "rollback", "--tenant", "shop", "--name", "banner"],
    );
    assert_eq!(banner_slot(&page(&v, "shop.test").1), "a");
    // Activating a version by id keeps the current params; only the newest 20 versions
    // are kept, so the first one is gone, with a clear answer.
    ok(
        &v,
        &token,
        &[
            "plugin", "activate", &last, "--tenant", "shop", "--name", "banner",
        ],
    );
    assert_eq!(banner_slot(&page(&v, "shop.test").1), "a");
    let (success, _, stderr) = cli(
        &v,
        &token,
        &[
            "plugin", "activate", &first, "--tenant", "shop", "--name", "banner",
        ],
    );
    assert!(!success && stderr.contains("no version"), "{stderr}");

    // The audit log says who did what.
    let audit = ok(&v, &token, &["audit", "--tenant", "shop", "--limit", "500"]);
    let entries: serde_json::Value = serde_json::from_str(&audit).expect("audit JSON");
    let actions: Vec<&str> = entries
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        actions.contains(&"plugin.rollback")
            && actions.contains(&"rules.set")
            && actions.contains(&"tenant.create"),
        "{actions:?}"
    );
    assert!(entries.as_array().is_some_and(|a| {
        a.iter()
            .all(|e| e["actor"].as_str().is_some_and(|s| !s.is_empty()))
    }));
    assert_eq!(
        actions.iter().filter(|a| **a == "plugin.upload").count(),
        21,
        "refused uploads are not recorded"
    );

    // A restart keeps every change; the config's seed tenant is not imported twice.
    let (_, metrics) = http(v.admin, "GET", "/metrics", None, b"");
    assert!(
        metrics.contains(&format!(
            "veneer_plugin_active_version{{tenant=\"shop\",plugin=\"banner\"}} {last}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("veneer_plugins_loaded{contract=\"0.1.0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "veneer_plugin_hook_seconds_bucket{tenant=\"shop\",plugin=\"banner\",hook=\"on_response\",le=\"+Inf\"}"
        ),
        "{metrics}"
    );
    drop(v);
    v = start(&dir, origin);
    let (status, body) = page(&v, "shop.test");
    assert_eq!((status, banner_slot(&body)), (200, "a"), "{body}");
    assert_eq!(page(&v, "seeded.test").0, 200, "the seeded tenant serves");
    let list = ok(&v, OPERATOR, &["tenant", "list"]);
    assert_eq!(list.matches("\"seeded\"").count(), 1, "{list}");
    // Disable stops serving; enable brings it back.
    ok(&v, OPERATOR, &["tenant", "disable", "shop"]);
    assert_eq!(page(&v, "shop.test").0, 404);
    ok(&v, OPERATOR, &["tenant", "enable", "shop"]);
    assert_eq!(banner_slot(&page(&v, "shop.test").1), "a");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn crm_import_reports_bad_lines_and_data_subject_requests_export_and_erase() {
    let dir = data_dir("profiles");
    let origin = origin();
    let v = start(&dir, origin);
    for (name, host) in [("shop", "shop.test"), ("rival", "rival.test")] {
        ok(
            &v,
            OPERATOR,
            &[
                "tenant",
                "create",
                name,
                "--host",
                host,
                "--origin",
                &format!("http://{origin}"),
            ],
        );
    }
    let shop = ok(&v, OPERATOR, &["token", "create", "--tenant", "shop"]);
    let rival = ok(&v, OPERATOR, &["token", "create", "--tenant", "rival"]);
    let file = dir.join("crm.jsonl");
    std::fs::write(
        &file,
        "{\"customer\": \"c1\", \"attributes\": {\"tier\": \"gold\", \"ltv\": 1830, \"categories\": [\"boots\"]}}\n\
         {\"customer\": \"c2\", \"attributes\": {\"tier\": \"silver\"}\n\
         \n\
         {\"customer\": \"c3\", \"attributes\": {\"tier\": \"bronze\"}}\n",
    )
    .expect("crm file");
    let path = file.to_str().unwrap_or_default();
    let (success, stdout, stderr) =
        cli(&v, &shop, &["profile", "import", path, "--tenant", "shop"]);
    assert!(!success, "a refused line fails the command: {stdout}");
    assert!(
        stderr.contains(&format!("{path}:2: expected")),
        "the malformed line is named with its number: {stderr}"
    );
    assert!(stderr.contains("2 lines imported, 1 refused"), "{stderr}");

    let c1 = ok(
        &v,
        &shop,
        &["profile", "export", "--tenant", "shop", "--customer", "c1"],
    );
    let c1: serde_json::Value = serde_json::from_str(&c1).expect("export json");
    assert_eq!(c1["profile"]["attributes"]["tier"], "gold", "{c1}");
    assert_eq!(c1["profile"]["attributes"]["ltv"], 1830, "{c1}");
    let c3 = ok(
        &v,
        &shop,
        &["profile", "export", "--tenant", "shop", "--customer", "c3"],
    );
    assert!(c3.contains("bronze"), "the line after the bad one: {c3}");
    let (success, _, stderr) = cli(
        &v,
        &shop,
        &["profile", "export", "--tenant", "shop", "--customer", "c2"],
    );
    assert!(
        !success && stderr.contains("404"),
        "nothing of line 2: {stderr}"
    );
    // Another tenant's token reads nothing of this tenant's customers.
    let (success, _, stderr) = cli(
        &v,
        &rival,
        &["profile", "export", "--tenant", "shop", "--customer", "c1"],
    );
    assert!(!success && stderr.contains("403"), "{stderr}");

    // An upsert changes only the attributes it names; null removes one.
    std::fs::write(
        &file,
        "{\"customer\": \"c1\", \"attributes\": {\"tier\": \"platinum\", \"ltv\": null}}\n",
    )
    .expect("crm file");
    assert_eq!(
        ok(&v, &shop, &["profile", "import", path, "--tenant", "shop"]),
        "1 line imported"
    );
    let c1 = ok(
        &v,
        &shop,
        &["profile", "export", "--tenant", "shop", "--customer", "c1"],
    );
    let c1: serde_json::Value = serde_json::from_str(&c1).expect("export json");
    assert_eq!(c1["profile"]["attributes"]["tier"], "platinum", "{c1}");
    assert!(c1["profile"]["attributes"].get("ltv").is_none(), "{c1}");
    assert_eq!(c1["profile"]["attributes"]["categories"][0], "boots");

    // Erasure: gone, and the audit log says so without naming them.
    ok(
        &v,
        &shop,
        &["profile", "erase", "--tenant", "shop", "--customer", "c1"],
    );
    let (success, _, stderr) = cli(
        &v,
        &shop,
        &["profile", "export", "--tenant", "shop", "--customer", "c1"],
    );
    assert!(!success && stderr.contains("404"), "{stderr}");
    let audit = ok(&v, OPERATOR, &["audit", "--tenant", "shop"]);
    assert!(
        audit.contains("profiles.erase") && audit.contains("profiles.import"),
        "{audit}"
    );
    assert!(!audit.contains("\"c1\""), "{audit}");
    // A visitor's events in the analytics log go with them; another visitor's stay.
    let log = dir.join("analytics.jsonl");
    page(&v, "shop.test");
    page(&v, "shop.test");
    let visitors = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["tenant"] == "shop")
            .filter_map(|e| e["visitor"].as_str().map(str::to_owned))
            .collect()
    };
    let started = Instant::now();
    while visitors().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no events logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = visitors();
    let (gone, stays) = (seen[0].clone(), seen[1].clone());
    assert_ne!(gone, stays);
    ok(
        &v,
        &shop,
        &["profile", "erase", "--tenant", "shop", "--visitor", &gone],
    );
    let left = visitors();
    assert!(!left.contains(&gone) && left.contains(&stays), "{left:?}");
    // Still gone after a restart: the erasure reached the disk.
    drop(v);
    let v = start(&dir, origin);
    let (success, _, stderr) = cli(
        &v,
        &shop,
        &["profile", "export", "--tenant", "shop", "--customer", "c3"],
    );
    assert!(success, "c3 survives a restart: {stderr}");
    let (success, _, _) = cli(
        &v,
        &shop,
        &["profile", "export", "--tenant", "shop", "--customer", "c1"],
    );
    assert!(!success);
}
