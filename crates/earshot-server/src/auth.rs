//! Optional API keys: query keys open `/v1/*`, admin keys open `/v1/*` and `/admin/*`.
//!
//! Keys come from `--api-keys FILE` (lines `query KEY` / `admin KEY`, `#` comments) and the
//! environment (`EARSHOT_QUERY_KEYS`, `EARSHOT_ADMIN_KEYS`, comma-separated). A request
//! presents one as `Authorization: Bearer KEY` or `x-api-key: KEY`; it is compared with every
//! configured key in constant time (no early exit on the first differing byte, and every key
//! is compared). Keys are never logged. With no key configured, `/v1/*` is open and
//! `/admin/*` answers only clients connecting from a loopback address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::error_code::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Query,
    Admin,
}

/// The configured keys. `Debug` does not show them.
#[derive(Default, Clone)]
pub struct Keys {
    query: Vec<Vec<u8>>,
    admin: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keys {{ {} query, {} admin }}",
            self.query.len(),
            self.admin.len()
        )
    }
}

impl Keys {
    /// Reads `file` (if given) and the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut keys = Keys::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-keys {}", path.display()))?;
            keys.parse_file(&text)
                .with_context(|| format!("--api-keys {}", path.display()))?;
            warn_if_readable_by_others(path);
        }
        for (var, role) in [
            ("EARSHOT_QUERY_KEYS", Role::Query),
            ("EARSHOT_ADMIN_KEYS", Role::Admin),
        ] {
            if let Ok(v) = std::env::var(var) {
                for k in v.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    keys.add(role, k)
                        .with_context(|| format!("environment variable {var}"))?;
                }
            }
        }
        Ok(keys)
    }

    fn parse_file(&mut self, text: &str) -> anyhow::Result<()> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let role = match words.next() {
                Some("query") => Role::Query,
                Some("admin") => Role::Admin,
                // The line may be a bare key: never echo it.
                _ => anyhow::bail!("line {}: expected `query KEY` or `admin KEY`", i + 1),
            };
            let (Some(key), None) = (words.next(), words.next()) else {
                anyhow::bail!(
                    "line {}: expected exactly one key after the role (keys hold no spaces)",
                    i + 1
                );
            };
            self.add(role, key)
                .with_context(|| format!("line {}", i + 1))?;
        }
        Ok(())
    }

    fn add(&mut self, role: Role, key: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            key.len() >= 8,
            "an API key must be at least 8 characters (16+ random ones recommended)"
        );
        anyhow::ensure!(
            key.bytes().all(|b| b.is_ascii_graphic()),
            "an API key must be printable ASCII without spaces"
        );
        match role {
            Role::Query => self.query.push(key.as_bytes().to_vec()),
            Role::Admin => self.admin.push(key.as_bytes().to_vec()),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.query.is_empty() && self.admin.is_empty()
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.query.len(), self.admin.len())
    }

    /// The role of `presented`, comparing against every key in constant time.
    fn role(&self, presented: &[u8]) -> Option<Role> {
        let mut admin = subtle::Choice::from(0);
        for k in &self.admin {
            admin |= k.as_slice().ct_eq(presented);
        }
        let mut query = subtle::Choice::from(0);
        for k in &self.query {
            query |= k.as_slice().ct_eq(presented);
        }
        if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(query) {
            Some(Role::Query)
        } else {
            None
        }
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            tracing::warn!("{} is readable by every user: chmod 600 it", path.display());
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// The key a request presents, if any.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

/// Checks the key `headers` present for `need`, when keys are configured (the loopback rule
/// of admin requests without keys is [`check`]'s). Shared by both transports: gRPC
/// metadata are these headers.
pub fn check_key(keys: &Keys, headers: &HeaderMap, need: Role) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let Some(key) = presented(headers) else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this server needs an API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
        ));
    };
    match (keys.role(key), need) {
        (None, _) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the API key is not valid",
        )),
        (Some(Role::Query), Role::Admin) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "a query key cannot use admin endpoints; use an admin key",
        )),
        _ => Ok(()),
    }
}

/// Checks `need` for this request; `None` lets it through.
fn check(keys: &Keys, req: &Request, need: Role) -> Option<Response> {
    if keys.is_empty() && need == Role::Admin {
        let loopback = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(a)| a.ip().is_loopback());
        if !loopback {
            return Some(
                ApiError::new(
                    ErrorCode::Forbidden,
                    "admin endpoints answer only loopback clients unless admin API keys are configured",
                )
                .into_response(),
            );
        }
    }
    let e = check_key(keys, req.headers(), need).err()?;
    let unauthorized = e.code == ErrorCode::Unauthorized;
    let mut r = e.into_response();
    if unauthorized {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"earshot\""),
        );
    }
    Some(r)
}

/// Route layer for `/v1/*`.
pub async fn query(State(keys): State<Arc<Keys>>, req: Request, next: Next) -> Response {
    match check(&keys, &req, Role::Query) {
        Some(r) => r,
        None => next.run(req).await,
    }
}

/// Route layer for `/admin/*`.
pub async fn admin(State(keys): State<Arc<Keys>>, req: Request, next: Next) -> Response {
    match check(&keys, &req, Role::Admin) {
        Some(r) => r,
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_and_roles() {
        let mut k = Keys::default();
        k.parse_file("# keys\n\nquery qqqqqqqq1\n  admin aaaaaaaa1  \nquery qqqqqqqq2\n")
            .unwrap();
        assert_eq!(k.counts(), (2, 1));
        assert_eq!(k.role(b"qqqqqqqq2"), Some(Role::Query));
        assert_eq!(k.role(b"aaaaaaaa1"), Some(Role::Admin));
        assert_eq!(k.role(b"aaaaaaaa"), None);
        assert_eq!(k.role(b""), None);
        let e = Keys::default()
            .parse_file("secretsecret\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secretsecret"), "{e}");
        assert!(Keys::default().parse_file("query short\n").is_err());
        assert!(Keys::default().parse_file("admin a b\n").is_err());
        assert!(!format!("{k:?}").contains("qqqq"));
    }

    #[test]
    fn presented_keys() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(presented(&h), Some(&b"k1"[..]));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  k2"),
        );
        assert_eq!(presented(&h), Some(&b"k2"[..]));
    }
}
