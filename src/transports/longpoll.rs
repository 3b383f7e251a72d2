//! Long-polling: `GET /v1/notifications/poll`.
//!
//! The request is answered as soon as there is anything after the cursor, or the unread
//! count differs from what the client has; otherwise it is held until something commits or
//! the timeout passes (204). It opens a hub connection from the cursor like any stream: the
//! connection's own replay read (after registering, so nothing can slip between) answers at
//! once when there is a backlog, and live events answer it otherwise. One database read per
//! poll, on the read pool; when the database is slow the poll waits instead of failing, and
//! when that read fails the poll answers 503 rather than a 204 that would claim nothing is new.

use crate::domain::{Counts, Cursor, Page, Seq, UserId};
use crate::http::error::ApiError;
use crate::http::extract::{int_param, query_map, StreamUser};
use crate::http::pages::NotificationPage;
use crate::http::AppState;
use crate::hub::Frame;
use crate::metrics::Transport;
use crate::store::{ListQuery, MAX_PAGE};
use actix_web::{web, HttpRequest, HttpResponse};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: i64 = 30;
pub const MAX_TIMEOUT: i64 = 120;

/// Wait for notifications after a cursor, or for the unread count to change.
#[utoipa::path(
    get, path = "/v1/notifications/poll", tag = "live",
    params(
        ("after" = i64, Query, minimum = 0, description = "The last seq the client has seen (0 for all)."),
        ("unread" = Option<i64>, Query, nullable = false, minimum = 0, description = "The unread count the client shows; a different count answers at once."),
        ("timeout" = Option<i64>, Query, nullable = false, minimum = 1, maximum = 120, description = "Seconds to wait, 1 to 120, default 30."),
        ("access_token" = Option<String>, Query, nullable = false, description = "The user token, when a header cannot be set (EventSource, WebSocket and iframe cannot)."),
    ),
    responses(
        (status = 200, body = crate::http::pages::NotificationPage, description = "At most 200 notifications after the cursor, oldest first; poll again from the last seq. With `truncated: true`, retention removed notifications after the cursor up to `floor`: the page starts at the oldest kept one (poll again from `floor` when it is empty). With `ahead: true`, the cursor was above the latest seq (`seq`): poll again from `seq`. When notifications were archived, unarchived or deleted meanwhile, `changes` lists those events (as the streams' `changed`), oldest first; a poll that only saw changes answers at once with no notifications."),
        (status = 204, description = "Nothing new before the timeout: poll again with the same cursor."),
        (status = 400, body = crate::http::error::Problem, content_type = "application/problem+json", description = "A missing or bad query parameter, named in `errors`."),
        (status = 401, body = crate::http::error::Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = crate::http::error::Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 429, body = crate::http::error::Problem, content_type = "application/problem+json", description = "This user holds the maximum of connections per user on this replica (TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER); close one, or see Retry-After."),
        (status = 503, body = crate::http::error::Problem, content_type = "application/problem+json", description = "The database could not be read, or the replica is full or stopping: poll again after `Retry-After` seconds with the same cursor."),
    ),
    security(("user_token" = []))
)]
pub async fn poll(
    state: web::Data<AppState>,
    user: StreamUser,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_map(&req)?;
    let after = int_param(&q, "after", 0, i64::MAX)?
        .map(Seq::new)
        .ok_or_else(|| {
            ApiError::bad_field(
                "after",
                "is required: the last seq the client has seen (0 for all)",
            )
        })?;
    let unread = int_param(&q, "unread", 0, i64::MAX)?;
    let timeout = int_param(&q, "timeout", 1, MAX_TIMEOUT)?.unwrap_or(DEFAULT_TIMEOUT);
    let user = user.0.user;

    let mut conn = state
        .hub
        .connect(&user, Cursor::After(after), Transport::LongPoll)
        .await?;
    let deadline = tokio::time::sleep(Duration::from_secs(timeout as u64));
    tokio::pin!(deadline);
    let mut found: Vec<(Seq, Arc<str>)> = Vec::new();
    // Set when the cursor is below the history floor: the answer says so, even with no
    // notification kept after it, so the client moves its cursor up to the floor.
    let mut floor: Option<Seq> = None;
    // Set when the cursor is above the user's latest seq: the answer says so at once, so
    // the client moves its cursor down and polls from there rather than waiting for ever.
    let mut ahead = false;
    let mut changes: Vec<Arc<str>> = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = &mut deadline => return Ok(HttpResponse::NoContent().finish()),
            f = conn.rx.recv() => f,
        };
        match frame {
            Some(first @ (Frame::Update(_) | Frame::Changed(_))) => {
                let mut counts = take(first, &mut found, &mut changes);
                // Take whatever else is already queued, so one answer carries a burst.
                while let Ok(next @ (Frame::Update(_) | Frame::Changed(_))) = conn.rx.try_recv() {
                    counts = take(next, &mut found, &mut changes);
                }
                if !found.is_empty()
                    || floor.is_some()
                    || ahead
                    || !changes.is_empty()
                    || unread.is_some_and(|u| u != counts.unread)
                {
                    found.truncate(MAX_PAGE as usize);
                    return Ok(answer_rendered(&found, &changes, counts, floor, ahead));
                }
            }
            // First, before the replay it announces.
            Some(Frame::Truncated { floor: f }) => floor = Some(f),
            Some(Frame::Ahead { .. }) => ahead = true,
            // A long-poll answer is a page of notifications; a settings page on long-poll
            // re-reads GET /v1/preferences.
            Some(Frame::Preferences(_)) => {}
            Some(Frame::Resync { .. }) => {
                // Far behind: answer with the first page; the client polls on from there.
                let page = first_page(&state, &user, after).await?;
                return Ok(HttpResponse::Ok().json(NotificationPage::after(page, after)));
            }
            // The read of what follows the cursor failed: "nothing new" (204) would be a
            // lie the client trusts, so it is told to try again shortly.
            Some(Frame::Unavailable) => return Err(ApiError::database_unavailable()),
            // Stopping, or cut off: the client polls again with the same cursor.
            Some(Frame::Shutdown) | None => return Ok(HttpResponse::NoContent().finish()),
        }
    }
}

/// Adds one frame's notifications or change to the answer; returns the counters after it.
fn take(frame: Frame, found: &mut Vec<(Seq, Arc<str>)>, changes: &mut Vec<Arc<str>>) -> Counts {
    match frame {
        Frame::Update(u) => {
            found.extend(u.notifications);
            u.counts
        }
        Frame::Changed(c) => {
            changes.push(c.json.clone());
            c.counts
        }
        _ => Counts::default(),
    }
}

/// Up to a page of what follows the cursor, with the counters.
async fn first_page(state: &AppState, user: &UserId, after: Seq) -> Result<Page, ApiError> {
    let q = ListQuery::After {
        after,
        limit: MAX_PAGE,
        unread_only: false,
    };
    Ok(state.store.list(user, q).await?)
}

/// A [`NotificationPage`] from notifications already rendered by the hub. `floor` is set
/// when the cursor was below the history floor; `changes` (the `changed` events' JSON,
/// oldest first) is written when there were any; `ahead` when the cursor was above the
/// latest seq.
fn answer_rendered(
    found: &[(Seq, Arc<str>)],
    changes: &[Arc<str>],
    counts: Counts,
    floor: Option<Seq>,
    ahead: bool,
) -> HttpResponse {
    let mut body = String::from("{\"notifications\":[");
    for (i, (_, json)) in found.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(json);
    }
    if !changes.is_empty() {
        body.push_str("],\"changes\":[");
        for (i, json) in changes.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(json);
        }
    }
    let _ = write!(
        body,
        "],\"unread\":{},\"seq\":{}",
        counts.unread, counts.seq
    );
    if let Some(floor) = floor {
        let _ = write!(body, ",\"truncated\":true,\"floor\":{floor}");
    }
    if ahead {
        body.push_str(",\"ahead\":true");
    }
    body.push('}');
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}
