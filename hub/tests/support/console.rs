//! Test support for the web console: a serving hub started in-process with its console on a loopback port, and a
//! plain HTTP/1.1 client (one request per connection) to talk to it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use outpost_attestation::identity::Identity;
use outpost_hub::admin::Handler;
use outpost_hub::clock::{SystemClock, SystemRng};
use outpost_hub::config::{CONFIG_FILE, HubConfig};
use outpost_hub::console::ConsoleConfig;
use outpost_hub::service::{self, Hub, ServiceConfig};

use super::TestHub;

/// A serving hub with its console; the service stops when this is dropped.
pub struct ServedConsole {
    runtime: Option<tokio::runtime::Runtime>,
    /// The hub the service runs against (its open store).
    pub hub: Arc<Hub>,
    /// Where the console listens.
    pub addr: SocketAddr,
}

impl Drop for ServedConsole {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts the service on `hub` with `handler` (the CLI's `cli::Commands`) and a console on 127.0.0.1.
pub fn serve(hub: &TestHub, handler: Arc<dyn Handler<Hub>>) -> ServedConsole {
    serve_with(hub, handler, |_| {})
}

/// [`serve`], with the console's configuration changed by `adjust` first.
pub fn serve_with(
    hub: &TestHub,
    handler: Arc<dyn Handler<Hub>>,
    adjust: impl FnOnce(&mut ConsoleConfig),
) -> ServedConsole {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = ServiceConfig::new(
        &hub.dir(),
        HubConfig::load(&hub.dir().join(CONFIG_FILE)).unwrap(),
        Identity::from_seed([1; 32]),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.admin = Some(handler);
    let mut console = ConsoleConfig::new("127.0.0.1:0".parse().unwrap());
    adjust(&mut console);
    config.console = Some(console);
    let running = runtime.block_on(service::start(config, Arc::new(SystemClock), Box::new(SystemRng))).unwrap();
    let url = running.console_url().unwrap();
    let addr = url.split("://").nth(1).unwrap().trim_end_matches('/').parse().unwrap();
    let hub = running.hub().clone();
    runtime.spawn(running.run(std::future::pending()));
    ServedConsole { runtime: Some(runtime), hub, addr }
}

/// One HTTP response.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
}

impl Reply {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// A plain HTTP/1.1 request with an optional cookie and urlencoded form.
pub fn request(addr: SocketAddr, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_owned(), body: body.to_owned() }
}

/// Posts the login form as a browser does: fetches the form first (its token and the cookie repeating it).
pub fn post_login(addr: SocketAddr, user: &str, password: &str) -> Reply {
    let form = request(addr, "GET", "/login", None, None);
    assert_eq!(form.status, 200, "{}", form.body);
    let cookie = form.header("set-cookie").unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let token = form.body.split("name=\"login_csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    request(addr, "POST", "/login", Some(&cookie), Some(&format!("user={user}&password={password}&login_csrf={token}")))
}

/// Logs `user` in with `password`; returns the session cookie (`name=value`).
pub fn login(addr: SocketAddr, user: &str, password: &str) -> String {
    let r = post_login(addr, user, password);
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_owned()
}
