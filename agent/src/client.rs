//! A small blocking client for a running agent's API, used by the CLI (and the tests).

use std::time::Duration;

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
}
