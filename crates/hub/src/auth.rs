//! Who may do what: users with roles and their API tokens ([`Users`]), and the scoped, expiring
//! tokens of package download URLs ([`DownloadSigner`]). Device credentials are the device
//! registry's (`crate::devices`).
//!
//! Secrets are stored only as sha256 hashes ([`crate::stdx::sha256_hex`]); each is shown once, in
//! the response that creates it. The first start creates the `admin` user with either the
//! configured token or a random one that the caller prints once.
//!
//! Download tokens are stateless: an HMAC-SHA256 over (package digest, device, expiry) with a key
//! kept in the database, so a URL works without headers (thin-edge cannot send any), only for
//! that package, and only until it expires. A re-sent command carries a fresh URL.

use hmac::{Hmac, Mac};
use proto::Timestamp;
use proto::api::{Role, TokenCreated, TokenInfo, UserInfo};
use sha2::Sha256;
use sqlx::Row;

use crate::db::Db;
use crate::error::{DbContext, HubError};
use crate::stdx::{hex, new_id, new_secret, now_ms, random_bytes, sha256_hex, ts};

/// Prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "emh_";
/// Prefix of device tokens.
pub const DEVICE_TOKEN_PREFIX: &str = "emd_";
/// The user created at the first start.
pub const ADMIN_USER: &str = "admin";

/// The authenticated caller of an API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User name.
    pub user: String,
    /// The user's role.
    pub role: Role,
}

fn role_of(s: &str) -> Role {
    // Roles are written only by this module from the enum; an unknown value means a newer hub
    // wrote it, and the least privilege is the safe reading.
    s.parse().unwrap_or(Role::Viewer)
}

/// Users, their roles and API tokens.
#[derive(Clone, Debug)]
pub struct Users {
    db: Db,
}

impl Users {
    /// The users stored in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Makes sure the `admin` user exists with a usable token. Returns a newly generated token, which
    /// the caller prints once; `None` when the configured token is used or an admin token exists.
    pub async fn bootstrap_admin(&self, configured_token: &str) -> Result<Option<String>, HubError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO users (name, role, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(ADMIN_USER)
        .bind(Role::Admin.as_str())
        .bind(now)
        .execute(self.db.pool())
        .await
        .db("creating the admin user")?;
        if !configured_token.is_empty() {
            let hash = sha256_hex(configured_token.as_bytes());
            sqlx::query(
                "INSERT INTO api_tokens (id, user_name, token_hash, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (token_hash) DO NOTHING",
            )
            .bind(new_id("t-"))
            .bind(ADMIN_USER)
            .bind(hash)
            .bind(now)
            .execute(self.db.pool())
            .await
            .db("storing the configured admin token")?;
            return Ok(None);
        }
        let existing: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE user_name = $1 AND revoked_at IS NULL")
                .bind(ADMIN_USER)
                .fetch_one(self.db.pool())
                .await
                .db("looking for admin tokens")?;
        if existing > 0 {
            return Ok(None);
        }
        let created = self.create_token(ADMIN_USER).await?;
        Ok(Some(created.token))
    }

    /// The caller behind `Authorization: Bearer <token>`.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, HubError> {
        let Some(header) = header else {
            return Err(HubError::Unauthorized(
                "missing API token (send Authorization: Bearer <token>)".into(),
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| HubError::Unauthorized("Authorization header must be 'Bearer <token>'".into()))?;
        let row = sqlx::query(
            "SELECT u.name, u.role FROM api_tokens t JOIN users u ON u.name = t.user_name \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        )
        .bind(sha256_hex(token.as_bytes()))
        .fetch_optional(self.db.pool())
        .await
        .db("checking an API token")?;
        let row = row.ok_or_else(|| HubError::Unauthorized("invalid or revoked API token".into()))?;
        Ok(Caller {
            user: row.get(0),
            role: role_of(&row.get::<String, _>(1)),
        })
    }

    /// Creates a user and its first token.
    pub async fn create_user(&self, name: &str, role: Role) -> Result<TokenCreated, HubError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(HubError::BadRequest(format!(
                "invalid user name '{name}': 1 to 64 letters, digits, '-', '_', '.', '@'"
            )));
        }
        let done = sqlx::query(
            "INSERT INTO users (name, role, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(now_ms())
        .execute(self.db.pool())
        .await
        .db("creating a user")?;
        if done.rows_affected() == 0 {
            return Err(HubError::Conflict(format!("user '{name}' already exists")));
        }
        self.create_token(name).await
    }

    /// Every user.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, HubError> {
        let rows = sqlx::query("SELECT name, role, created_at FROM users ORDER BY name")
            .fetch_all(self.db.pool())
            .await
            .db("listing users")?;
        Ok(rows
            .iter()
            .map(|r| UserInfo {
                name: r.get(0),
                role: role_of(&r.get::<String, _>(1)),
                created_at: ts(r.get(2)),
            })
            .collect())
    }

    /// A new API token for an existing user.
    pub async fn create_token(&self, user: &str) -> Result<TokenCreated, HubError> {
        let role: Option<String> = sqlx::query_scalar("SELECT role FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(self.db.pool())
            .await
            .db("looking up a user")?;
        let role = role.ok_or_else(|| HubError::not_found("user", user))?;
        let token = new_secret(API_TOKEN_PREFIX);
        let id = new_id("t-");
        sqlx::query("INSERT INTO api_tokens (id, user_name, token_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(user)
            .bind(sha256_hex(token.as_bytes()))
            .bind(now_ms())
            .execute(self.db.pool())
            .await
            .db("storing an API token")?;
        Ok(TokenCreated {
            id,
            user: user.to_owned(),
            role: role_of(&role),
            token,
        })
    }

    /// Every API token (without secrets).
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, HubError> {
        let rows = sqlx::query(
            "SELECT id, user_name, created_at, revoked_at FROM api_tokens ORDER BY created_at, id",
        )
        .fetch_all(self.db.pool())
        .await
        .db("listing API tokens")?;
        Ok(rows
            .iter()
            .map(|r| TokenInfo {
                id: r.get(0),
                user: r.get(1),
                created_at: ts(r.get(2)),
                revoked_at: r.get::<Option<i64>, _>(3).map(ts),
            })
            .collect())
    }

    /// Revokes an API token.
    pub async fn revoke_token(&self, id: &str) -> Result<(), HubError> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(self.db.pool())
            .await
            .db("revoking an API token")?;
        if done.rows_affected() == 0 {
            return Err(HubError::not_found("active API token", id));
        }
        Ok(())
    }
}

/// Fails with 403 unless `caller` has at least `needed`.
pub fn require(caller: &Caller, needed: Role) -> Result<(), HubError> {
    if caller.role >= needed {
        Ok(())
    } else {
        Err(HubError::Forbidden(format!(
            "this needs the {needed} role; user '{}' is {}",
            caller.user, caller.role
        )))
    }
}

/// Signs and checks download tokens.
#[derive(Clone)]
pub struct DownloadSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for DownloadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownloadSigner(<key>)")
    }
}

/// A parsed download token: who it was issued to and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadGrant {
    /// The device (or user) the URL was made for; informational, it is in the signed text.
    pub subject: String,
    /// Expiry, unix seconds.
    pub expires: i64,
}

impl DownloadSigner {
    /// Loads the key from the database, creating it at the first start.
    pub async fn load(db: &Db) -> Result<Self, HubError> {
        let fresh = hex(&random_bytes::<32>());
        sqlx::query("INSERT INTO hub_settings (name, value) VALUES ('download_key', $1) ON CONFLICT (name) DO NOTHING")
            .bind(&fresh)
            .execute(db.pool())
            .await
            .db("creating the download key")?;
        let stored: String = sqlx::query_scalar("SELECT value FROM hub_settings WHERE name = 'download_key'")
            .fetch_one(db.pool())
            .await
            .db("reading the download key")?;
        let mut key = [0u8; 32];
        for (i, chunk) in stored.as_bytes().chunks(2).take(32).enumerate() {
            let s = std::str::from_utf8(chunk).unwrap_or("00");
            key[i] = u8::from_str_radix(s, 16).unwrap_or(0);
        }
        Ok(Self { key })
    }

    /// A signer with a given key (tests).
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, sha256: &str, subject: &str, expires: i64) -> String {
        // Constructing an HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("edgemlops-download-v1\n{sha256}\n{subject}\n{expires}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The query string (`sub=…&exp=…&sig=…`) granting `subject` the package `sha256` until `expires`.
    pub fn query(&self, sha256: &str, subject: &str, expires: Timestamp) -> String {
        let exp = expires.unix_millis().div_euclid(1000);
        format!("sub={}&exp={exp}&sig={}", subject, self.mac(sha256, subject, exp))
    }

    /// Checks a token for the package `sha256` at `now` (unix seconds).
    pub fn verify(
        &self,
        sha256: &str,
        subject: Option<&str>,
        expires: Option<i64>,
        sig: Option<&str>,
        now: i64,
    ) -> Result<DownloadGrant, HubError> {
        let (Some(subject), Some(expires), Some(sig)) = (subject, expires, sig) else {
            return Err(HubError::Unauthorized(
                "missing download token (the URL needs sub, exp and sig query parameters)".into(),
            ));
        };
        let expected = self.mac(sha256, subject, expires);
        // Compare without an early exit so the time taken does not reveal a matching prefix.
        let same = expected.len() == sig.len()
            && expected
                .bytes()
                .zip(sig.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(HubError::Forbidden(
                "download token is not valid for this package".into(),
            ));
        }
        if now >= expires {
            return Err(HubError::Unauthorized(format!(
                "download token expired at {} (ask for a new URL)",
                ts(expires.saturating_mul(1000))
            )));
        }
        Ok(DownloadGrant {
            subject: subject.to_owned(),
            expires,
        })
    }
}

/// Device subjects in download tokens must stay URL-safe: device ids are, user names may not be.
pub fn url_safe_subject(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                b as char
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> (String, i64, String) {
        let mut sub = String::new();
        let mut exp = 0;
        let mut sig = String::new();
        for kv in q.split('&') {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "sub" => sub = v.to_owned(),
                "exp" => exp = v.parse().unwrap(),
                "sig" => sig = v.to_owned(),
                _ => {}
            }
        }
        (sub, exp, sig)
    }

    #[test]
    fn download_tokens_are_scoped_to_one_package_and_expire() {
        let s = DownloadSigner::with_key([7; 32]);
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let (sub, exp, sig) = parse(&s.query(&a, "cam-1", Timestamp::from_unix_millis(2_000_000).unwrap()));
        assert_eq!(exp, 2000);
        assert!(s.verify(&a, Some(&sub), Some(exp), Some(&sig), 1999).is_ok());
        let e = s.verify(&a, Some(&sub), Some(exp), Some(&sig), 2000).unwrap_err();
        assert!(
            matches!(e, HubError::Unauthorized(ref m) if m.contains("expired")),
            "{e}"
        );
        let e = s.verify(&b, Some(&sub), Some(exp), Some(&sig), 1).unwrap_err();
        assert!(matches!(e, HubError::Forbidden(_)), "{e}");
        // Moving the expiry or the subject breaks the signature.
        assert!(matches!(
            s.verify(&a, Some(&sub), Some(exp + 1000), Some(&sig), 1),
            Err(HubError::Forbidden(_))
        ));
        assert!(matches!(
            s.verify(&a, Some("cam-2"), Some(exp), Some(&sig), 1),
            Err(HubError::Forbidden(_))
        ));
        assert!(matches!(
            s.verify(&a, None, Some(exp), Some(&sig), 1),
            Err(HubError::Unauthorized(_))
        ));
        // Another hub's key does not verify.
        let other = DownloadSigner::with_key([8; 32]);
        assert!(other.verify(&a, Some(&sub), Some(exp), Some(&sig), 1).is_err());
    }

    #[test]
    fn roles_check_by_order() {
        let viewer = Caller {
            user: "v".into(),
            role: Role::Viewer,
        };
        assert!(require(&viewer, Role::Viewer).is_ok());
        let e = require(&viewer, Role::Operator).unwrap_err();
        assert!(e.to_string().contains("needs the operator role"), "{e}");
    }
}
