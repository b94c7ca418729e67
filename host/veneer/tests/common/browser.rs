//! Debian's headless Chromium driven through chromedriver, for the tests with a page.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::json;

/// A child process killed with the test.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to a minute) until `ready`.
pub fn wait_for(mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < Duration::from_secs(60), "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// chromedriver on a free port, driving headless Chromium with Veneer at `proxy` as its HTTP
/// proxy (so tenants' host names reach it), with `args` added (window size, language...).
pub async fn browser(proxy: SocketAddr, args: &[&str]) -> (Killed, Client) {
    let on_path = |tool: &str| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(tool))
                .find(|p| p.is_file())
        })
    };
    let missing = |tool: &str| {
        format!(
            "{tool} is not installed: `apt-get install chromium chromium-driver` (tests/run.sh does)"
        )
    };
    let chromium = on_path("chromium").unwrap_or_else(|| panic!("{}", missing("chromium")));
    let chromedriver =
        on_path("chromedriver").unwrap_or_else(|| panic!("{}", missing("chromedriver")));
    let port = super::free_port().port();
    let driver = Killed(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    wait_for(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut all = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        format!("--proxy-server=http://{proxy}"),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": all }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    (driver, client)
}
