#!/bin/sh
# Makes the compose demo's site once, in /site (a volume): the keys, the
# example policy signed by two admins, the trust file and a configuration
# that records to the 3-node NATS cluster; then creates the streams as the
# NATS admin (gridseal chain init, idempotent). The same steps as the
# README's "Running it in front of real devices". deploy/container_test.go
# runs it (SITE, EXAMPLES, no ADMIN_NATS) and starts the proxy on the site.
set -eu
cd "${SITE:-/site}"
examples=${EXAMPLES:-/usr/share/gridseal/examples}
if [ ! -f gridseal.yaml ]; then
  cp "$examples/gridseal.yaml" "$examples/policy.yaml" .
  sed -i 's|127.0.0.1:15021|sim:15021|' policy.yaml
  gridseal keys new gw-1 --dir keys
  gridseal keys checkpoint cp-1 --dir keys
  for who in alice bob carol admin-1 admin-2; do gridseal keys new "$who" --dir keys; done
  gridseal policy approvers --group operators keys/alice.public.json keys/bob.public.json keys/carol.public.json >> policy.yaml
  gridseal policy root --threshold 2 keys/admin-1.public.json keys/admin-2.public.json > policy-root.yaml
  gridseal policy sign policy.yaml --key keys/admin-1.private.json
  gridseal policy sign policy.yaml --key keys/admin-2.private.json
  gridseal chain trust --writer gw-1=keys/gw-1.public.json --checkpointer keys/cp-1.checkpoint.vkey --out trust.yaml
  sed -i 's|listen: 127.0.0.1:5021|listen: 0.0.0.0:5020|' gridseal.yaml
  if [ -n "${GW_NATS:-}" ]; then
    sed -i -e "s|nats: \"\"|nats: \"$GW_NATS\"|" -e 's|replicas: 1 |replicas: 3 |' gridseal.yaml
  fi
fi
if [ -n "${ADMIN_NATS:-}" ]; then
  gridseal chain init --replicas 3 --nats "$ADMIN_NATS"
fi
