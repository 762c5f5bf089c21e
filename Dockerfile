# syntax=docker/dockerfile:1
# One image per operator binary:
#   docker build --build-arg BINARY=packer-builder-operator -t <registry>/packer-builder-operator:<tag> .
#   docker build --build-arg BINARY=ami-refresh-operator    -t <registry>/ami-refresh-operator:<tag> .
# A static (musl) binary on distroless/static, running as the non-root user 65532.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
ARG BINARY
RUN test -n "${BINARY}" || (echo "set --build-arg BINARY=packer-builder-operator|ami-refresh-operator" >&2; exit 1)
# The musl target of the machine building it: the release builds each architecture natively
# (amd64 and arm64 runners) and joins them under one multi-arch tag.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" --package "${BINARY}" \
 && cp "target/$target/release/${BINARY}" /operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /operator /operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/operator"]
CMD ["run"]
