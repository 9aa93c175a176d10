//! Tokens: who may read and write which databases.
//!
//! Configured in the TOML file (`[[tokens]]`). With no token configured, auth is off and
//! every request is allowed (the binary warns loudly). Otherwise every endpoint but
//! `/health` and `/ready` needs a token: `Authorization: Bearer <t>` or `Token <t>`, or
//! the `p` (password) query parameter of the InfluxDB v1 write API. Token values are
//! never logged.

use std::collections::BTreeSet;

use axum::http::{HeaderMap, header};
use serde::Deserialize;

use crate::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
}

/// One configured token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and errors (never the secret).
    pub name: String,
    /// The secret itself...
    #[serde(default)]
    pub token: Option<String>,
    /// ...or a file holding it (e.g. a Docker secret); surrounding white space is ignored.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// Databases it applies to; `"*"` for all.
    pub databases: Vec<String>,
    pub permissions: Vec<Permission>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("databases", &self.databases)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Token {
    name: String,
    secret: String,
    all_databases: bool,
    databases: BTreeSet<String>,
    read: bool,
    write: bool,
}

/// The identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// `None` when auth is off.
    name: Option<String>,
    all_databases: bool,
    databases: BTreeSet<String>,
    read: bool,
    write: bool,
}

impl Principal {
    pub(crate) fn everyone() -> Self {
        Principal {
            name: None,
            all_databases: true,
            databases: BTreeSet::new(),
            read: true,
            write: true,
        }
    }

    /// talo itself (rollup maintenance): everything.
    pub(crate) fn system() -> Self {
        Principal::everyone()
    }

    /// Whether this principal may do `p` on database `db`.
    pub fn can(&self, p: Permission, db: &str) -> bool {
        let perm = match p {
            Permission::Read => self.read,
            Permission::Write => self.write,
        };
        perm && (self.all_databases || self.databases.contains(db))
    }

    /// The databases this principal may write: `None` without write permission, else
    /// (all databases, the named ones).
    pub fn writable(&self) -> Option<(bool, Vec<String>)> {
        self.write
            .then(|| (self.all_databases, self.databases.iter().cloned().collect()))
    }

    /// The token's name (`None` when auth is off).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Fail with 403 unless allowed.
    pub fn require(&self, p: Permission, db: &str) -> Result<(), ApiError> {
        if self.can(p, db) {
            Ok(())
        } else {
            let what = match p {
                Permission::Read => "read",
                Permission::Write => "write",
            };
            Err(ApiError::Forbidden(format!(
                "token {:?} may not {what} database {db:?}",
                self.name.as_deref().unwrap_or("")
            )))
        }
    }
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// Compare without stopping at the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Build from configuration; checks every entry.
    pub fn new(configs: &[TokenConfig]) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for c in configs {
            let secret = match (&c.token, &c.token_file) {
                (Some(t), None) => t.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| format!("token {:?}: cannot read token_file: {e}", c.name))?
                    .trim()
                    .to_string(),
                _ => {
                    return Err(format!(
                        "token {:?}: give exactly one of token or token_file",
                        c.name
                    ));
                }
            };
            if secret.len() < 16 {
                return Err(format!(
                    "token {:?}: the secret must be at least 16 characters",
                    c.name
                ));
            }
            if c.databases.is_empty() || c.permissions.is_empty() {
                return Err(format!(
                    "token {:?}: databases and permissions may not be empty",
                    c.name
                ));
            }
            for db in &c.databases {
                if db != "*" {
                    talo_engine::model::validate_db_name(db)
                        .map_err(|e| format!("token {:?}: {e}", c.name))?;
                }
            }
            if tokens
                .iter()
                .any(|t: &Token| ct_eq(t.secret.as_bytes(), secret.as_bytes()))
            {
                return Err(format!(
                    "token {:?}: the same secret is configured twice",
                    c.name
                ));
            }
            tokens.push(Token {
                name: c.name.clone(),
                secret,
                all_databases: c.databases.iter().any(|d| d == "*"),
                databases: c.databases.iter().filter(|d| *d != "*").cloned().collect(),
                read: c.permissions.contains(&Permission::Read),
                write: c.permissions.contains(&Permission::Write),
            });
        }
        Ok(Auth { tokens })
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Who is asking: from the `Authorization` header, else `password` (the v1 `p`
    /// parameter). 401 when auth is on and no valid token is given.
    pub fn principal(
        &self,
        headers: &HeaderMap,
        password: Option<&str>,
    ) -> Result<Principal, ApiError> {
        if !self.enabled() {
            return Ok(Principal::everyone());
        }
        let from_header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
                    .then(|| rest.trim())
            });
        let Some(given) = from_header.or(password) else {
            return Err(ApiError::Unauthorized(
                "missing token (Authorization: Bearer <token>)".into(),
            ));
        };
        self.principal_for_secret(given)
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))
    }

    /// The principal of a secret given outside HTTP (the MQTT password), `None` when it
    /// is not a configured token. Compares every token in constant time.
    pub fn principal_for_secret(&self, given: &str) -> Option<Principal> {
        let found = self.tokens.iter().fold(None, |acc, t| {
            if ct_eq(t.secret.as_bytes(), given.as_bytes()) {
                Some(t)
            } else {
                acc
            }
        });
        found.map(|t| Principal {
            name: Some(t.name.clone()),
            all_databases: t.all_databases,
            databases: t.databases.clone(),
            read: t.read,
            write: t.write,
        })
    }
}
