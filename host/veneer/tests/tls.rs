//! TLS against the real `veneer` binary with a real TLS client (tokio-rustls): two tenants'
//! certificates chosen by SNI, HTTP/2 and HTTP/1.1 by ALPN, an unknown name refused, and a
//! renewed certificate picked up without a restart.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Veneer test CA");
    let cert = params.self_signed(&key).expect("ca cert");
    Ca { cert, key }
}

/// Writes a certificate for `host` signed by `ca` to DIR/NAME.{crt,key}.
fn leaf(ca: &Ca, host: &str, dir: &Path, name: &str) -> CertificateDer<'static> {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec![host.to_owned()]).expect("params");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    // Write to a temporary name and rename, as a certificate manager would.
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, key.serialize_pem()).expect("key");
    std::fs::rename(&tmp, dir.join(format!("{name}.key"))).expect("rename");
    std::fs::write(&tmp, cert.pem()).expect("cert");
    std::fs::rename(&tmp, dir.join(format!("{name}.crt"))).expect("rename");
    cert.der().clone()
}

struct Veneer(Child);

impl Drop for Veneer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connector(ca: &Ca, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Connects to `addr` as `host`; the negotiated ALPN protocol, the server's certificate and
/// the body of `GET /`.
async fn fetch(
    addr: SocketAddr,
    ca: &Ca,
    host: &str,
    alpn: &[&[u8]],
) -> std::io::Result<(Vec<u8>, CertificateDer<'static>, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let tls = connector(ca, alpn).connect(name, tcp).await?;
    let (_, session) = tls.get_ref();
    let protocol = session.alpn_protocol().unwrap_or_default().to_vec();
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| std::io::Error::other("no certificate"))?;
    let io = TokioIo::new(tls);
    let req = http::Request::builder()
        .uri(format!("https://{host}/"))
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    let response = if protocol == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        send.send_request(req)
            .await
            .map_err(std::io::Error::other)?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        send.send_request(req)
            .await
            .map_err(std::io::Error::other)?
    };
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((protocol, cert, String::from_utf8_lossy(&body).into_owned()))
}

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veneer-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_protocols_by_alpn_and_renewal_without_restart() {
    let dir = dir();
    let ca = ca();
    let shop_cert = leaf(&ca, "shop.test", &dir, "shop");
    let rival_cert = leaf(&ca, "rival.test", &dir, "rival");
    let origin = common::origin();
    let (listen, tls) = (common::free_port(), common::free_port());
    let config = format!(
        "[server]\nlisten = \"{listen}\"\ntls_listen = \"{tls}\"\n\
         cookie_secret = \"0123456789abcdef0123456789abcdef\"\ncache_dir = \"{cache}\"\n\n\
         [[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\"]\norigin = \"http://{origin}\"\n\
         tls_cert = \"shop.crt\"\ntls_key = \"shop.key\"\n\n\
         [[tenant]]\nname = \"rival\"\nhosts = [\"rival.test\"]\norigin = \"http://{origin}\"\n\
         tls_cert = \"rival.crt\"\ntls_key = \"rival.key\"\n",
        cache = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/veneer-test-cache")
            .display(),
    );
    std::fs::write(dir.join("veneer.toml"), config).expect("config");
    let _veneer = Veneer(
        Command::new(env!("CARGO_BIN_EXE_veneer"))
            .args(["serve", "--config"])
            .arg(dir.join("veneer.toml"))
            .env("VENEER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start veneer"),
    );
    let started = Instant::now();
    while tokio::net::TcpStream::connect(tls).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "veneer did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each tenant gets its own certificate (the client verifies it against the name), h2
    // when asked for, HTTP/1.1 otherwise.
    let (protocol, cert, body) = fetch(tls, &ca, "shop.test", &[b"h2", b"http/1.1"])
        .await
        .expect("shop over h2");
    assert_eq!(protocol, b"h2");
    assert_eq!(cert, shop_cert);
    assert!(body.contains("<p>Hello</p>"), "{body}");
    let (protocol, cert, body) = fetch(tls, &ca, "rival.test", &[b"http/1.1"])
        .await
        .expect("rival over HTTP/1.1");
    assert_eq!(protocol, b"http/1.1");
    assert_eq!(cert, rival_cert);
    assert!(body.contains("<p>Hello</p>"), "{body}");
    // A name no tenant has: no certificate, no connection.
    assert!(fetch(tls, &ca, "other.test", &[b"h2"]).await.is_err());

    // A renewed certificate is served without a restart.
    let renewed = leaf(&ca, "shop.test", &dir, "shop");
    let started = Instant::now();
    loop {
        let (_, cert, _) = fetch(tls, &ca, "shop.test", &[b"h2"])
            .await
            .expect("shop during renewal");
        if cert == renewed {
            break;
        }
        assert_eq!(
            cert, shop_cert,
            "the old certificate until the new one is read"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken renewal keeps the working certificate.
    std::fs::write(dir.join("shop.crt"), "not a certificate").expect("break");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, cert, _) = fetch(tls, &ca, "shop.test", &[b"h2"])
        .await
        .expect("shop after a broken renewal");
    assert_eq!(cert, renewed);
    let _ = std::fs::remove_dir_all(dir);
}
