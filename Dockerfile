# syntax=docker/dockerfile:1
# The earshot image: the one binary on a distroless base (glibc, CA certificates, no shell,
# no package manager), running as the unprivileged user 65532. Serves, routes, builds and
# publishes: the subcommand is the first argument (deploy/ passes `serve`, `route`, …).
#
#   docker build -t registry.example.com/earshot:0.1.0 .
#
# The binary detects AVX-512 / AVX2+FMA at run time, so it is built for baseline x86-64 and
# runs on any node. mimalloc and ring compile C sources: the builder image has gcc.

FROM docker.io/library/rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit); the binary is copied
# out of the cached target/ in the same step. --locked: exactly Cargo.lock's versions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin earshot \
 && install -D -m 0755 target/release/earshot /out/earshot

# Same Debian release as the builder (bookworm, glibc 2.36): the dynamically linked binary
# finds the glibc it was built against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/earshot /usr/local/bin/earshot
USER 65532:65532
EXPOSE 7700
ENTRYPOINT ["/usr/local/bin/earshot"]
CMD ["--help"]
