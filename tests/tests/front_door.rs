//! The front door over raw sockets, as a security reviewer probes it: requests a proxy must not
//! pass on are refused with a clear status and counted as client errors, never as origin
//! errors; forwarding headers are believed only from trusted proxies.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use veneer_tests::{Host, HostSpec, Origin, Page};

const RULES: &str = r#"{"segments": {"norway": {"country": "NO"}}}"#;

fn config(methods: &str) -> String {
    format!(
        "[[tenant]]\nname = \"site\"\nhosts = [\"site.test\", \"127.0.0.1\"]\norigin = \"{{origin}}\"\n\
         rules = \"rules.json\"\ngeo_header = \"cf-ipcountry\"\n{methods}\
         [[tenant.plugin]]\nname = \"copy\"\npath = \"{{plugins}}/static_rewrites.wasm\"\n\
         params = {{ segment = \"norway\", rule1 = \"h1 | set-inner-text | Hei\" }}\n"
    )
}

async fn start(methods: &str, server: &str) -> (Origin, Host) {
    let origin = Origin::start(HashMap::from([(
        "/".to_owned(),
        Page::html("<html><body><h1>Hello</h1></body></html>"),
    )]))
    .await;
    let cfg = config(methods);
    let host = Host::start_with_server(
        HostSpec {
            config: &cfg,
            files: &[("rules.json", RULES)],
        },
        origin.addr,
        server,
    )
    .await;
    (origin, host)
}

/// Sends raw bytes and reads the whole answer (the host closes or the read times out).
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if complete(&String::from_utf8_lossy(&out)) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `text` holds a whole response with a `content-length` body.
fn complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// Sends raw bytes and reads until the host closes the connection.
async fn send_all(addr: SocketAddr, request: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(request).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("blocking")
}

async fn send(addr: SocketAddr, request: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || raw(addr, request))
        .await
        .expect("blocking")
}

fn client_errors(host: &Host) -> u64 {
    host.app
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("veneer_errors_total") && l.contains("source=\"client\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn origin_errors(host: &Host) -> u64 {
    host.app
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("veneer_origin_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn requests_a_proxy_must_not_pass_on_are_refused_as_client_errors() {
    let (_o, host) = start("", "").await;
    let long_method: &'static [u8] = Box::leak(
        format!(
            "{} / HTTP/1.1\r\nhost: site.test\r\n\r\n",
            "A".repeat(10_240)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let cases: [(&str, &'static [u8], &str); 14] = [
        (
            "Content-Length then Transfer-Encoding",
            b"POST /echo-body HTTP/1.1\r\nhost: site.test\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "Transfer-Encoding then Content-Length, after a keep-alive request",
            b"POST /echo-body HTTP/1.1\r\nhost: site.test\r\ncontent-length: 2\r\n\r\nokPOST /echo-body HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "CONNECT",
            b"CONNECT site.test:443 HTTP/1.1\r\nhost: site.test:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            "authority-form GET",
            b"GET site.test:80 HTTP/1.1\r\nhost: site.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "absolute-form disagreeing with Host",
            b"GET http://other.test/ HTTP/1.1\r\nhost: site.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nhost: site.test\r\nhost: evil.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "Transfer-Encoding other than chunked",
            b"POST / HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: identity, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "absolute form without Host",
            b"GET http://site.test/ HTTP/1.1\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "Transfer-Encoding: Chunked",
            b"POST / HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "a 10 KB method",
            long_method,
            "HTTP/1.1 400",
        ),
        (
            "lower-case method",
            b"get / HTTP/1.1\r\nhost: site.test\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "control byte in a header value",
            b"GET / HTTP/1.1\r\nhost: site.test\r\nx-a: a\x01b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "TRACE",
            b"TRACE / HTTP/1.1\r\nhost: site.test\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ];
    for (what, request, status) in cases {
        let mut answer = send(host.addr, request).await;
        if what.contains("after a keep-alive request") {
            // The first request is answered; the second, on the same connection, is refused.
            assert!(answer.starts_with(status), "{what}: {answer}");
            answer = send_all(host.addr, request).await;
            let second = answer
                .match_indices("HTTP/1.1 ")
                .nth(1)
                .map(|(i, _)| &answer[i..])
                .unwrap_or_default();
            assert!(second.starts_with("HTTP/1.1 400"), "{what}: {answer}");
            continue;
        }
        assert!(answer.starts_with(status), "{what}: {answer}");
        assert!(
            !answer.contains("Connection established") && !answer.contains("<h1>"),
            "{what}: nothing from the origin is relayed: {answer}"
        );
    }
    assert_eq!(origin_errors(&host), 0, "{}", host.app.metrics.render());
    assert!(client_errors(&host) >= 11, "{}", host.app.metrics.render());
    // hyper answers a head it cannot parse by itself; the refusal is still counted.
    let metrics = host.app.metrics.render();
    assert!(
        metrics.contains(
            "veneer_errors_total{tenant=\"(unknown)\",source=\"client\",outcome=\"bad_request_head\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_host_before_the_body() {
    let (_o, host) = start("", "").await;
    let addr = host.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(
            b"POST /echo-body HTTP/1.1\r\nhost: site.test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .expect("head");
        // A client waits for the interim answer before it sends the body.
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).expect("interim response");
        let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
        s.write_all(b"hello").expect("body");
        let mut out = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if complete(&String::from_utf8_lossy(&out)) {
                        break;
                    }
                }
            }
        }
        (interim, String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .expect("blocking");
    assert!(answer.0.starts_with("HTTP/1.1 100 Continue"), "{answer:?}");
    assert!(answer.1.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.1.ends_with("read 5 bytes"),
        "the origin got the body: {answer:?}"
    );
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_error_not_the_origins() {
    let (_o, host) = start("", "").await;
    let vectors: [(&str, &[u8]); 3] = [
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bare LF after the chunk size",
            b"POST / HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        ),
        (
            "no CRLF after the chunk data",
            b"POST / HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n",
        ),
    ];
    for (what, request) in vectors {
        let answer = send(host.addr, request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
    }
    assert_eq!(origin_errors(&host), 0, "{}", host.app.metrics.render());
    assert_eq!(
        host.app.metrics.get(
            "veneer_errors_total",
            &[
                ("tenant", "site"),
                ("source", "client"),
                ("outcome", "bad_request_body")
            ]
        ),
        3,
        "{}",
        host.app.metrics.render()
    );
}

#[tokio::test]
async fn options_star_is_answered_by_the_host_and_methods_are_per_tenant() {
    let (_o, host) = start("methods = [\"GET\", \"HEAD\"]\n", "").await;
    let answer = send(host.addr, b"OPTIONS * HTTP/1.1\r\nhost: site.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("allow: get, head, post"),
        "{answer}"
    );
    let answer = send(
        host.addr,
        b"POST / HTTP/1.1\r\nhost: site.test\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, head\r\n"),
        "{answer}"
    );
    assert!(answer.contains("x-request-id: "), "{answer}");
    let answer = send(host.addr, b"GET / HTTP/1.1\r\nhost: site.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // An absolute-form target that agrees with Host is fine.
    let answer = send(
        host.addr,
        b"GET http://site.test/ HTTP/1.1\r\nhost: site.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn forwarding_headers_and_geo_count_only_from_trusted_proxies() {
    let norway: &'static [u8] =
        b"GET / HTTP/1.1\r\nhost: site.test\r\ncf-ipcountry: NO\r\nx-request-id: forged-id\r\nconnection: close\r\n\r\n";
    // An untrusted client claims Norway and a request id: neither is believed.
    let (_o, host) = start("", "").await;
    let answer = send(host.addr, norway).await;
    assert!(answer.contains("<h1>Hello</h1>"), "{answer}");
    assert!(!answer.contains("forged-id"), "{answer}");
    // The same request from a trusted proxy (127.0.0.1 here) is.
    let (_o, trusted) = start("", "trusted_proxies = [\"127.0.0.0/8\"]").await;
    let answer = send(trusted.addr, norway).await;
    assert!(answer.contains("<h1>Hei</h1>"), "{answer}");
    assert!(answer.contains("x-request-id: forged-id"), "{answer}");
}

#[tokio::test]
async fn an_untrusted_clients_forwarded_for_is_replaced_not_extended() {
    let origin = Origin::start(HashMap::new()).await;
    let cfg = "[[tenant]]\nname = \"site\"\nhosts = [\"site.test\"]\norigin = \"{origin}\"\ngeo_header = \"cf-ipcountry\"\n";
    let host = Host::start(
        HostSpec {
            config: cfg,
            files: &[],
        },
        origin.addr,
    )
    .await;
    let answer = send(
        host.addr,
        b"GET /echo-headers HTTP/1.1\r\nhost: site.test\r\nx-forwarded-for: 6.6.6.6\r\ncf-ipcountry: NO\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.contains("x-forwarded-for: 127.0.0.1\n")
            || answer.ends_with("x-forwarded-for: 127.0.0.1"),
        "{answer}"
    );
    assert!(!answer.contains("6.6.6.6"), "{answer}");
    assert!(
        !answer.contains("cf-ipcountry"),
        "the origin does not see the claim: {answer}"
    );
}

/// A raw request from a given loopback source address (127.0.0.x: distinct clients).
async fn send_from(source: &str, addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                out.extend_from_slice(&buf[..n]);
                if complete(&String::from_utf8_lossy(&out)) {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn each_client_address_has_its_own_request_rate() {
    let (_o, host) = start(
        // A slow refill, so the test does not race it on a loaded machine.
        "[tenant.limits]\nrequests_per_second_per_client = 0.1\nburst_per_client = 5\nrefusal_delay_ms = 300\n",
        "",
    )
    .await;
    let get = b"GET / HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n";
    for i in 0..5 {
        let answer = send_from("127.0.0.2", host.addr, get).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
    }
    let started = std::time::Instant::now();
    let answer = send_from("127.0.0.2", host.addr, get).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // The refusal is held back, so a client flooding over one connection gets few answers.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(answer.contains("retry-after: 10"), "{answer}");
    let answer = send_from("127.0.0.3", host.addr, get).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another address is not limited: {answer}"
    );
}

#[tokio::test]
async fn request_bodies_are_capped_and_must_not_stall() {
    let (_o, host) = start(
        "[tenant.limits]\nmax_body_bytes = 100\nbody_read_timeout_ms = 1500\n",
        "",
    )
    .await;
    // Declared too large: refused before the origin is contacted.
    let answer = send(
        host.addr,
        b"POST / HTTP/1.1\r\nhost: site.test\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Chunked, growing past the cap while it streams.
    let mut big = b"POST /echo-body HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..5 {
        big.extend_from_slice(b"32\r\n");
        big.extend_from_slice(&[b'a'; 50]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    let answer = send_from("127.0.0.1", host.addr, &big).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A body that stops arriving: 408 from the body's own timeout (1.5 s), although the
    // origin's timeout in these tests is shorter (0.5 s): it does not run while the client is
    // still sending.
    let answer = send_from(
        "127.0.0.1",
        host.addr,
        b"POST /echo-body HTTP/1.1\r\nhost: site.test\r\ncontent-length: 10\r\nconnection: close\r\n\r\nab",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(origin_errors(&host), 0, "{}", host.app.metrics.render());
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection_or_dawdle_over_its_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_o, host) = start(
        "",
        "max_connections_per_client = 2\nheader_read_timeout_ms = 300",
    )
    .await;
    let held: Vec<_> = futures_connect(host.addr, 2).await;
    // The third connection from the same address is closed at once.
    let mut third = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connect");
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nhost: site.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0, "refused: {}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(
        host.app.metrics.get(
            "veneer_connections_refused_total",
            &[("reason", "per_client_limit")]
        ),
        1
    );
    // The held connections never finished their heads: the host drops them.
    for mut c in held {
        let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
            .await
            .expect("the slow head is cut off")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    // Their slots are free again.
    let answer = send(
        host.addr,
        b"GET / HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn idle_connections_close_and_oversized_heads_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_o, host) = start(
        "",
        "idle_timeout_ms = 400\nmax_headers = 20\nmax_header_bytes = 8192",
    )
    .await;
    // A keep-alive connection that goes quiet after its answer is closed.
    let mut idle = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nhost: site.test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 65536];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // Too many header lines, or too large a head: 431.
    let mut many = String::from("GET / HTTP/1.1\r\nhost: site.test\r\n");
    for i in 0..30 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("connection: close\r\n\r\n");
    let many: &'static [u8] = Box::leak(many.into_bytes().into_boxed_slice());
    let answer = send(host.addr, many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let big = format!(
        "GET / HTTP/1.1\r\nhost: site.test\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let big: &'static [u8] = Box::leak(big.into_bytes().into_boxed_slice());
    let answer = send(host.addr, big).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A normal request is served.
    let answer = send(
        host.addr,
        b"GET / HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_tenant_at_its_concurrency_cap_answers_503_with_retry_after() {
    let (_o, host) = start(
        "[tenant.limits]\nmax_concurrent_requests = 1\nrequests_per_second_per_client = 0\n",
        "",
    )
    .await;
    // /slow holds the one slot until the origin timeout (500 ms in the harness).
    let slow = tokio::spawn(send(
        host.addr,
        b"GET /slow HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let answer = send(
        host.addr,
        b"GET / HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let slow = slow.await.expect("slow request");
    assert!(slow.starts_with("HTTP/1.1 504"), "{slow}");
    // The slot is free again.
    let answer = send(
        host.addr,
        b"GET / HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = host.app.metrics.render();
    assert!(metrics.contains("source=\"host\""), "{metrics}");
    assert!(
        metrics.contains("veneer_origin_response_seconds_count{tenant=\"site\"} 1"),
        "{metrics}"
    );
}

/// `n` connections that send half a request head and stop.
async fn futures_connect(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nhost: si")
            .await
            .expect("write");
        out.push(s);
    }
    // Let the host accept them before the next one arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    out
}

/// The country database tests/run.sh installs (tests/geoip.sh).
fn geoip_db() -> String {
    std::env::var("VENEER_GEOIP_DB").unwrap_or_else(|_| {
        panic!("VENEER_GEOIP_DB is not set: run the tests with `bash tests/run.sh`, which installs the database (tests/geoip.sh)")
    })
}

#[tokio::test]
async fn geo_from_the_database_follows_a_trusted_forwarded_address() {
    let db = geoip_db();
    let geo = veneer::geo::GeoDb::open(std::path::Path::new(&db)).expect("database");
    // Addresses whose country this (pinned) database states.
    assert_eq!(
        geo.country("83.0.0.1".parse().expect("ip")).as_deref(),
        Some("PL")
    );
    assert_eq!(
        geo.country("8.8.8.8".parse().expect("ip")).as_deref(),
        Some("US")
    );
    assert_eq!(geo.country("127.0.0.1".parse().expect("ip")), None);

    let rules = r#"{"segments": {"poland": {"country": "PL"}}}"#;
    let cfg = "[[tenant]]\nname = \"site\"\nhosts = [\"site.test\"]\norigin = \"{origin}\"\nrules = \"rules.json\"\n\
        [[tenant.plugin]]\nname = \"copy\"\npath = \"{plugins}/static_rewrites.wasm\"\n\
        params = { segment = \"poland\", rule1 = \"h1 | set-inner-text | Witaj\" }\n";
    let request: &'static [u8] = b"GET / HTTP/1.1\r\nhost: site.test\r\nx-forwarded-for: 83.0.0.1\r\nconnection: close\r\n\r\n";
    for (server, polish) in [
        (
            format!("geoip = \"{db}\"\ntrusted_proxies = [\"127.0.0.1\"]"),
            true,
        ),
        // From an untrusted peer the forwarded address is not believed: 127.0.0.1 has no
        // country.
        (format!("geoip = \"{db}\""), false),
    ] {
        let origin = Origin::start(HashMap::from([(
            "/".to_owned(),
            Page::html("<html><body><h1>Hello</h1></body></html>"),
        )]))
        .await;
        let host = Host::start_with_server(
            HostSpec {
                config: cfg,
                files: &[("rules.json", rules)],
            },
            origin.addr,
            &server,
        )
        .await;
        let answer = send(host.addr, request).await;
        assert_eq!(
            answer.contains("<h1>Witaj</h1>"),
            polish,
            "{server}: {answer}"
        );
    }
}
