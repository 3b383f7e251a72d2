"""Schemathesis hooks (schemathesis.toml loads this file).

Two rules of the API join fields that OpenAPI 3.1 cannot relate, so a "valid" request by the
document can still be refused. Positive cases that break them are dropped instead of counted as
rejected valid data; negative cases are left alone:
  - GET /v1/notifications: `after` and `before` are exclusive (400 names `before`);
  - POST /v1/notifications: an `Idempotency-Key` cannot go with a `topic` body (422);
  - POST /v1/notifications: no string or key anywhere inside `data` may hold U+0000 (Postgres
    cannot store it; 422 naming `data`), which JSON Schema cannot say of a free-form object;
  - PUT/PATCH .../preferences: quiet hours' `end` must differ from their `start` (422 naming
    `quiet_hours.end`).
A PATCH of the preferences is a JSON Merge Patch: quiet hours that leave out some of their fields
merge into the stored ones, so whether such a patch is valid depends on what is stored. The
document describes whole quiet hours (valid whatever is stored); negative cases whose only fault
may be a missing quiet-hours field are dropped, since the server rightly takes them when quiet
hours are stored.
And JSONP (`callback=` on the two inbox reads) answers every outcome, a refused token too, as a
200 script, because a `<script>` cannot read a status: the authentication checks cannot know
that, so cases with a `callback` are left to the API tests (tests/api/jsonp.rs).
A positive publish with an `Idempotency-Key` gets a fresh key: reusing one with another body is
a 422 by design ("use a new key for a new request"). A positive publish's `deliver_at` (any
RFC 3339 time by the document, at most 366 days ahead by the server; 422 naming it beyond) is
written the one way the server reads, and moved to an hour from now when it is later than that
or is not a time Python reads: the
scheduled path (202) is still exercised, and the limit is checked by tests/api/scheduled.rs.
Its `expires_at` likewise is moved after the delivery when it is not (and `ttl_seconds`, which
may not come with it, dropped): tests/api/lifecycle.rs checks those rules. And the long poll waits up to `timeout` seconds for news: valid polls ask for 1 second, so the
run spends its time on requests, not on waiting.
"""

import datetime
import uuid

import schemathesis
from schemathesis import GenerationMode


def _has_nul(value):
    if isinstance(value, str):
        return "\u0000" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _positive(case):
    return case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE


_QUIET_FIELDS = ("start", "end", "time_zone")


def _quiet_hours(case):
    body = case.body if isinstance(case.body, dict) else {}
    quiet = body.get("quiet_hours")
    return quiet if isinstance(quiet, dict) else None


@schemathesis.hook
def filter_case(ctx, case):
    if "callback" in (case.query or {}):
        return False
    op = case.operation
    if op.path.endswith("/preferences"):
        quiet = _quiet_hours(case)
        if not _positive(case):
            partial = quiet is not None and any(k not in quiet for k in _QUIET_FIELDS)
            return not (op.method.upper() == "PATCH" and partial)
        return quiet is None or quiet.get("start") != quiet.get("end")
    if not _positive(case):
        return True
    query = case.query or {}
    if op.method.upper() == "GET" and op.path == "/v1/notifications":
        # `after` excludes `before` and `archived` (the replay after a cursor includes archived
        # ones); OpenAPI cannot say so, the API tests check both 400s.
        return not ("after" in query and ("before" in query or "archived" in query))
    if op.method.upper() == "POST" and op.path == "/v1/notifications":
        headers = {k.lower() for k in (case.headers or {})}
        body = case.body if isinstance(case.body, dict) else {}
        if _has_nul(body.get("data")):
            return False
        return not ("idempotency-key" in headers and body.get("topic") is not None)
    return True


def _deliver_at(text):
    """The time as the server reads it (RFC 3339, UTC, `Z`), or an hour from now when Python
    cannot read it, it has no offset, or it is past the server's limit."""
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        at = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None or at > now + datetime.timedelta(days=365):
        at = now + datetime.timedelta(hours=1)
    return at.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _expires_at(text, deliver_at):
    """The time as the server reads it, moved to two hours after the delivery (now, or
    `deliver_at`) when Python cannot read it, it has no offset, it is not after the delivery
    or it is past the server's limit: the document cannot say "in the future" or "after
    `deliver_at`", or "not with `ttl_seconds`" (the positive case keeps `expires_at`)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now
    if deliver_at is not None:
        start = max(now, datetime.datetime.fromisoformat(deliver_at.replace("Z", "+00:00")))
    try:
        at = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None or at <= start + datetime.timedelta(minutes=1) or at > now + datetime.timedelta(days=365):
        at = start + datetime.timedelta(hours=2)
    return at.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@schemathesis.hook
def map_case(ctx, case):
    if case.operation.path == "/v1/notifications" and case.operation.method.upper() == "POST" and _positive(case):
        body = case.body if isinstance(case.body, dict) else None
        if body is not None and body.get("deliver_at") is not None:
            case.body = body = {**body, "deliver_at": _deliver_at(body["deliver_at"])}
        if body is not None and body.get("expires_at") is not None:
            case.body = {**body, "ttl_seconds": None, "expires_at": _expires_at(body["expires_at"], body.get("deliver_at"))}
        headers = dict(case.headers or {})
        for name in [k for k in headers if k.lower() == "idempotency-key"]:
            headers[name] = str(uuid.uuid4())
        case.headers = headers
    if case.operation.path == "/v1/notifications/poll":
        query = dict(case.query or {})
        timeout = query.get("timeout")
        if timeout is None or (isinstance(timeout, int) and not isinstance(timeout, bool) and 1 <= timeout <= 120):
            query["timeout"] = 1
            case.query = query
    return case
