# Builds the workspace and ships the publishers and the backend in a slim image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin loadgen --bin frontend1-pub --bin frontend2-pub --bin backend-sub --bin job-pub

FROM debian:bookworm-slim
COPY --from=build /src/target/release/loadgen /src/target/release/frontend1-pub /src/target/release/frontend2-pub /src/target/release/backend-sub /src/target/release/job-pub /usr/local/bin/
COPY configs /etc/mqtt-loadgen
USER nobody
ENTRYPOINT []
