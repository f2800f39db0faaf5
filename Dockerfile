# The spoke image: one binary for the sidecar (`spoke proxy`), its init step
# (`spoke redirect`) and the control plane (`spoke control`).
#   docker build -t spoke:latest .
#
# Not distroless or static: `spoke redirect` runs iptables-restore, so the runtime stage
# is Debian slim with iptables (nft and legacy backends) and nothing else. It runs as
# uid/gid 1337 by default, the proxy's user, whose traffic the capture rules never
# redirect; the injected init step alone overrides that with runAsUser 0.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked --bin spoke && strip target/release/spoke

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 spoke \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin spoke
COPY --from=build /src/target/release/spoke /usr/local/bin/spoke
USER 1337:1337
EXPOSE 15001 15006 15020 15010 15014 15017
ENTRYPOINT ["/usr/local/bin/spoke"]
CMD ["--help"]
