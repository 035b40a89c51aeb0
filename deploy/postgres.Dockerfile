# PostgreSQL for the Compose stack, from Debian's own package: it builds wherever Debian's mirror is
# reachable (no image registry needed), on the official debian:bookworm-slim by default or any
# Debian 12 base (`make postgres-image BASE_IMAGE=local/debian-python:bookworm` on these machines).
# deploy/postgres-entrypoint.sh makes the cluster on first start (password from POSTGRES_PASSWORD,
# the databases in POSTGRES_DATABASES) and then runs the server as the postgres user.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG PG_VERSION=15
# No cluster from the package's postinst: the entrypoint makes one in the data volume.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-${PG_VERSION} >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/share/doc/* /usr/share/man/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
# The build context is deploy/ (deploy/compose.yaml, `make postgres-image`).
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/${PG_VERSION}/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["postgres-entrypoint"]
