//! The HTTP client of the hub's API: the one place that builds an HTTP client (TLS with rustls and
//! the `ring` provider, timeouts), sends the token, and turns error responses into one-line
//! errors that quote the hub's message.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use proto::api::ErrorBody;
use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Environment variable with the default hub URL.
pub const HUB_ENV: &str = "EDGEMLOPS_HUB";
/// Environment variable with the default API token.
pub const TOKEN_ENV: &str = "EDGEMLOPS_TOKEN";

/// A client of one hub, authenticated with one API token.
#[derive(Debug)]
pub struct HubClient {
    http: Client,
    base: String,
    token: String,
}

impl HubClient {
    /// A client of `base` (`http://host:port`) sending `token`.
    pub fn new(base: &str, token: &str) -> Result<Self> {
        // reqwest is built without a default TLS provider (no aws-lc-rs); this process uses ring.
        // Installing twice is harmless: the first provider stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Uploads of large packages take long; the hub bounds their size.
            .timeout(Duration::from_secs(3600))
            .user_agent(concat!("edgemlops/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("creating the HTTP client")?;
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("hub URL '{base}' must start with http:// or https://");
        }
        Ok(Self {
            http,
            base,
            token: token.to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, what: &str, request: RequestBuilder) -> Result<Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("{what}: cannot reach the hub at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| text.trim().chars().take(300).collect());
        bail!("{what}: the hub answered {status}: {message}");
    }

    fn json<T: DeserializeOwned>(what: &str, response: Response) -> Result<T> {
        response
            .json()
            .with_context(|| format!("{what}: the hub's answer is not the expected JSON"))
    }

    /// `GET path` → JSON.
    pub fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T> {
        Self::json(what, self.send(what, self.http.get(self.url(path)))?)
    }

    /// `GET path` with query parameters → JSON.
    pub fn get_query<T: DeserializeOwned, Q: Serialize>(
        &self,
        what: &str,
        path: &str,
        query: &Q,
    ) -> Result<T> {
        let qs = serde_urlencoded_lite(query)?;
        let url = if qs.is_empty() {
            self.url(path)
        } else {
            format!("{}?{qs}", self.url(path))
        };
        Self::json(what, self.send(what, self.http.get(url))?)
    }

    /// `POST path` with a JSON body → JSON.
    pub fn post<T: DeserializeOwned, B: Serialize>(&self, what: &str, path: &str, body: &B) -> Result<T> {
        Self::json(what, self.send(what, self.http.post(self.url(path)).json(body))?)
    }

    /// `POST path` with a body of `content_type` (a CSV file) → JSON.
    pub fn post_bytes<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<T> {
        let request = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        Self::json(what, self.send(what, request)?)
    }

    /// `PUT path` with a JSON body → JSON.
    pub fn put<T: DeserializeOwned, B: Serialize>(&self, what: &str, path: &str, body: &B) -> Result<T> {
        Self::json(what, self.send(what, self.http.put(self.url(path)).json(body))?)
    }

    /// `DELETE path`.
    pub fn delete(&self, what: &str, path: &str) -> Result<()> {
        self.send(what, self.http.delete(self.url(path)))?;
        Ok(())
    }

    /// `POST path` streaming `len` bytes from `reader` → JSON.
    pub fn upload<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        reader: impl Read + Send + 'static,
        len: u64,
    ) -> Result<T> {
        let request = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, proto::api::PACKAGE_CONTENT_TYPE)
            .body(Body::sized(reader, len));
        Self::json(what, self.send(what, request)?)
    }
}

/// Query string of a flat struct of optional scalars (what the API's queries are), without a
/// form-encoding dependency.
fn serde_urlencoded_lite<Q: Serialize>(query: &Q) -> Result<String> {
    let value = serde_json::to_value(query).context("encoding the query")?;
    let mut parts = Vec::new();
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            parts.push(format!("{}={}", encode(&k), encode(&text)));
        }
    }
    Ok(parts.join("&"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_skip_absent_values_and_encode_the_rest() {
        let q = proto::api::TelemetryQuery {
            device: Some("cam 1".into()),
            from: Some("2024-01-01T00:00:00+01:00".into()),
            active: Some(true),
            ..Default::default()
        };
        assert_eq!(
            serde_urlencoded_lite(&q).unwrap(),
            "active=true&device=cam%201&from=2024-01-01T00%3A00%3A00%2B01%3A00"
        );
    }
}
