//! Row builders for Postgres statements that both the store and its group commit write:
//! their own module, so that `postgres` (which starts the group commit) and `group_commit`
//! (which writes the same rows) both import it instead of importing each other.

use super::{Outbox, OutboxChannel, OutboxKind, StoreError};

/// Outbox rows for one `unnest` insert per channel, in the order they must be delivered.
#[derive(Default)]
pub(crate) struct OutboxColumns {
    users: Vec<String>,
    kinds: Vec<&'static str>,
    /// Per row, its payload on each channel (`None`: not written on that channel).
    mqtt: Vec<Option<String>>,
    webpush: Vec<Option<String>>,
}

impl OutboxColumns {
    /// A row every channel gets alike (an unread count).
    pub fn push(&mut self, user: &str, kind: OutboxKind, payload: String) {
        self.row(user, kind, Some(payload.clone()), Some(payload));
    }

    /// A row for one channel only (a recipient's copy: see `PreparedPublish::outbox_rows`).
    pub fn push_on(
        &mut self,
        channel: OutboxChannel,
        user: &str,
        kind: OutboxKind,
        payload: String,
    ) {
        match channel {
            OutboxChannel::Mqtt => self.row(user, kind, Some(payload), None),
            OutboxChannel::WebPush => self.row(user, kind, None, Some(payload)),
        }
    }

    fn row(&mut self, user: &str, kind: OutboxKind, mqtt: Option<String>, webpush: Option<String>) {
        self.users.push(user.to_owned());
        self.kinds.push(kind.as_str());
        self.mqtt.push(mqtt);
        self.webpush.push(webpush);
    }

    /// Writes the rows of every channel that is on. Ids follow `ord`, so each queue's rows
    /// get ids in the order they were pushed. Web Push rows are fanned out to the user's
    /// subscriptions by the same statement; a user without one gets none.
    pub async fn insert(
        &self,
        tx: &mut sqlx::PgConnection,
        outbox: &Outbox,
    ) -> Result<(), StoreError> {
        if self.users.is_empty() {
            return Ok(());
        }
        for channel in outbox.channels() {
            let (payloads, sql) = match channel {
                OutboxChannel::Mqtt => (
                    &self.mqtt,
                    "INSERT INTO mqtt_outbox (user_id, kind, payload)
                     SELECT u, k, p FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(u, k, p, ord)
                     WHERE p IS NOT NULL
                     ORDER BY ord",
                ),
                OutboxChannel::WebPush => (
                    &self.webpush,
                    "INSERT INTO webpush_outbox (subscription_id, user_id, kind, payload)
                     SELECT s.id, t.u, t.k, t.p
                     FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(u, k, p, ord)
                     JOIN push_subscriptions s ON s.user_id = t.u
                     WHERE t.p IS NOT NULL
                     ORDER BY t.ord, s.id",
                ),
            };
            if payloads.iter().all(Option::is_none) {
                continue;
            }
            sqlx::query(sql)
                .bind(&self.users)
                .bind(&self.kinds)
                .bind(payloads)
                .execute(&mut *tx)
                .await?;
        }
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
