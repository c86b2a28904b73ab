# Multi-stage build: a static (musl) binary on an empty image, run as a non-root user.
# Not built in this project's CI (no Docker engine there); keep it short and standard.
FROM rust:1-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p websocket-public-chat --features redis

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/websocket-public-chat /websocket-public-chat
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/websocket-public-chat"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
