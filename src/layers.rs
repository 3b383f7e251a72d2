//! The import rules of the layers, checked on the source itself so a change that points an
//! import back up the data's path fails the build's tests instead of waiting for a review.

use std::path::Path;

/// (folder or file under `src/`, what no file there may import, why).
const RULES: &[(&str, &str, &str)] = &[
    (
        "transports",
        "crate::api",
        "a transport is a face beside the REST API, not above it",
    ),
    (
        "transports",
        "crate::routes",
        "faces do not know the route table",
    ),
    (
        "api",
        "crate::transports",
        "the REST face does not route the transports",
    ),
    ("api", "crate::routes", "faces do not know the route table"),
    ("http", "crate::api", "the plumbing sits below every face"),
    (
        "http",
        "crate::transports",
        "the plumbing sits below every face",
    ),
    ("hub", "crate::bus", "the bus is upstream of the hub"),
    (
        "hub",
        "crate::store",
        "the store is upstream: the hub reads through hub::History",
    ),
    (
        "hub",
        "crate::notifier",
        "the notifier is upstream of the hub",
    ),
    (
        "bus",
        "crate::notifier",
        "the notifier is upstream of the bus",
    ),
    ("bus", "crate::store", "the store is upstream of the bus"),
    ("store", "crate::ingest", "ingest is upstream of the store"),
    (
        "store",
        "crate::retention",
        "retention drives the store, not the other way",
    ),
    (
        "hub",
        "crate::retention",
        "retention is upstream: the hub only sees its events",
    ),
    (
        "retention.rs",
        "crate::hub",
        "retention announces through the notifier, never to connections",
    ),
    (
        "store",
        "crate::notifier",
        "the notifier is downstream, and calls the store",
    ),
    (
        "grpc",
        "crate::api",
        "the gRPC face stands on the core, beside REST",
    ),
    (
        "grpc",
        "crate::http",
        "the gRPC face stands on the core, not on actix",
    ),
    (
        "grpc",
        "crate::transports",
        "faces do not import each other",
    ),
    (
        "store/group_commit.rs",
        "super::postgres",
        "the Postgres store starts the group commit: rows both write live in store/pg_rows.rs",
    ),
    ("grpc", "crate::routes", "faces do not know the route table"),
    ("api", "crate::grpc", "faces do not import each other"),
    (
        "transports",
        "crate::grpc",
        "faces do not import each other",
    ),
    ("http", "crate::grpc", "the plumbing sits below every face"),
    ("hub", "crate::grpc", "the core never imports a face"),
    ("store", "crate::grpc", "the core never imports a face"),
    ("ingest", "crate::grpc", "the core never imports a face"),
    ("notifier", "crate::grpc", "the core never imports a face"),
    ("bus", "crate::grpc", "the core never imports a face"),
    (
        "bridges",
        "crate::http",
        "a bridge stands on the store's outbox, not on the HTTP faces",
    ),
    (
        "bridges",
        "crate::api",
        "a bridge stands on the store's outbox, not on the HTTP faces",
    ),
    (
        "store",
        "crate::bridges",
        "the store writes the outbox; the bridge reads it, not the other way",
    ),
    (
        "hub",
        "crate::bridges",
        "nothing in the core knows the bridges",
    ),
    (
        "notifier",
        "crate::bridges",
        "nothing in the core knows the bridges",
    ),
    (
        "domain",
        "crate::",
        "domain is the floor every layer stands on",
    ),
    (
        "hub",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "store",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "bus",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "notifier",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "ingest",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "http",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "api",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "transports",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "domain",
        "crate::sockjs",
        "SockJS is a face on top; nothing below it knows it",
    ),
    (
        "sockjs/frame.rs",
        "crate::",
        "the SockJS layer carries any protocol; only sockjs/tidings.rs knows the crate",
    ),
    (
        "sockjs/session.rs",
        "crate::",
        "the SockJS layer carries any protocol; only sockjs/tidings.rs knows the crate",
    ),
    (
        "sockjs/server.rs",
        "crate::",
        "the SockJS layer carries any protocol; only sockjs/tidings.rs knows the crate \
         (and the pure HTML escaping every face shares, crate::http::html)",
    ),
    (
        "http/html.rs",
        "crate::",
        "the HTML escaping is shared by faces that import nothing else of the crate",
    ),
    (
        "sockjs/mod.rs",
        "crate::",
        "the SockJS layer carries any protocol; only sockjs/tidings.rs knows the crate",
    ),
];

/// Imports a file may make despite a rule above: (file under `src/`, import). The
/// HTML escaping is one function every face that writes HTML shares, and imports nothing.
const ALLOWED: &[(&str, &str)] = &[("sockjs/server.rs", "crate::http::html")];

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if dir.is_file() {
        out.push(dir.to_owned());
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_down_the_data_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for (place, forbidden, why) in RULES {
        let mut found = Vec::new();
        let dir = src.join(place);
        files(&dir, &mut found);
        files(&src.join(format!("{place}.rs")), &mut found);
        assert!(!found.is_empty(), "no source found for {place}");
        for file in found {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let text = ALLOWED
                .iter()
                .filter(|(f, _)| file.ends_with(f))
                .fold(text, |t, (_, allowed)| t.replace(allowed, ""));
            if text.contains(forbidden) {
                broken.push(format!("{} uses {forbidden}: {why}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
