# Herald: a two-stage build. The runtime image has no PostgreSQL: set DATABASE_URL
# (docker-compose.yml runs a PostgreSQL beside it).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY admin-ui ./admin-ui
RUN cargo build --release --locked && strip target/release/herald

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
ENV HERALD_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Ready = /readyz answers 200 on the port HERALD_LISTEN names (bash's /dev/tcp: the image
# needs no HTTP client).
HEALTHCHECK --interval=10s --timeout=3s \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${HERALD_LISTEN##*:} && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["herald"]
CMD ["serve"]
