# syntax=docker/dockerfile:1
#
# A disruptor peer in a container.
#
#   docker build -t disruptor --build-arg DISRUPTOR_GIT_REV=$(git rev-parse --short=12 HEAD) .
#
# Running it (ports, the HTTP token it needs, the pre-shared key, the stop
# timeout): docs/multi-machine.md, "In containers".
#
# The image runs `disruptor peer` as user disruptor (uid 10001) with its
# HTTP endpoint on 0.0.0.0:8080, so that it can be published; off
# loopback the peer refuses to start without a bearer token, read from
# /run/secrets/http.token (mount a file there, owned by uid 10001, mode
# 0600). Settings are DISRUPTOR_* variables (one per flag of `disruptor
# peer`: DISRUPTOR_BOOTSTRAP, DISRUPTOR_PSK_FILE, DISRUPTOR_ADMIN, ...) or
# flags after `peer`; /var/lib/disruptor (identity, apps, bundles) is a
# volume.

ARG RUST_VERSION=1.95
# bookworm: Node 18 and Python 3.11 from Debian; trixie: Node 20, Python 3.13.
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
# What `disruptor --version` names: the context has no .git to ask.
ARG DISRUPTOR_GIT_REV=
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p disruptor --bin disruptor \
    && install -m 0755 target/release/disruptor /usr/local/bin/disruptor

FROM debian:${DEBIAN}-slim
# nodejs and python3 for worker apps (and python3 for the health check);
# tini as PID 1, to pass SIGTERM on and to reap whatever a worker leaves.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates nodejs python3 tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 disruptor \
    && useradd --uid 10001 --gid disruptor --no-create-home --no-log-init \
        --home-dir /var/lib/disruptor --shell /usr/sbin/nologin disruptor \
    && install -d -o disruptor -g disruptor -m 0750 \
        /var/lib/disruptor /var/lib/disruptor/apps /var/lib/disruptor/data
COPY --from=build /usr/local/bin/disruptor /usr/local/bin/disruptor

ENV DISRUPTOR_LISTEN=0.0.0.0:4001 \
    DISRUPTOR_HTTP=0.0.0.0:8080 \
    DISRUPTOR_HTTP_TOKEN_FILE=/run/secrets/http.token \
    DISRUPTOR_IDENTITY=/var/lib/disruptor/identity.key \
    DISRUPTOR_APPS=/var/lib/disruptor/apps \
    DISRUPTOR_DATA_DIR=/var/lib/disruptor/data

USER disruptor
WORKDIR /var/lib/disruptor
VOLUME ["/var/lib/disruptor"]
# 4001: peers (open it to the other machines of the mesh only);
# 8080: HTTP, token required (never publish it to the internet).
EXPOSE 4001/tcp 8080/tcp

# GET /healthz needs no token. It follows DISRUPTOR_HTTP's port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('DISRUPTOR_HTTP', '127.0.0.1:8080').rsplit(':', 1)[1]; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]

# On SIGTERM the peer drains (--drain-grace, 10s) and then stops its
# workers (--worker-grace, 5s): give `docker stop` more than its default
# 10 s (docker run --stop-timeout 30; compose: stop_grace_period: 30s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "disruptor"]
CMD ["peer"]
