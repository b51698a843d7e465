# syntax=docker/dockerfile:1
# gridseal in a container: a static binary on distroless, as an unprivileged
# user. Build with `make image` (which passes VERSION, COMMIT and DATE), or
#   docker build --build-arg VERSION=v1.0.0 -t gridseal .
# The proxy listens on 5020 inside the container (no capability needed);
# publish it as 502. The setup target (a shell and the binary) is what
# deploy/compose uses to make a site's keys and signed policy once.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG DATE=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT} -X main.date=${DATE}" \
      -o /out/gridseal ./cmd/gridseal \
 && mkdir -p /out/data

FROM debian:stable-slim AS setup
COPY --from=build /out/gridseal /usr/local/bin/gridseal
COPY deploy/examples /usr/share/gridseal/examples
COPY deploy/compose/setup.sh /usr/local/bin/gridseal-setup
RUN mkdir /site && chown 65532:65532 /site
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gridseal-setup"]

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=build /out/gridseal /usr/local/bin/gridseal
COPY --from=build --chown=65532:65532 /out/data /var/lib/gridseal
USER 65532:65532
WORKDIR /var/lib/gridseal
VOLUME /var/lib/gridseal
EXPOSE 5020 8080
ENTRYPOINT ["/usr/local/bin/gridseal"]
CMD ["proxy", "--config", "/etc/gridseal/gridseal.yaml", "--data-dir", "/var/lib/gridseal", "--log-format", "json"]
