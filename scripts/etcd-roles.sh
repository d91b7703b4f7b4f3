#!/bin/sh
# Least-privilege etcd users and roles for one pgwarden cluster (docs/security.md).
#
#   etcd-roles.sh CLUSTER KEEPER_UIDS PROXY_IDS
#
# KEEPER_UIDS and PROXY_IDS are comma-separated. Run it with etcdctl set up
# as etcd's root user (ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT and
# ETCDCTL_KEY of a client certificate with CN=root); it ends with
# `etcdctl auth enable`. Each user authenticates by a client certificate
# whose CN is the user's name (etcd's --client-cert-auth). With
# SENTINEL_PASSWORD_FILE set, the sentinel user also gets that password
# (for --store-user/--store-password-file). Safe to run again: existing
# users and roles are kept and the grants re-applied.
set -eu
cluster=$1
keepers=$2
proxies=$3
p="/pgwarden/$cluster/"
name="pgwarden-$cluster"

user() { # user NAME ROLE: a certificate-authenticated user with one role
    etcdctl user get "$1" >/dev/null 2>&1 || etcdctl user add "$1" --no-password >/dev/null
    etcdctl user grant-role "$1" "$2" >/dev/null
}
role() { # role NAME: a role that may read the whole cluster prefix
    etcdctl role get "$1" >/dev/null 2>&1 || etcdctl role add "$1" >/dev/null
    etcdctl role grant-permission "$1" --prefix=true read "$p" >/dev/null
}

etcdctl user get root >/dev/null 2>&1 || etcdctl user add root --no-password >/dev/null
etcdctl user grant-role root root >/dev/null

# Operators (pgwarden ctl): the whole cluster prefix.
role "$name-admin"
etcdctl role grant-permission "$name-admin" --prefix=true readwrite "$p" >/dev/null
user "$name-admin" "$name-admin"

# Sentinels: the status and the election key, nothing else.
role "$name-sentinel"
etcdctl role grant-permission "$name-sentinel" readwrite "${p}status" >/dev/null
etcdctl role grant-permission "$name-sentinel" --prefix=true readwrite "${p}sentinels/" >/dev/null
if [ -n "${SENTINEL_PASSWORD_FILE:-}" ]; then
    etcdctl user get "$name-sentinel" >/dev/null 2>&1 ||
        etcdctl user add "$name-sentinel" --interactive=false <"$SENTINEL_PASSWORD_FILE" >/dev/null
fi
user "$name-sentinel" "$name-sentinel"

# Each keeper: its own report, its own handled-request marker, the primary key.
for uid in $(echo "$keepers" | tr ',' ' '); do
    role "$name-keeper-$uid"
    etcdctl role grant-permission "$name-keeper-$uid" readwrite "${p}keepers/$uid" >/dev/null
    etcdctl role grant-permission "$name-keeper-$uid" readwrite "${p}handled/$uid" >/dev/null
    etcdctl role grant-permission "$name-keeper-$uid" readwrite "${p}primary" >/dev/null
    user "$name-keeper-$uid" "$name-keeper-$uid"
done

# Each proxy: its own acknowledgement.
for id in $(echo "$proxies" | tr ',' ' '); do
    role "$name-proxy-$id"
    etcdctl role grant-permission "$name-proxy-$id" readwrite "${p}proxies/$id" >/dev/null
    user "$name-proxy-$id" "$name-proxy-$id"
done

etcdctl auth enable >/dev/null
