# Multi-stage build of both binaries: realchat-auth and realchat-relay.
# Select one with `command:` (see compose.yaml). Runs as a non-root user;
# secrets (DATABASE_URL, AUTH_SIGNING_KEY_FILE) come from the environment or
# mounted files, never from the image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 realchat
COPY --from=build /src/target/release/realchat-auth /src/target/release/realchat-relay /usr/local/bin/
USER realchat
ENV AUTH_GRPC_ADDR=0.0.0.0:50051
EXPOSE 50051
CMD ["realchat-auth"]
