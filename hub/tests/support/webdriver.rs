//! Test support for driving a real browser: chromedriver (Debian's `chromium-driver`) started on a loopback port
//! and spoken to with the W3C WebDriver protocol (JSON over HTTP/1.1) — a few calls, no client crate (fantoccini
//! needs the MPL-2.0 `webdriver` crate, outside `deny.toml`'s licences).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver (killed when dropped).
pub struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where Debian puts the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// chromedriver from `chromium-driver`.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Driver {
    /// Starts chromedriver and waits until it answers. Panics with what to install when it is missing.
    #[allow(clippy::disallowed_methods)] // waiting for a real process
    pub fn start() -> Driver {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "this test drives a real browser: apt-get install -y chromium chromium-driver"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Chromium does not start under libfaketime (CI runs the tests again 400 days ahead through LD_PRELOAD):
        // the browser keeps the real clock; the hub under test keeps the faked one, and sessions expire by it.
        let child = Command::new(CHROMEDRIVER)
            .env_remove("LD_PRELOAD")
            .env_remove("FAKETIME")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(driver.addr).is_ok()
                && driver.call("GET", "/status", None).ok().is_some_and(|v| v["value"]["ready"] == true)
            {
                return driver;
            }
            assert!(std::time::Instant::now() < deadline, "chromedriver did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command; the response's JSON, or the error it carries.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut s = std::net::TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open whatever the request says: read the head, then Content-Length
        // bytes (it never answers chunked).
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before the response head".into());
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no Content-Length in {head}"))?;
        while raw.len() < head_end + len {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before the response body".into());
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&raw[head_end..head_end + len]).into_owned();
        let body = body.as_str();
        let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
        if v["value"].get("error").is_some() {
            return Err(format!("{method} {path}: {}", v["value"]));
        }
        Ok(v)
    }

    /// A new headless Chromium session with a window of `width` × `height`.
    pub fn session(&self, width: u32, height: u32) -> Session<'_> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"), "--hide-scrollbars"],
            },
        }}});
        let v = self.call("POST", "/session", Some(&caps)).unwrap();
        let id = v["value"]["sessionId"].as_str().unwrap().to_owned();
        Session { driver: self, id }
    }
}

/// One browser session (closed when dropped).
pub struct Session<'d> {
    driver: &'d Driver,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.driver.call("DELETE", &format!("/session/{}", self.id), None);
    }
}

/// An element of the current page.
pub struct Element<'s, 'd> {
    session: &'s Session<'d>,
    id: String,
}

impl<'d> Session<'d> {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.id);
        let mut v = self.driver.call(method, &path, body.as_ref()).unwrap();
        v["value"].take()
    }

    /// Loads `url` and waits for it.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The page's HTML as the browser holds it.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching a CSS selector; panics naming it if there is none.
    pub fn find(&self, css: &str) -> Element<'_, 'd> {
        let v = self.driver.call(
            "POST",
            &format!("/session/{}/element", self.id),
            Some(&json!({"using": "css selector", "value": css})),
        );
        let v = v.unwrap_or_else(|e| panic!("no element `{css}` on {}: {e}", self.url()));
        let id = v["value"][ELEMENT].as_str().unwrap_or_else(|| panic!("`{css}`: no element in {v}")).to_owned();
        Element { session: self, id }
    }

    /// How many elements match a CSS selector.
    pub fn count(&self, css: &str) -> usize {
        let v = self.cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array().map_or(0, Vec::len)
    }

    /// Runs `script` in the page (synchronously) and returns its value.
    pub fn execute(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Forgets every cookie (logs the browser out).
    pub fn clear_cookies(&self) {
        self.cmd("DELETE", "/cookie", None);
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = decode_base64(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Element<'_, '_> {
    /// Clicks it (a submit button submits its form, and the call returns after the navigation).
    pub fn click(&self) {
        self.session.cmd("POST", &format!("/element/{}/click", self.id), Some(json!({})));
    }

    /// Types `text` into it.
    pub fn send_keys(&self, text: &str) {
        self.session.cmd("POST", &format!("/element/{}/value", self.id), Some(json!({ "text": text })));
    }

    /// Its rendered text.
    pub fn text(&self) -> String {
        self.session.cmd("GET", &format!("/element/{}/text", self.id), None).as_str().unwrap_or_default().to_owned()
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len()]);
    }
    out
}
