# Spoke's two images, from one binary: the sidecar (`spoke proxy`), its init step
# (`spoke redirect`) and the control plane (`spoke control`).
#   docker build -t spoke:latest .                              # runtime: proxy, control plane
#   docker build --target spoke-init -t spoke-init:latest .     # the injected init step
#
# `spoke` (the default target, the last stage) is distroless: FROM scratch with the binary,
# exactly the shared libraries `ldd` lists for it, the CA bundle and /etc/passwd and
# /etc/group entries for uid/gid 1337 (the proxy's user, whose traffic the capture rules
# never redirect), which it runs as. No shell, no package manager: `kubectl exec` into it
# works only as `spoke ...` (e.g. `spoke diagnose`).
# `spoke-init` is Debian slim with iptables (nft and legacy backends), which `spoke
# redirect` runs; only the injected init container uses it, as root (runAsUser 0, with
# NET_ADMIN and NET_RAW), overriding the image's own uid 1337. `spoke inject` and the
# webhook derive its name from --image (spoke:latest -> spoke-init:latest) unless
# --init-image names it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked --bin spoke && strip target/release/spoke
# The runtime image's root filesystem. The libraries come from `ldd` (with the dynamic
# loader, under the paths it names), so this works on any architecture; `cp -L` copies
# what a symlink such as /lib64/ld-linux-x86-64.so.2 points at.
RUN set -eu; bin=target/release/spoke; root=/rootfs; \
    mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs"; \
    cp "$bin" "$root/usr/local/bin/spoke"; \
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do cp -L --parents "$lib" "$root"; done; \
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"; \
    echo 'spoke:x:1337:1337:spoke:/nonexistent:/sbin/nologin' > "$root/etc/passwd"; \
    echo 'spoke:x:1337:' > "$root/etc/group"; \
    echo 'hosts: files dns' > "$root/etc/nsswitch.conf"

FROM debian:bookworm-slim AS spoke-init
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 spoke \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin spoke
COPY --from=build /src/target/release/spoke /usr/local/bin/spoke
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/spoke"]
CMD ["redirect", "--help"]

FROM scratch AS spoke
COPY --from=build /rootfs/ /
USER 1337:1337
EXPOSE 15001 15006 15020 15010 15014 15017
ENTRYPOINT ["/usr/local/bin/spoke"]
CMD ["--help"]
