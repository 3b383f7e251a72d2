//! `tidings.v1.Notifications`: each method calls the same core functions as its REST twin.

use super::convert;
use super::proto::{self, notifications_server};
use super::status::GrpcError;
use super::subscribe::SubscribeStream;
use super::Core;
use crate::auth::{bearer_token, AuthError, Principal, Verified};
use crate::domain::{ChangeKind, Cursor, FieldError, IdempotencyKey, Seq, UserId};
use crate::hub::{Connection, HubError};
use crate::ingest::{parse_mark_read, publish_command};
use crate::metrics::Transport;
use crate::store::{ListQuery, DEFAULT_PAGE, MAX_PAGE};
use actix::ArbiterHandle;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

pub struct Notifications {
    core: Core,
    /// Where hub sessions (actix actors) are started: see [`super::spawn`].
    arbiter: ArbiterHandle,
}

impl Notifications {
    pub fn new(core: Core, arbiter: ArbiterHandle) -> Self {
        Self { core, arbiter }
    }

    /// The `authorization: Bearer <token>` metadata, checked by the same JWT rules as the
    /// REST `Authorization` header.
    async fn verify(&self, meta: &MetadataMap) -> Result<Verified, AuthError> {
        let Some(value) = meta.get("authorization") else {
            return Err(AuthError::Missing);
        };
        let value = value
            .to_str()
            .map_err(|_| AuthError::Invalid("the authorization metadata is not text".into()))?;
        self.core
            .auth
            .authenticate(bearer_token(value, "the authorization metadata")?)
            .await
    }

    async fn user(&self, meta: &MetadataMap) -> Result<(UserId, i64), GrpcError> {
        let verified = self.verify(meta).await?;
        match verified.principal {
            Principal::User(user) => Ok((user, verified.expires_at)),
            Principal::Service(_) => Err(AuthError::Forbidden(
                "a service token cannot read an inbox; use a user token",
            )
            .into()),
        }
    }

    async fn service(&self, meta: &MetadataMap) -> Result<String, GrpcError> {
        match self.verify(meta).await?.principal {
            Principal::Service(name) => Ok(name),
            Principal::User(_) => Err(AuthError::Forbidden(
                "a user token cannot publish; use a service token with the notifications:publish scope",
            )
            .into()),
        }
    }

    /// Opens a hub connection on the arbiter, where the user's session actor can start.
    /// Archive, Unarchive and Delete: the REST endpoints' body, the notifier's one call.
    async fn change(
        &self,
        request: Request<proto::MarkReadRequest>,
        kind: ChangeKind,
    ) -> Result<Response<proto::Counts>, Status> {
        let (user, _) = self.user(request.metadata()).await?;
        let what = parse_mark_read(&convert::mark_read_body(request.get_ref()), &[])
            .map_err(GrpcError::Validation)?;
        let outcome = self
            .core
            .notifier
            .change(&user, kind, &what)
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(convert::counts(&outcome.counts)))
    }

    async fn connect(&self, user: UserId, cursor: Cursor) -> Result<Connection, GrpcError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let hub = self.core.hub.clone();
        let sent = self.arbiter.spawn(async move {
            let _ = tx.send(hub.connect(&user, cursor, Transport::Grpc).await);
        });
        if !sent {
            return Err(HubError::Stopping.into());
        }
        rx.await
            .map_err(|_| GrpcError::Hub(HubError::Stopping))?
            .map_err(GrpcError::from)
    }
}

fn field(name: &str, message: impl Into<String>) -> GrpcError {
    GrpcError::Validation(vec![FieldError::new(name, message)])
}

/// An optional integer within `min..=max`, with REST's words for one that is not.
fn bounded(value: Option<i64>, name: &str, min: i64, max: i64) -> Result<Option<i64>, GrpcError> {
    match value {
        Some(n) if !(min..=max).contains(&n) => Err(field(
            name,
            format!("must be a whole number from {min} to {max}"),
        )),
        other => Ok(other),
    }
}

#[tonic::async_trait]
impl notifications_server::Notifications for Notifications {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let service = self.service(request.metadata()).await?;
        let key = match request.metadata().get("idempotency-key") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| "must be visible ASCII characters".to_owned())
                    .and_then(IdempotencyKey::parse)
                    .map_err(|m| field("Idempotency-Key", m))?,
            ),
        };
        let body = convert::publish_body(request.get_ref());
        let cmd = publish_command(service, key, &body).map_err(GrpcError::Validation)?;
        if let Some(topic) = &cmd.notification.topic {
            let reached = self
                .core
                .notifier
                .publish_topic(&cmd)
                .await
                .map_err(GrpcError::from)?;
            return Ok(Response::new(proto::PublishResponse {
                notifications: Vec::new(),
                topic: topic.as_str().to_owned(),
                recipients: reached.recipients,
            }));
        }
        let outcome = self
            .core
            .notifier
            .publish(&cmd)
            .await
            .map_err(GrpcError::from)?;
        let mut response = Response::new(proto::PublishResponse {
            // The gRPC receipt has no `muted` field yet: muted recipients are left out.
            notifications: outcome
                .receipts
                .iter()
                .filter(|r| !r.muted)
                .map(convert::receipt)
                .collect(),
            topic: String::new(),
            recipients: 0,
        });
        if outcome.replayed {
            response
                .metadata_mut()
                .insert("idempotent-replayed", MetadataValue::from_static("true"));
        }
        Ok(response)
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let (user, _) = self.user(request.metadata()).await?;
        let r = request.into_inner();
        let after = bounded(r.after, "after", 0, i64::MAX)?;
        let before = bounded(r.before, "before", 1, i64::MAX)?;
        let limit = bounded(r.limit, "limit", 1, i64::from(MAX_PAGE))?.unwrap_or(DEFAULT_PAGE);
        let limit = u32::try_from(limit).unwrap_or(MAX_PAGE);
        let unread_only = r.unread;
        if after.is_some() && r.archived {
            return Err(field(
                "archived",
                "cannot be combined with `after`: the replay after a cursor includes archived notifications",
            )
            .into());
        }
        let query = match (after, before) {
            (Some(_), Some(_)) => {
                return Err(
                    field("before", "cannot be combined with `after`; use one of them").into(),
                )
            }
            (Some(after), None) => ListQuery::After {
                after: Seq::new(after),
                limit,
                unread_only,
            },
            (None, before) => ListQuery::Before {
                before: before.map(Seq::new),
                limit,
                unread_only,
                archived: r.archived,
            },
        };
        let page = self
            .core
            .store
            .list(&user, query)
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(proto::ListResponse {
            notifications: page
                .notifications
                .iter()
                .map(convert::notification)
                .collect(),
            unread: page.counts.unread,
            seq: page.counts.seq.get(),
            truncated: after.is_some_and(|a| page.truncated(Seq::new(a))),
            floor: page.floor.get(),
            ahead: after.is_some_and(|a| page.ahead(Seq::new(a))),
        }))
    }

    async fn unread_count(
        &self,
        request: Request<proto::UnreadCountRequest>,
    ) -> Result<Response<proto::Counts>, Status> {
        let (user, _) = self.user(request.metadata()).await?;
        let counts = self
            .core
            .store
            .counts(&user)
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(convert::counts(&counts)))
    }

    async fn mark_read(
        &self,
        request: Request<proto::MarkReadRequest>,
    ) -> Result<Response<proto::Counts>, Status> {
        let (user, _) = self.user(request.metadata()).await?;
        let what = parse_mark_read(&convert::mark_read_body(request.get_ref()), &[])
            .map_err(GrpcError::Validation)?;
        let outcome = self
            .core
            .notifier
            .mark_read(&user, &what)
            .await
            .map_err(GrpcError::from)?;
        Ok(Response::new(convert::counts(&outcome.counts)))
    }

    async fn archive(
        &self,
        request: Request<proto::MarkReadRequest>,
    ) -> Result<Response<proto::Counts>, Status> {
        self.change(request, ChangeKind::Archived).await
    }

    async fn unarchive(
        &self,
        request: Request<proto::MarkReadRequest>,
    ) -> Result<Response<proto::Counts>, Status> {
        self.change(request, ChangeKind::Unarchived).await
    }

    async fn delete(
        &self,
        request: Request<proto::MarkReadRequest>,
    ) -> Result<Response<proto::Counts>, Status> {
        self.change(request, ChangeKind::Deleted).await
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (user, expires_at) = self.user(request.metadata()).await?;
        let cursor = match request.get_ref().after {
            None => Cursor::Live,
            Some(after) => Cursor::After(
                Seq::try_new(after)
                    .ok_or_else(|| field("after", "must be a seq: a whole number, 0 or more"))?,
            ),
        };
        let start = match cursor {
            Cursor::After(seq) => seq,
            Cursor::Live => Seq::ZERO,
        };
        let conn = self.connect(user, cursor).await?;
        Ok(Response::new(SubscribeStream::new(conn, start, expires_at)))
    }
}
