# Stand-ins for the official redis and mysql/mariadb images, from Debian's packages, for
# machines that reach a Debian mirror but no image registry (CI). BASE: a Debian image, e.g.
# from docker/base-image.sh. Build from docker/:
#
#   docker build -f docker/debian.Dockerfile --target redis --build-arg BASE=local/debian:bookworm \
#       -t local/redis:bookworm docker
#   docker build -f docker/debian.Dockerfile --target mariadb --build-arg BASE=local/debian:bookworm \
#       -t local/mariadb:bookworm docker
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
