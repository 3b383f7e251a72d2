# Tidings container image.
#
#   docker build -t tidings .
#   docker run --rm -p 8080:8080 -e TIDINGS__AUTH__JWT_SECRET=... tidings
#
# Stages:
#   planner  - reduces the build context to a "recipe": every Cargo.toml of the
#              workspace (root package, a future bench/ member, ...) plus
#              Cargo.lock, with stub src/lib.rs + src/main.rs next to each
#              manifest, and vendor/ whole (patched dependencies, see
#              vendor/README.md). Its output only changes when a manifest,
#              the lock file or vendor/ changes, so the dependency layer below
#              stays cached while you edit sources. (Hand-rolled cargo-chef, no
#              extra tool needed; works with the classic builder and BuildKit
#              alike.)
#   build    - compiles the dependencies against the recipe, then the real
#              sources. Only the `tidings` binary of the `tidings` package is
#              built (-p tidings --bin tidings), so other workspace members only
#              need their manifests to be present, never to compile.
#   runtime  - debian:bookworm-slim, non-root, just the binary.
#
# Pin the toolchain with --build-arg RUST_VERSION=1.95 (any tag that exists as
# rust:<version>-slim-bookworm); the package needs rust >= 1.85.

ARG RUST_VERSION=1

############################################################################
FROM rust:${RUST_VERSION}-slim-bookworm AS planner
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir -p /recipe; \
    cp Cargo.lock /recipe/Cargo.lock; \
    if [ -d vendor ]; then cp -r vendor /recipe/vendor; fi; \
    find . -name Cargo.toml -not -path '*/target/*' -not -path '*/node_modules/*' \
      -not -path './vendor/*' \
      | sort | while read -r manifest; do \
        dir="$(dirname "$manifest")"; \
        mkdir -p "/recipe/$dir/src"; \
        cp "$manifest" "/recipe/$manifest"; \
        : > "/recipe/$dir/src/lib.rs"; \
        echo 'fn main() {}' > "/recipe/$dir/src/main.rs"; \
      done; \
    find /recipe -type f | sort

############################################################################
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The binary's allocator, jemalloc, is built from its C sources (tikv-jemalloc-sys): the slim
# image has the C compiler but not make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
# sqlx: use the checked-in .sqlx/ query cache if compile-time-checked queries
# are ever added; never reach for a database during `docker build`.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# 1. Dependencies only (cached until Cargo.toml / Cargo.lock change).
COPY --from=planner /recipe/ ./
RUN cargo build --release --locked -p tidings --bin tidings

# 2. The real sources. The .dockerignore keeps this to what the build needs:
#    src/ (and any workspace member such as bench/), migrations/ (embedded by
#    sqlx::migrate! at compile time), openapi/ and assets/ (embedded too),
#    build.rs / .sqlx/ if they ever appear.
COPY . .
# COPY keeps the context's mtimes, which can be older than the stub build:
# touch the sources so cargo rebuilds the crate instead of keeping the stub.
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p tidings --bin tidings \
 && install -D -m 0755 target/release/tidings /out/tidings

############################################################################
FROM debian:bookworm-slim AS runtime

# The binary links only glibc (no TLS crates in the tree), so nothing is
# installed. If Postgres/Redis TLS is ever enabled with native roots, add:
#   RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 tidings \
 && useradd --system --uid 10001 --gid tidings --no-create-home \
      --home-dir /var/lib/tidings --shell /usr/sbin/nologin tidings \
 && install -d -o tidings -g tidings -m 0750 /var/lib/tidings

COPY --from=build /out/tidings /usr/local/bin/tidings

# Writable working directory: the default SQLite database (when
# TIDINGS__DATABASE__URL is unset) and anything else the service writes go here.
WORKDIR /var/lib/tidings
USER 10001:10001

ENV TIDINGS__SERVER__LISTEN=0.0.0.0:8080 \
    TIDINGS_PROFILE=production \
    TIDINGS__LOG__FORMAT=json

EXPOSE 8080

# No curl in the image and no health subcommand in the binary: bash (always
# present in debian-slim) speaks just enough HTTP over /dev/tcp. The port is
# taken from TIDINGS__SERVER__LISTEN so overriding the listen address keeps the
# check working.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${TIDINGS__SERVER__LISTEN##*:}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r status <&3 && [[ $status == HTTP/1.?' 200 '* ]]"]

# SIGTERM (docker stop) makes the service fail /readyz, end its streams and
# exit within TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS (default 10 s); give
# `docker stop` / compose a longer stop timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tidings"]
CMD ["serve"]
