# The swarm manager as a container image: the stripped binary, the default embedding model,
# its tokenizer and ONNX Runtime (for the dashboard's search; verified by sha256), a non-root
# user and nothing else. Build from the repository root:
#
#   docker build -f deploy/manager.Dockerfile -t murmur/manager:0.1.0 .
#
# (or `buildah bud -f deploy/manager.Dockerfile .`, `podman build …`, `kaniko`: no daemon needed).
# With no registry to pull the base images from, scripts/build-manager-image.sh builds an image
# with the same contents and configuration from Debian's apt mirror into an OCI layout
# (docs/deploy.md).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --locked --profile dist -p murmur-manager -p murmur-models \
 && target/dist/murmur-models bundle /bundle

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/murmur-manager murmur \
 && install -d -o murmur -g murmur -m 0750 /var/lib/murmur-manager
COPY --from=build /src/target/dist/murmur-manager /usr/bin/murmur-manager
COPY --from=build /bundle /usr/lib/murmur/cache
ENV MURMUR_MANAGER_DATA_DIR=/var/lib/murmur-manager \
    MURMUR_CACHE_DIR=/usr/lib/murmur/cache
USER 10001:10001
EXPOSE 7720/udp 7721/tcp
VOLUME ["/var/lib/murmur-manager"]
ENTRYPOINT ["/usr/bin/murmur-manager"]
CMD ["run", "--uplink-listen", "0.0.0.0:7720", "--http-listen", "0.0.0.0:7721"]
