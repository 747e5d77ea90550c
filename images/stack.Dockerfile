# Every notebook stack on top of the base notebook image (images/base) that needs no more
# than Python packages: the packages of the stack directory's hashed lock (the build
# context, images/<name>), installed into the base's venv /opt/venv. A stack that needs
# more (apt packages) puts its own Dockerfile in its directory. The entrypoint, the
# user handling and the no-setuid rule come from the base. Built by `scirepo images build`,
# which passes the base it has just pushed, pinned by digest, as BASE_IMAGE.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

# As in images/base: the CA bundle is a BuildKit secret (id=ca), present only during this
# RUN; only what the lock names, only the files it names (--no-deps --require-hashes,
# wheels only), byte-compiled; the lock is bind-mounted (no layer of its own) and pip's
# download cache is a BuildKit cache mount, never in a layer. The lock was compiled with
# the base's lock as constraints: packages already in the base are at the same version and
# pip leaves them as they are, so this layer holds only the stack's own packages.
RUN --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    set -eu; \
    set --; \
    if [ -s /run/secrets/ca ]; then set -- --cert /run/secrets/ca; fi; \
    pip install "$@" --no-deps --require-hashes --only-binary :all: --compile \
        -r /tmp/requirements.txt

# The stack's packages may add JupyterLab extensions with settings schemas, and server
# extensions with regular expressions: record the schemas checked and the regular
# expressions compiled again (base image's Dockerfile, scirepo_singleuser/records.py).
RUN python -m scirepo_singleuser.records
