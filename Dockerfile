# Multi-stage build: a Rust builder, then a small non-root runtime with CA certificates.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY fixtures ./fixtures
RUN cargo build --release --locked && strip target/release/ews-gateway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ews-gateway
COPY --from=build /src/target/release/ews-gateway /usr/local/bin/ews-gateway
USER 10001
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/ews-gateway"]
CMD ["serve", "--config", "/etc/ews-gateway/ews-gateway.toml"]
