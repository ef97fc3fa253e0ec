# coupon-persister: set COUPON_PERSISTER_REDIS_URL and COUPON_PERSISTER_DATABASE_URL (or pass
# flags); metrics and /healthz on 9187. Build from the repository root:
#
#   docker build -f docker/persister.Dockerfile -t coupon-persister .                     # compiles it
#   docker build -f docker/persister.Dockerfile --target from-host -t coupon-persister .  # or takes the
#       host's target/release/coupon-persister (glibc not newer than BASE's)
#
# BASE: the Debian image to run on. BUILDER: a Rust image of the same or an older Debian. The
# default target needs BuildKit (the default since Docker 23) to skip the from-host stage.
ARG BASE=debian:bookworm-slim
ARG BUILDER=rust:1-bookworm

FROM ${BASE} AS runtime
ENV COUPON_PERSISTER_METRICS_ADDR=0.0.0.0:9187
EXPOSE 9187
USER nobody
ENTRYPOINT ["coupon-persister"]

FROM runtime AS from-host
COPY target/release/coupon-persister /usr/local/bin/coupon-persister

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p coupon-persister

FROM runtime AS from-source
COPY --from=build /src/target/release/coupon-persister /usr/local/bin/coupon-persister
