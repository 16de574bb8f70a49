//! A small blocking client for a running agent's API, used by the CLI (and the tests).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    base: String,
    http: ureq::Agent,
}

/// A response: status and body (JSON when the body is JSON, else a string value).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The body of a 2xx reply, or an error carrying the API's own message.
    pub fn ok(self) -> Result<Value> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let message = self.body["error"]["message"]
            .as_str()
            .map_or_else(|| self.body.to_string(), str::to_string);
        bail!("agent answered {}: {message}", self.status)
    }
}

impl Client {
    pub fn new(base_url: &str) -> Self {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `body` as-is (it need not be valid JSON: tests send garbage on purpose).
    pub fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Reply> {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self.http.get(&url).call(),
            ("DELETE", _) => self.http.delete(&url).call(),
            ("POST", Some(body)) => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .send(body),
            ("POST", None) => self.http.post(&url).send_empty(),
            ("PUT", Some(body)) => self
                .http
                .put(&url)
                .header("content-type", "application/json")
                .send(body),
            _ => bail!("unsupported method {method}"),
        };
        let mut response = response.with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply { status, body })
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.send("POST", path, Some(body.to_string().as_bytes()))
    }

    pub fn delete(&self, path: &str) -> Result<Reply> {
        self.send("DELETE", path, None)
    }

    /// Takes a backup of the running agent into `dir`: streamed to a hidden file there,
    /// fsynced, checked whole (structure and digest, and the digest against the one the agent
    /// sent), and only then renamed to the name the agent gave it. Returns its path and what
    /// it holds.
    pub fn backup_into(&self, dir: &Path) -> Result<(PathBuf, crate::backup::Summary)> {
        use std::io::{Read, Write};
        // A backup of a large store takes as long as it takes: no overall deadline, only one
        // to connect and one for the agent to have written the snapshot.
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(3600)))
            .build()
            .into();
        let url = format!("{}/v1/backup", self.base);
        let mut response = http.get(&url).call().with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
            Reply { status, body }.ok()?;
            bail!("agent answered {status} to GET /v1/backup");
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let expected_sha = header(crate::api::BACKUP_SHA256_HEADER)
            .with_context(|| format!("the agent sent no {} header", crate::api::BACKUP_SHA256_HEADER))?;
        let length: u64 = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let name = header("content-disposition")
            .and_then(|d| {
                d.split("filename=\"")
                    .nth(1)
                    .map(|n| n.trim_end_matches('"').to_string())
            })
            .filter(|n| !n.is_empty() && !n.contains(['/', '\\']) && !n.starts_with('.'))
            .unwrap_or_else(|| format!("murmur-{}.backup", crate::time::now_ms()));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let partial = dir.join(format!(".murmur-backup-{}.partial", std::process::id()));
        let done = dir.join(&name);
        if done.exists() {
            bail!("{} already exists", done.display());
        }
        let received = (|| -> Result<crate::backup::Summary> {
            let mut out =
                std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
            let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
            let progress = crate::progress::Progress::new(length, "backup bytes");
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut chunk).context("receiving the backup")?;
                if n == 0 {
                    break;
                }
                out.write_all(&chunk[..n])
                    .with_context(|| format!("writing {}", partial.display()))?;
                progress.inc(n as u64);
            }
            progress.finish();
            out.sync_all()
                .with_context(|| format!("syncing {}", partial.display()))?;
            let summary = crate::backup::verify_file(&partial).context("checking the received backup")?;
            if summary.sha256 != expected_sha {
                bail!(
                    "the received backup's SHA-256 is {}, the agent sent {expected_sha}",
                    summary.sha256
                );
            }
            Ok(summary)
        })();
        let summary = match received {
            Ok(summary) => summary,
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                return Err(error);
            }
        };
        std::fs::rename(&partial, &done)
            .with_context(|| format!("renaming {} to {}", partial.display(), done.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok((done, summary))
    }
}
