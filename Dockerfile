# syntax=docker/dockerfile:1
# Steadyflow: a multi-stage build. The builder compiles the release binary (the C parts,
# bundled SQLite and zstd, need only the toolchain's gcc; TLS is rustls, no OpenSSL); the
# final image is debian:bookworm-slim with the binary, the configs and the runbook's
# scripts, running as the unprivileged user `steadyflow` (uid 10001).
#
#   docker build -t steadyflow .
#   docker run -p 8080:8080 -e STEADYFLOW_ADMIN_TOKEN=... steadyflow
#
# docker-compose.yml builds this file; deployments/kubernetes/ runs the image it tags.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY crates ./crates
COPY web ./web
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p steadyflow \
    && install -m 0755 target/release/steadyflow /usr/local/bin/steadyflow

FROM debian:bookworm-slim
# ca-certificates: the platform's roots for S3 targets and SMTP (rustls-platform-verifier);
# curl: the HEALTHCHECK below; tzdata: cron schedules are UTC, history shows local times.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 steadyflow \
    && useradd --system --uid 10001 --gid steadyflow --home-dir /var/lib/steadyflow \
       --shell /usr/sbin/nologin steadyflow \
    && mkdir -p /var/lib/steadyflow /opt/steadyflow \
    && chown steadyflow:steadyflow /var/lib/steadyflow
COPY --from=builder /usr/local/bin/steadyflow /usr/local/bin/steadyflow
WORKDIR /opt/steadyflow
# configs/config.yaml is read from the working directory (the runbook's recover.sh copies
# configs/$ENV.yaml over it); scripts/ holds backup.sh, restore.sh and the recovery scripts.
COPY configs ./configs
COPY scripts ./scripts
ENV STEADYFLOW_LISTEN=0.0.0.0:8080 \
    STEADYFLOW_DATA_DIR=/var/lib/steadyflow \
    STEADYFLOW_LOG__FORMAT=json
VOLUME ["/var/lib/steadyflow"]
USER steadyflow:steadyflow
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/steadyflow"]
CMD ["serve"]
