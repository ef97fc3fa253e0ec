# coupon-http, the example HTTP service: set COUPON_HTTP_REDIS_URL and COUPON_HTTP_CAMPAIGNS (or
# pass flags); it listens on 8080, /metrics and /healthz included. Build from the repository root:
#
#   docker build -f docker/http-service.Dockerfile -t coupon-http .                     # compiles it
#   docker build -f docker/http-service.Dockerfile --target from-host -t coupon-http .  # or takes the
#       host's target/release/coupon-http (glibc not newer than BASE's)
#
# BASE: the Debian image to run on. BUILDER: a Rust image of the same or an older Debian. The
# default target needs BuildKit (the default since Docker 23) to skip the from-host stage.
ARG BASE=debian:bookworm-slim
ARG BUILDER=rust:1-bookworm

FROM ${BASE} AS runtime
ENV COUPON_HTTP_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER nobody
ENTRYPOINT ["coupon-http"]

FROM runtime AS from-host
COPY target/release/coupon-http /usr/local/bin/coupon-http

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p coupon-http-example

FROM runtime AS from-source
COPY --from=build /src/target/release/coupon-http /usr/local/bin/coupon-http
