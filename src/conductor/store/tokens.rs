//! Tokens: how they are made, hashed and compared, and the agent tokens kept per node.

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{SqliteDb, StoreError};

/// A token's SHA-256, hex-encoded: all that is kept of a token. It has no `PartialEq` on
/// purpose: [`TokenHash::matches`] is the one comparison, and it takes constant time.
pub(crate) struct TokenHash(pub(super) String);

impl TokenHash {
    pub(crate) fn of(token: &str) -> Self {
        Self(hex(&Sha256::digest(token.as_bytes())))
    }

    /// Whether `token` hashes to this, in a time that does not tell where they differ.
    pub(crate) fn matches(&self, token: &str) -> bool {
        let candidate = Self::of(token);
        let (a, b) = (self.0.as_bytes(), candidate.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl ToSql for TokenHash {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

/// 32 random bytes, hex-encoded.
pub(crate) fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of an agent token that the operator provisions with the node, once it is checked.
pub(super) fn provisioned(token: Option<&str>) -> Result<Option<TokenHash>, StoreError> {
    match token {
        Some(token) if token.len() < 16 => Err(StoreError::Invalid {
            kind: "weak_token",
            message: "a provisioned agent token must be at least 16 characters".into(),
        }),
        Some(token) => Ok(Some(TokenHash::of(token))),
        None => Ok(None),
    }
}

/// Issues the node's token unless one was issued already: returned in clear this once, stored
/// only as a hash. One conditional statement, so that of two conductors looking the node up at
/// once only one issues a token.
pub(super) fn issue_once(conn: &Connection, node: &str) -> Result<Option<String>, StoreError> {
    let token = new_token();
    let issued = conn.execute(
        "UPDATE nodes SET token_hash = ?2, token_issued = 1 WHERE uuid = ?1 AND token_issued = 0",
        params![node, TokenHash::of(&token)],
    )?;
    Ok((issued == 1).then_some(token))
}

impl SqliteDb {
    /// Whether `token` is the agent token of `node`; false for a node that does not exist.
    pub(crate) fn agent_token_matches(
        &self,
        node: Uuid,
        token: String,
    ) -> Result<bool, StoreError> {
        let stored: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT token_hash FROM nodes WHERE uuid = ?1",
                params![node.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(stored
            .flatten()
            .is_some_and(|hash| TokenHash(hash).matches(&token)))
    }

    /// Forgets the issued token so that the node's next lookup issues a new one.
    pub(crate) fn reset_token(&self, node: Uuid) -> Result<(), StoreError> {
        self.change_one(
            "UPDATE nodes SET token_hash = NULL, token_issued = 0 WHERE uuid = ?1",
            node,
            "node",
        )
    }
}
