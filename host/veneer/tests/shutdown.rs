//! Stopping the host as systemd and Kubernetes do: SIGTERM drains in-flight requests, writes
//! the analytics queue and exits 0; a second signal exits at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A plain origin: `/slow` answers after `slow`, anything else at once; HTML with a body tag.
fn origin(slow: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_origin(stream, slow));
        }
    });
    addr
}

fn serve_origin(mut stream: TcpStream, slow: Duration) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head);
        if head.starts_with("GET /slow") {
            std::thread::sleep(slow);
        }
        let body = "<html><body><h1>Origin</h1></body></html>";
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

struct Veneer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Veneer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start(origin: SocketAddr, grace_ms: u64, name: &str) -> Veneer {
    let dir = std::env::temp_dir().join(format!("veneer-shutdown-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let banner = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/v0.2.0/campaign_banner.wasm");
    std::fs::write(
        dir.join("rules.json"),
        r#"{"campaigns": [{"id": "sale", "start": "2020-01-01T00:00:00Z",
            "end": "2099-01-01T00:00:00Z", "params": {"banner": "Big sale"}}]}"#,
    )
    .expect("rules");
    let addr = free_port();
    let config = format!(
        "[server]\nlisten = \"{addr}\"\ncookie_secret = \"0123456789abcdef0123456789abcdef\"\n\
         cache_dir = \"{cache}\"\nanalytics_log = \"{log}\"\nshutdown_grace_ms = {grace_ms}\n\n\
         [[tenant]]\nname = \"shop\"\nhosts = [\"127.0.0.1\"]\norigin = \"http://{origin}\"\n\
         rules = \"rules.json\"\n\n[[tenant.plugin]]\nname = \"banner\"\npath = \"{banner}\"\n",
        cache = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/veneer-test-cache")
            .display(),
        log = dir.join("events.jsonl").display(),
        banner = banner.display(),
    );
    std::fs::write(dir.join("veneer.toml"), config).expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_veneer"))
        .args(["serve", "--config"])
        .arg(dir.join("veneer.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start veneer");
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "veneer did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Veneer { child, addr, dir }
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            started.elapsed() < within,
            "veneer did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_writes_analytics_and_exits_0() {
    let origin = origin(Duration::from_millis(1500));
    let mut v = start(origin, 10_000, "drain");
    let addr = v.addr;
    // Warm: one request completes before the stop, so the log has an earlier event too.
    let warm = get(addr, "/").expect("warm");
    assert!(warm.contains("Big sale"), "{warm}");
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    std::thread::sleep(Duration::from_millis(400));
    signal(&v.child, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(addr).is_err(),
        "new connections are refused while draining"
    );
    let response = slow.join().expect("thread").expect("in-flight request");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("Big sale")
            && response.contains("</html>")
            && response.ends_with("0\r\n\r\n"),
        "the in-flight request got its whole, personalized page: {response}"
    );
    let status = wait_exit(&mut v.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let events = std::fs::read_to_string(v.dir.join("events.jsonl")).unwrap_or_default();
    let impressions = events
        .lines()
        .filter(|l| l.contains("campaign_impression"))
        .count();
    assert_eq!(
        impressions, 2,
        "both requests' events are on disk: {events}"
    );
    let mut stderr = String::new();
    if let Some(mut e) = v.child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(stderr.contains("draining in-flight requests"), "{stderr}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let origin = origin(Duration::from_secs(20));
    let mut v = start(origin, 60_000, "twice");
    let addr = v.addr;
    let _slow = std::thread::spawn(move || get(addr, "/slow"));
    std::thread::sleep(Duration::from_millis(300));
    signal(&v.child, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        v.child.try_wait().expect("wait").is_none(),
        "still draining"
    );
    let started = Instant::now();
    signal(&v.child, "INT");
    let status = wait_exit(&mut v.child, Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(1));
}
