# Redis with the coupon module loaded, on 6379. Build from the repository root:
#
#   docker build -f docker/redis.Dockerfile -t coupon-redis .                     # compiles the module
#   docker build -f docker/redis.Dockerfile --target from-host -t coupon-redis .  # or takes the host's
#       target/release/libcoupon.so (`cargo build --release -p coupon-module`; glibc not newer than BASE's)
#
# BASE: a Redis ≥ 7 image (redis-server on PATH). BUILDER: a Rust image of the same or an older
# Debian than BASE. Where neither can be pulled, docker/base-image.sh and docker/debian.Dockerfile
# make local stand-ins. The default target needs BuildKit (the default since Docker 23) to skip
# the from-host stage.
ARG BASE=redis:7
ARG BUILDER=rust:1-bookworm

FROM ${BASE} AS runtime
EXPOSE 6379
# No password: for tests, and for a stack on a private network (compose publishes it on
# loopback only).
CMD ["redis-server", "--loadmodule", "/usr/local/lib/coupon/libcoupon.so", "--protected-mode", "no"]

FROM runtime AS from-host
COPY target/release/libcoupon.so /usr/local/lib/coupon/libcoupon.so

FROM ${BUILDER} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p coupon-module

FROM runtime AS from-source
COPY --from=build /src/target/release/libcoupon.so /usr/local/lib/coupon/libcoupon.so
