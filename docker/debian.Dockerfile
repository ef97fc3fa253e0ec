# Stand-ins for the official redis, mysql/mariadb, prom/prometheus and oliver006/redis_exporter
# images, from Debian's packages, for machines that reach a Debian mirror but no image registry
# (CI). BASE: a Debian image, e.g. from docker/base-image.sh. Build from docker/:
#
#   docker build -f docker/debian.Dockerfile --target redis --build-arg BASE=local/debian:bookworm \
#       -t local/redis:bookworm docker
#   docker build -f docker/debian.Dockerfile --target mariadb --build-arg BASE=local/debian:bookworm \
#       -t local/mariadb:bookworm docker
#   docker build -f docker/debian.Dockerfile --target prometheus --build-arg BASE=local/debian:bookworm \
#       -t local/prometheus:bookworm docker
#   docker build -f docker/debian.Dockerfile --target redis-exporter --build-arg BASE=local/debian:bookworm \
#       -t local/redis-exporter:bookworm docker
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS redis
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]

FROM ${BASE} AS mariadb
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mariadb-server \
    && rm -rf /var/lib/apt/lists/* \
    # The package initialised a data directory; the entrypoint makes its own on a first start.
    && rm -rf /var/lib/mysql && mkdir /var/lib/mysql
COPY mariadb-entrypoint.sh /usr/local/bin/
EXPOSE 3306
ENTRYPOINT ["mariadb-entrypoint.sh"]

# As prom/prometheus: the arguments are prometheus' flags, its data in /prometheus.
FROM ${BASE} AS prometheus
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

# As oliver006/redis_exporter: REDIS_ADDR names the server, figures on 9121.
FROM ${BASE} AS redis-exporter
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-redis-exporter \
    && rm -rf /var/lib/apt/lists/*
USER nobody
EXPOSE 9121
ENTRYPOINT ["prometheus-redis-exporter"]
