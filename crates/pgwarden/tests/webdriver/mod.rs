//! Just enough of the W3C WebDriver protocol to drive a headless Chromium
//! through chromedriver: a session, navigation, scripts, screenshots and the
//! browser's console log. Spoken over plain HTTP/1.1 on a fresh connection
//! per command, so no WebDriver crate (and its HTTP stack) is needed.
//!
//! Chromium comes from Debian's `chromium` and `chromium-driver`
//! (scripts/setup.sh). As root it runs only with `--no-sandbox`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on one WebDriver command (a navigation included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A chromedriver process and one browser session in it; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    /// Starts chromedriver on `port` and a headless Chromium with a private
    /// profile under `dir` (chromedriver's verbose log beside it), with a
    /// window of `width` x `height`.
    pub async fn start(dir: &Path, port: u16, width: u32, height: u32) -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install chromium and chromium-driver (scripts/setup.sh)"
            );
        }
        // Each browser's log and profile in a directory of its own.
        let home = dir.join(format!("browser-{port}"));
        std::fs::create_dir_all(&home).unwrap();
        let log = std::fs::File::create(home.join("chromedriver.log")).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--verbose")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((_, v)) = browser.call("GET", "/status", None).await {
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile: PathBuf = home.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let (status, v) = browser.call("POST", "/session", Some(caps)).await.unwrap();
        assert_eq!(status, 200, "new WebDriver session refused: {v}");
        browser.session = v["value"]["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// Starts a browser (see [`Browser::start`]) that runs `hook` in every
    /// document and opens `url`. Chromium's renderer has been seen to die
    /// on the first navigation on a loaded machine ("unable to receive
    /// message from renderer"), before any page script ran: that is retried
    /// once with a fresh browser, and said so.
    pub async fn open(dir: &Path, width: u32, height: u32, hook: &str, url: &str) -> Browser {
        let mut attempt = 1;
        loop {
            let b = Browser::start(dir, crate::common::free_port(), width, height).await;
            b.on_new_document(hook).await;
            match b
                .try_command("POST", "/url", Some(json!({"url": url})))
                .await
            {
                Ok(_) => return b,
                Err(e) if attempt == 1 => {
                    eprintln!(
                        "Chromium failed to open {url} ({e}); retrying once with a new browser"
                    );
                    attempt += 1;
                }
                Err(e) => panic!("Chromium failed to open {url} twice: {e}"),
            }
        }
    }

    /// One command on the session; its `value`, or the WebDriver error.
    pub async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_command(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    async fn try_command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let path = format!("/session/{}{path}", self.session);
        let (status, v) = self.call(method, &path, body).await.unwrap();
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body: `return ...`) in the page.
    pub async fn execute(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs `source` in every document before its own scripts (through
    /// Chromium's DevTools protocol, which chromedriver relays).
    pub async fn on_new_document(&self, source: &str) {
        self.command(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": source}})),
        )
        .await;
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.command("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The browser's console entries since the last call (chromedriver's
    /// log endpoint).
    pub async fn console_log(&self) -> Vec<Value> {
        let v = self
            .command("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Polls `script` every 100 ms until it returns a truthy value, and
    /// returns it; panics with `what` after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.execute(script).await;
            let truthy = !(v.is_null()
                || v == false
                || v == 0
                || v.as_str() == Some("")
                || v.as_array().is_some_and(|a| a.is_empty()));
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} in the page"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> std::io::Result<(u16, Value)> {
        let port = self.port;
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
                 Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).await?;
            read_answer(&mut stream).await
        };
        let (status, body) = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no WebDriver answer")
            })??;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad WebDriver answer");
        let value = serde_json::from_str(&body).map_err(|_| bad())?;
        Ok((status, value))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; chromedriver is ours to kill.
        if !self.session.is_empty() {
            use std::io::{Read, Write};
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.session, self.port
            );
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.write_all(request.as_bytes());
                let _ = s.read(&mut [0u8; 4096]);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads one answer: chromedriver keeps the connection open whatever the
/// request says, so the body ends where its Content-Length says (or, when
/// chunked, at the last chunk).
async fn read_answer(stream: &mut tokio::net::TcpStream) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad WebDriver answer: {what}"),
        )
    };
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(bad("closed before the headers ended"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let length: Option<usize> = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse().ok())
    });
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    loop {
        let body = &raw[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    Ok((status, if chunked { dechunk(&body) } else { body }))
}

/// Decodes a chunked body.
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let (Some(chunk), Some(next)) = (rest.get(..size), rest.get(size..)) else {
            break;
        };
        out.push_str(chunk);
        raw = next.trim_start_matches("\r\n");
    }
    out
}
