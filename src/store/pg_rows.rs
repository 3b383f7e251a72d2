//! Row builders for Postgres statements that both the store and its group commit write:
//! their own module, so that `postgres` (which starts the group commit) and `group_commit`
//! (which writes the same rows) both import it instead of importing each other.

use super::{OutboxKind, StoreError};

/// Outbox rows for one `unnest` insert, in the order they must be published.
#[derive(Default)]
pub(crate) struct OutboxColumns {
    users: Vec<String>,
    kinds: Vec<&'static str>,
    payloads: Vec<String>,
}

impl OutboxColumns {
    pub fn push(&mut self, user: &str, kind: OutboxKind, payload: String) {
        self.users.push(user.to_owned());
        self.kinds.push(kind.as_str());
        self.payloads.push(payload);
    }

    /// Ids follow `ord`, so each user's rows get ids in the order they were pushed.
    pub async fn insert(&self, tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        if self.users.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO mqtt_outbox (user_id, kind, payload)
             SELECT u, k, p FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(u, k, p, ord)
             ORDER BY ord",
        )
        .bind(&self.users)
        .bind(&self.kinds)
        .bind(&self.payloads)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// A recipient's ordinal as its 32-bit column holds it.
pub(crate) fn ordinal(o: u32) -> Result<i32, StoreError> {
    i32::try_from(o).map_err(|_| {
        StoreError::Database(sqlx::Error::Protocol(format!(
            "recipient ordinal {o} past the column's range"
        )))
    })
}
