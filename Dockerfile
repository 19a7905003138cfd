# Multi-stage build of the workspace's binaries: realchat-auth,
# realchat-relay and the example realchat-profile-consumer. compose.yaml picks
# one per service with `command:`. The runtime image is Debian slim with the
# binaries only, run as a non-root user; secrets (DATABASE_URL, the signing
# key file) come from the environment or mounted files, never the image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 realchat
COPY --from=build /src/target/release/realchat-auth \
                  /src/target/release/realchat-relay \
                  /src/target/release/realchat-profile-consumer \
                  /usr/local/bin/
USER realchat
ENV AUTH_GRPC_ADDR=0.0.0.0:50051
EXPOSE 50051 9464 9465
CMD ["realchat-auth"]
