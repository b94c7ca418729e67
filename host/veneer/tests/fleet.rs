//! A fleet against real parts: a 3-server nats-server 2.15 JetStream cluster (the binary
//! `tests/nats.sh` installs; free loopback ports, temporary store directories, killed on
//! drop) and two or more real `veneer serve` nodes. Plugins are the committed golden
//! components (tests/golden). Bounds are generous (CI machines are slow); the measured
//! figures are in the README (`tests/bench/fleet.sh`).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{free_port, origin};

const OPERATOR: &str = "fleet-operator-secret-0123456789";

/// The fleet tests start five or more processes each: one at a time, so their bounds hold on
/// a two-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden(version: &str, name: &str) -> String {
    repo()
        .join("tests/golden")
        .join(version)
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The nats-server binary: `VENEER_NATS_SERVER`, or installed by tests/nats.sh.
fn nats_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VENEER_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(repo().join("tests/nats.sh"))
        .output()
        .expect("run tests/nats.sh");
    assert!(
        out.status.success(),
        "tests/nats.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo().join(String::from_utf8_lossy(&out.stdout).trim())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veneer-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A nats-server JetStream cluster.
struct Nats {
    bin: PathBuf,
    dir: PathBuf,
    client: Vec<SocketAddr>,
    route: Vec<SocketAddr>,
    monitor: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nats {
    fn start(n: usize, dir: &Path) -> Nats {
        let mut nats = Nats {
            bin: nats_binary(),
            dir: dir.join("nats"),
            client: (0..n).map(|_| free_port()).collect(),
            route: (0..n).map(|_| free_port()).collect(),
            monitor: (0..n).map(|_| free_port()).collect(),
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            nats.spawn(i);
        }
        for i in 0..n {
            nats.wait_healthy(i, false);
        }
        nats
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self.route.iter().map(|a| format!("nats://{a}")).collect();
        let store = self.dir.join(format!("n{i}"));
        std::fs::create_dir_all(&store).expect("nats dir");
        let child = Command::new(&self.bin)
            .args(["-n", &format!("n{i}"), "-a", "127.0.0.1"])
            .args(["-p", &self.client[i].port().to_string()])
            .args(["-m", &self.monitor[i].port().to_string()])
            .args(["-js", "-sd"])
            .arg(&store)
            .args(["--cluster_name", "veneer-test"])
            .args(["--cluster", &format!("nats://{}", self.route[i])])
            .args(["--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.children[i] = Some(child);
    }

    /// Waits until server `i` is healthy; `js_only` asks only that JetStream is up (after a
    /// whole-cluster restart the full check also waits for every stream to catch up, which
    /// the callers wait for themselves by retrying their change).
    fn wait_healthy(&self, i: usize, js_only: bool) {
        let path = if js_only {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        let started = Instant::now();
        while http(self.monitor[i], "GET", path, "", None, &[], b"").0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nats-server n{i} not healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn urls(&self) -> Vec<String> {
        self.client.iter().map(|a| format!("nats://{a}")).collect()
    }
}

/// One `veneer serve` node of the fleet.
struct Node {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    name: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Starts node `name` (its data directory under `dir`, kept across restarts).
    fn start(dir: &Path, name: &str, nats: &Nats) -> Node {
        for _ in 0..5 {
            if let Some(n) = Node::start_once(dir, name, nats) {
                return n;
            }
        }
        panic!("veneer node {name} did not start on five sets of free ports");
    }

    fn start_once(dir: &Path, name: &str, nats: &Nats) -> Option<Node> {
        let (listen, admin) = (free_port(), free_port());
        let urls: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
        let config = format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{data}\"\n\
             cookie_secret = \"fleet-test-cookie-secret-0123456789abcdef\"\ncache_dir = \"{cache}\"\n\n\
             [cluster]\nnats = [{urls}]\nnode = \"{name}\"\nresync_secs = 5\n",
            data = dir.join(format!("data-{name}")).display(),
            cache = repo().join("target/veneer-test-cache").display(),
            urls = urls.join(", "),
        );
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config).expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_veneer"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("VENEER_ADMIN_TOKEN", OPERATOR)
            .env("VENEER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start veneer");
        let mut node = Node {
            child,
            listen,
            admin,
            name: name.to_owned(),
        };
        let started = Instant::now();
        loop {
            if matches!(node.child.try_wait(), Ok(Some(_))) {
                return None;
            }
            if http(node.admin, "GET", "/readyz", "", None, &[], b"").0 == 200 {
                std::thread::sleep(Duration::from_millis(100));
                return matches!(node.child.try_wait(), Ok(None)).then_some(node);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "veneer node {name} did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `veneer admin ARGS` against this node: (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_veneer"))
            .arg("admin")
            .args(args)
            .env("VENEER_ADMIN_URL", format!("http://{}", self.admin))
            .env("VENEER_ADMIN_TOKEN", OPERATOR)
            .output()
            .expect("run veneer admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.cli(args);
        assert!(
            success,
            "node {}: veneer admin {args:?} failed: {stderr}",
            self.name
        );
        stdout
    }

    fn page(&self, host: &str) -> (u16, String) {
        let (status, _, body) = http(self.listen, "GET", "/", host, None, &[], b"");
        (status, body)
    }

    fn health(&self) -> String {
        http(self.admin, "GET", "/healthz", "", None, &[], b"").2
    }

    /// The fleet-wide count; `u64::MAX` while the cluster cannot answer (a leader election).
    fn events(&self, tenant: &str, event: &str) -> u64 {
        let (success, out, stderr) =
            self.cli(&["events", "count", "--tenant", tenant, "--event", event]);
        if !success {
            assert!(stderr.contains("503"), "{stderr}");
            return u64::MAX;
        }
        out.parse()
            .unwrap_or_else(|_| panic!("events count printed {out:?}, not a number alone"))
    }

    /// Sends one beacon event as a new visitor; the status.
    fn send_event(&self, host: &str, event: &str) -> u16 {
        let (_, head, _) = http(self.listen, "GET", "/", host, None, &[], b"");
        let cookie: Vec<String> = head
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("set-cookie")
                    .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
            })
            .collect();
        let cookie = cookie.join("; ");
        let origin = format!("http://{host}");
        let body = format!("{{\"event\": \"{event}\"}}");
        http(
            self.listen,
            "POST",
            "/_veneer/event",
            host,
            None,
            &[
                ("cookie", cookie.as_str()),
                ("origin", origin.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .0
    }
}

/// One HTTP/1.1 request: (status, head, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new(), String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        if host.is_empty() { "admin.test" } else { host },
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, String::new(), String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// Polls `check` every 25 ms until it holds; the time it took. Fails after `bound`.
fn within(bound: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Which slot carries the banner: "a", "b", "none" or "both".
fn banner(body: &str) -> &'static str {
    let a = body.contains("<div id=\"a\"><div class=\"veneer-banner\"");
    let b = body.contains("<div id=\"b\"><div class=\"veneer-banner\"");
    match (a, b) {
        (true, false) => "a",
        (false, true) => "b",
        (false, false) => "none",
        (true, true) => "both",
    }
}

fn rules(dir: &Path, text: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = dir.join(format!("rules-{n}.json"));
    std::fs::write(&file, format!(
        r#"{{"campaigns": [{{"id": "sale", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z", "params": {{"banner": "{text}"}}}}]}}"#
    ))
    .expect("rules");
    file.to_string_lossy().into_owned()
}

/// Creates `name` on `node` with the sale campaign and no per-client rate limit.
fn create_shop(node: &Node, dir: &Path, name: &str, origin: SocketAddr) {
    let create = [
        "tenant",
        "create",
        name,
        "--host",
        &format!("{name}.test"),
        "--origin",
        &format!("http://{origin}"),
    ];
    // Right after the cluster starts, the buckets' stream leaders may not be elected yet:
    // the node answers 503 (no responders) until they are.
    within(
        Duration::from_secs(15),
        "the cluster takes a first change",
        || {
            let (success, _, stderr) = node.cli(&create);
            assert!(success || stderr.contains("503"), "{stderr}");
            success
        },
    );
    node.ok(&[
        "tenant",
        "update",
        name,
        "--json",
        r#"{"limits": {"requests_per_second_per_client": 0}}"#,
    ]);
    node.ok(&["rules", "set", &rules(dir, "Big sale"), "--tenant", name]);
}

/// Pushes the golden campaign banner of contract `version` to shop's chain as `banner`,
/// drawing into `selector`; the new version id.
fn push(node: &Node, version: &str, selector: &str) -> String {
    let file = golden(version, "campaign_banner.wasm");
    let param = format!("selector={selector}");
    let args = [
        "plugin", "push", &file, "--tenant", "shop", "--name", "banner", "--param", &param,
    ];
    // The first component stored in a just-started cluster may find the object store's stream
    // still electing its leader (503, "no stream found"), as a first change does in create_shop.
    let mut pushed = String::new();
    within(
        Duration::from_secs(15),
        "the cluster stores a plugin",
        || {
            let (success, stdout, stderr) = node.cli(&args);
            assert!(success || stderr.contains("503"), "{stderr}");
            pushed = stdout;
            success
        },
    );
    pushed
}

/// A 3-server cluster and nodes a and b, with shop created on a and served by b.
fn two_nodes_with_shop(name: &str) -> (PathBuf, Nats, Node, Node) {
    let dir = temp_dir(name);
    let nats = Nats::start(3, &dir);
    let a = Node::start(&dir, "a", &nats);
    let b = Node::start(&dir, "b", &nats);
    create_shop(&a, &dir, "shop", origin());
    within(Duration::from_secs(10), "shop on b", || {
        b.page("shop.test").0 == 200
    });
    (dir, nats, a, b)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_change_on_one_node_is_served_by_the_others_and_tenants_stay_apart() {
    let _serial = serial();
    let dir = temp_dir("propagate");
    let nats = Nats::start(3, &dir);
    let origin = origin();
    let a = Node::start(&dir, "a", &nats);
    let b = Node::start(&dir, "b", &nats);
    let c = Node::start(&dir, "c", &nats);

    create_shop(&a, &dir, "shop", origin);
    create_shop(&b, &dir, "rival", origin);
    for n in [&a, &b, &c] {
        within(Duration::from_secs(10), "both tenants everywhere", || {
            n.page("shop.test").0 == 200 && n.page("rival.test").0 == 200
        });
    }

    // A plugin pushed to A serves on B and C.
    let v1 = push(&a, "v0.1.0", "#a");
    for n in [&b, &c] {
        let took = within(
            Duration::from_secs(10),
            "the push reaches every node",
            || banner(&n.page("shop.test").1) == "a",
        );
        eprintln!("push on a served by {} after {took:?}", n.name);
    }
    // The other tenant is untouched everywhere.
    for n in [&a, &b, &c] {
        assert_eq!(banner(&n.page("rival.test").1), "none");
    }

    // A change on C (params) is applied on A; a second version pushed on B has a fleet-wide
    // id above the first; a rollback on A goes back to the first on every node.
    c.ok(&[
        "plugin",
        "params",
        "--tenant",
        "shop",
        "--name",
        "banner",
        "--param",
        "selector=#b",
    ]);
    within(Duration::from_secs(10), "params from c on a", || {
        banner(&a.page("shop.test").1) == "b"
    });
    let v2 = push(&b, "v0.2.0", "#a");
    assert!(
        v2.parse::<u64>().expect("id") > v1.parse::<u64>().expect("id"),
        "{v1} then {v2}"
    );
    let active = |n: &Node| -> Option<u64> {
        let list: serde_json::Value =
            serde_json::from_str(&n.ok(&["plugin", "list", "--tenant", "shop"])).ok()?;
        list.as_array()?.first()?.get("active")?.as_u64()
    };
    for n in [&a, &b, &c] {
        within(Duration::from_secs(10), "v2 active everywhere", || {
            active(n) == v2.parse().ok()
        });
    }
    a.ok(&["plugin", "rollback", "--tenant", "shop", "--name", "banner"]);
    for n in [&a, &b, &c] {
        within(Duration::from_secs(10), "the rollback everywhere", || {
            active(n) == v1.parse().ok() && banner(&n.page("shop.test").1) == "b"
        });
    }

    // Each tenant is its own key in the bucket, holding that tenant alone.
    let urls = nats.urls();
    let keys = runtime().block_on(async {
        use futures_util::TryStreamExt as _;
        let client = async_nats::connect(urls.clone()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let kv = js.get_key_value("veneer_config").await.expect("bucket");
        let mut keys: Vec<String> = kv
            .keys()
            .await
            .expect("keys")
            .try_collect()
            .await
            .expect("keys");
        keys.sort();
        let mut names = Vec::new();
        for k in keys.iter().filter(|k| k.starts_with("tenant.")) {
            let v = kv.get(k.as_str()).await.expect("get").expect("value");
            let v: serde_json::Value = serde_json::from_slice(&v).expect("json");
            names.push((
                k.clone(),
                v["state"]["spec"]["name"].as_str().map(str::to_owned),
            ));
        }
        names
    });
    assert_eq!(
        keys,
        vec![
            ("tenant.n.rival".to_owned(), Some("rival".to_owned())),
            ("tenant.n.shop".to_owned(), Some("shop".to_owned())),
        ]
    );

    // A deletion on B stops the tenant everywhere.
    b.ok(&["tenant", "delete", "rival"]);
    for n in [&a, &c] {
        within(Duration::from_secs(10), "the deletion everywhere", || {
            n.page("rival.test").0 != 200
        });
    }
    assert_eq!(banner(&c.page("shop.test").1), "b");
    assert!(a.health().starts_with("ok"), "{}", a.health());
}

#[test]
fn events_from_two_nodes_are_counted_exactly_once_even_when_published_again() {
    let _serial = serial();
    let (_dir, nats, a, b) = two_nodes_with_shop("events");

    let per_node = 60;
    for i in 0..per_node {
        for n in [&a, &b] {
            assert_eq!(n.send_event("shop.test", "signup"), 204, "event {i}");
        }
    }
    let total = 2 * per_node;
    for n in [&a, &b] {
        within(Duration::from_secs(20), "every event counted", || {
            n.events("shop", "signup") == total
        });
    }
    assert_eq!(a.events("shop", "other"), 0);

    // The same ids published again (a node that crashed after its publish was acked, before
    // it cleared its outbox, sends them again): the stream keeps one of each.
    let urls = nats.urls();
    let (republished, stored) = runtime().block_on(async {
        use futures_util::StreamExt as _;
        let client = async_nats::connect(urls.clone()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("VENEER_EVENTS").await.expect("stream");
        // Page views are events too: every message in the stream, not just the signups.
        let before = stream.info().await.expect("info").state.messages;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut duplicates = 0;
        for _ in 0..before {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("a message")
                .expect("message")
                .expect("message");
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .expect("every event carries its id");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = js
                .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                .await
                .expect("publish")
                .await
                .expect("ack");
            duplicates += u64::from(ack.duplicate);
        }
        let after = stream.info().await.expect("info").state.messages;
        (duplicates, (before, after))
    });
    let (before, after) = stored;
    assert!(before >= total, "{before} messages for {total} signups");
    assert_eq!(republished, before, "every republish was recognised");
    assert_eq!(after, before);
    std::thread::sleep(Duration::from_secs(1));
    for n in [&a, &b] {
        assert_eq!(n.events("shop", "signup"), total);
    }
}

#[test]
fn killing_the_stream_leader_loses_no_accepted_event() {
    let _serial = serial();
    let (_dir, mut nats, a, b) = two_nodes_with_shop("leader");
    assert_eq!(a.send_event("shop.test", "view"), 204);
    within(Duration::from_secs(10), "the stream exists", || {
        b.events("shop", "view") == 1
    });

    let urls = nats.urls();
    let leader = runtime().block_on(async {
        let client = async_nats::connect(urls.clone()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("VENEER_EVENTS").await.expect("stream");
        let info = stream.info().await.expect("info");
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a leader")
    });
    let leader: usize = leader.trim_start_matches('n').parse().expect("leader name");

    // Events keep coming while the leader dies; every one a node accepted must be counted.
    let mut accepted = 1u64;
    let started = Instant::now();
    let mut killed = None;
    while started.elapsed() < Duration::from_secs(8) {
        for n in [&a, &b] {
            if n.send_event("shop.test", "view") == 204 {
                accepted += 1;
            }
        }
        if killed.is_none() && started.elapsed() > Duration::from_secs(2) {
            nats.kill(leader);
            killed = Some(Instant::now());
        }
    }
    let killed = killed.expect("killed");
    // Publishing resumes within 15 s of the kill: both outboxes empty, every accepted event
    // acknowledged by the stream's new leader.
    let depth = |n: &Node| {
        http(n.admin, "GET", "/metrics", "", None, &[], b"")
            .2
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "veneer_fleet_outbox_depth{{node=\"{}\"}} ",
                    n.name
                ))
                .and_then(|v| v.parse::<u64>().ok())
            })
    };
    while [&a, &b].iter().any(|n| depth(n) != Some(0)) {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "outboxes not drained 15 s after the leader's SIGKILL: a {:?}, b {:?}",
            depth(&a),
            depth(&b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("outboxes drained {:?} after the SIGKILL", killed.elapsed());
    for n in [&a, &b] {
        let started = Instant::now();
        while n.events("shop", "view") != accepted {
            if started.elapsed() > Duration::from_secs(30) {
                let metrics = |n: &Node| {
                    http(n.admin, "GET", "/metrics", "", None, &[], b"")
                        .2
                        .lines()
                        .filter(|l| l.starts_with("veneer_fleet") || l.starts_with("veneer_event"))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                panic!(
                    "node {}: {} of {accepted} accepted events counted after 30 s\na:\n{}\nb:\n{}",
                    n.name,
                    n.events("shop", "view"),
                    metrics(&a),
                    metrics(&b)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "{accepted} events; all counted {:?} after the leader's SIGKILL",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "publishing did not resume in time"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(a.events("shop", "view"), accepted, "nothing counted twice");
}

#[test]
fn with_nats_down_nodes_keep_serving_refuse_changes_and_converge_after() {
    let _serial = serial();
    let dir = temp_dir("down");
    let mut nats = Nats::start(3, &dir);
    let origin = origin();
    let a = Node::start(&dir, "a", &nats);
    let b = Node::start(&dir, "b", &nats);
    create_shop(&a, &dir, "shop", origin);
    push(&a, "v0.2.0", "#a");
    within(Duration::from_secs(10), "the plugin on b", || {
        banner(&b.page("shop.test").1) == "a"
    });

    for i in 0..3 {
        nats.kill(i);
    }
    for n in [&a, &b] {
        within(Duration::from_secs(15), "healthz degraded", || {
            n.health().starts_with("degraded")
        });
        let (status, body) = n.page("shop.test");
        assert_eq!((status, banner(&body)), (200, "a"), "still serving");
    }
    let (success, _, stderr) = a.cli(&[
        "plugin",
        "params",
        "--tenant",
        "shop",
        "--name",
        "banner",
        "--param",
        "selector=#b",
    ]);
    assert!(!success);
    assert!(
        stderr.contains("503") && stderr.contains("cluster") && stderr.contains("nats://"),
        "{stderr}"
    );
    // Events while NATS is down wait in the outbox.
    for _ in 0..5 {
        assert_eq!(a.send_event("shop.test", "signup"), 204);
    }
    assert_eq!(
        banner(&a.page("shop.test").1),
        "a",
        "the refused change changed nothing"
    );

    for i in 0..3 {
        nats.spawn(i);
    }
    for i in 0..3 {
        nats.wait_healthy(i, true);
    }
    within(Duration::from_secs(30), "changes accepted again", || {
        a.cli(&[
            "plugin",
            "params",
            "--tenant",
            "shop",
            "--name",
            "banner",
            "--param",
            "selector=#b",
        ])
        .0
    });
    within(Duration::from_secs(10), "the change on b", || {
        banner(&b.page("shop.test").1) == "b"
    });
    within(
        Duration::from_secs(30),
        "the outbox drained to every node",
        || b.events("shop", "signup") == 5,
    );
    for n in [&a, &b] {
        within(Duration::from_secs(10), "healthy again", || {
            n.health().starts_with("ok")
        });
    }
}

#[test]
fn a_node_restarted_during_fifty_changes_converges_to_the_latest_of_every_key() {
    let _serial = serial();
    let dir = temp_dir("restart");
    let nats = Nats::start(3, &dir);
    let origin = origin();
    let a = Node::start(&dir, "a", &nats);
    let b = Node::start(&dir, "b", &nats);
    create_shop(&a, &dir, "shop", origin);
    push(&a, "v0.2.0", "#a");
    within(Duration::from_secs(10), "shop on b", || {
        banner(&b.page("shop.test").1) == "a"
    });

    let mut b = Some(b);
    for i in 0..50 {
        if i == 10 {
            // SIGKILL mid-stream; restarted twenty changes later.
            drop(b.take());
        }
        if i == 30 {
            b = Some(Node::start(&dir, "b", &nats));
        }
        a.ok(&[
            "rules",
            "set",
            &rules(&dir, &format!("Sale {i}")),
            "--tenant",
            "shop",
        ]);
        if i % 10 == 5 {
            create_shop(&a, &dir, &format!("extra{i}"), origin);
        }
        if i == 36 {
            a.ok(&["tenant", "delete", "extra15"]);
        }
    }
    let b = b.expect("b");
    let tenants = |n: &Node| {
        let list: serde_json::Value =
            serde_json::from_str(&n.ok(&["tenant", "list"])).unwrap_or_default();
        let mut names: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    within(Duration::from_secs(20), "b converged", || {
        b.page("shop.test").1.contains("Sale 49") && tenants(&b) == tenants(&a)
    });
    assert_eq!(
        tenants(&b),
        ["extra25", "extra35", "extra45", "extra5", "shop"]
    );
    assert_eq!(
        b.ok(&["rules", "get", "--tenant", "shop"]),
        a.ok(&["rules", "get", "--tenant", "shop"])
    );
    within(Duration::from_secs(10), "no lag", || {
        let m = http(b.admin, "GET", "/metrics", "", None, &[], b"").2;
        m.lines()
            .any(|l| l.starts_with("veneer_fleet_lag_revisions{node=\"b\"}") && l.ends_with(" 0"))
    });
    assert!(b.health().starts_with("ok"), "{}", b.health());
}

#[test]
fn a_customer_profile_changed_on_one_node_is_read_on_the_other() {
    let _serial = serial();
    let (dir, _nats, a, b) = two_nodes_with_shop("profiles");
    let import = |n: &Node, tier: &str| {
        let file = dir.join(format!("crm-{}-{tier}.jsonl", n.name));
        std::fs::write(
            &file,
            format!("{{\"customer\": \"c1\", \"attributes\": {{\"tier\": \"{tier}\"}}}}\n"),
        )
        .expect("crm");
        n.ok(&[
            "profile",
            "import",
            file.to_str().unwrap_or_default(),
            "--tenant",
            "shop",
        ]);
    };
    let tier = |n: &Node| -> Option<String> {
        let (ok, out, _) = n.cli(&["profile", "export", "--tenant", "shop", "--customer", "c1"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        v["profile"]["attributes"]["tier"]
            .as_str()
            .map(str::to_owned)
    };

    import(&a, "gold");
    assert_eq!(tier(&a).as_deref(), Some("gold"));
    let took = within(Duration::from_secs(10), "a's import read on b", || {
        tier(&b).as_deref() == Some("gold")
    });
    eprintln!("a profile stored on a read on b after {took:?}");
    // B changes it; A, which has it cached, reads B's.
    import(&b, "platinum");
    within(Duration::from_secs(10), "b's change read on a", || {
        tier(&a).as_deref() == Some("platinum")
    });
    // An erasure on B erases it on A too.
    b.ok(&["profile", "erase", "--tenant", "shop", "--customer", "c1"]);
    within(Duration::from_secs(10), "the erasure on a", || {
        tier(&a).is_none()
    });
}

#[test]
fn when_the_aggregating_node_dies_another_takes_over_and_counts_stay_exact() {
    let _serial = serial();
    let (_dir, _nats, a, b) = two_nodes_with_shop("aggregator");
    for _ in 0..20 {
        assert_eq!(a.send_event("shop.test", "signup"), 204);
        assert_eq!(b.send_event("shop.test", "signup"), 204);
    }
    within(Duration::from_secs(20), "40 counted", || {
        b.events("shop", "signup") == 40
    });
    let aggregating = |n: &Node| {
        http(n.admin, "GET", "/metrics", "", None, &[], b"")
            .2
            .lines()
            .any(|l| l == format!("veneer_fleet_aggregator{{node=\"{}\"}} 1", n.name))
    };
    let (dying, survivor) = match (aggregating(&a), aggregating(&b)) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        other => panic!("exactly one node aggregates: {other:?}"),
    };
    drop(dying);
    for _ in 0..20 {
        assert_eq!(survivor.send_event("shop.test", "signup"), 204);
    }
    let took = within(Duration::from_secs(30), "the survivor took over", || {
        survivor.events("shop", "signup") == 60
    });
    eprintln!("aggregation resumed on {} after {took:?}", survivor.name);
    assert!(aggregating(&survivor));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(survivor.events("shop", "signup"), 60);
}
