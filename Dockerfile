# Multi-stage build: a Rust builder, then a small non-root runtime with CA certificates.
# Runs with a read-only root filesystem: the gateway writes nothing but the audit file, under
# the /var/log/ews-gateway volume; /tmp is expected as a tmpfs. For example
#   docker run --read-only --tmpfs /tmp -v ews-audit:/var/log/ews-gateway \
#     -v "$PWD/conf:/etc/ews-gateway:ro" -p 8443:8443 ews-gateway
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY fixtures ./fixtures
# Only the gateway, without the simulator and demo (the sim feature): the benchmark tool in
# src/bin embeds files from bench/, which is not copied. deploy/dockerfile-build-check.sh runs
# this stage's COPY and RUN lines outside Docker (CI), so a missing COPY fails there.
RUN cargo build --release --locked --no-default-features --bin ews-gateway \
 && strip target/release/ews-gateway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ews-gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin ews-gateway \
 && install -d -m 0755 /etc/ews-gateway \
 && install -d -m 0750 -o 10001 -g 10001 /var/log/ews-gateway
COPY --from=build /src/target/release/ews-gateway /usr/local/bin/ews-gateway
# The only place the gateway writes (the audit file); a volume, so a read-only root works.
VOLUME ["/var/log/ews-gateway"]
ENV TMPDIR=/tmp
USER 10001:10001
# 8443: EWS (TLS); 9090: [admin] listener for /live, /ready and metrics.
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/ews-gateway"]
CMD ["serve", "--config", "/etc/ews-gateway/ews-gateway.toml"]
