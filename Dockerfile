# The ossmount image (the CSI node plugin, and every other command): built with the Rust
# toolchain, run on slim Debian with fuse3 (mount.fuse3, /etc/fuse.conf). No protoc needed:
# csi.proto is compiled in pure Rust by build.rs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ossmount

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ossmount /usr/local/bin/ossmount
ENTRYPOINT ["/usr/local/bin/ossmount"]
