# svcnat's image for those who have a container engine. The tested path needs none:
# scripts/image writes .build/image/svcnat.oci.tar (docker load -i / podman load -i).
# Build: docker build -t svcnat .
FROM swift:6.3-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libnftnl-dev libmnl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources Sources
COPY CNftables CNftables
RUN swift build -c release --static-swift-stdlib --product svcnat && strip -o /svcnat .build/release/svcnat

# Only libnftnl and libmnl (and the C library) at run time: the Swift runtime is in the binary.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libnftnl11 libmnl0 && rm -rf /var/lib/apt/lists/*
COPY --from=build /svcnat /usr/local/bin/svcnat
ENTRYPOINT ["/usr/local/bin/svcnat"]
CMD ["run"]
