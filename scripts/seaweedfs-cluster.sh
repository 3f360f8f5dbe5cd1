#!/usr/bin/env bash
# A multi-process SeaweedFS cluster for blockstore: one `weed master` (with
# -defaultReplication), N `weed volume` servers, one standalone `weed filer` (-maxMB, 1 MiB
# chunks by default) and one `weed s3` gateway whose identities file (-config, 0600) holds
# keys generated here. Everything listens on 127.0.0.1 unless --ip says otherwise; data, logs,
# keys and pid files live under DIR. Prints the BLOCKSTORE_S3_* settings to use (also kept in
# DIR/blockstore.env, 0600).
#
#   scripts/seaweedfs-cluster.sh start DIR [--volumes N] [--replication 001] [--chunk-mb 1]
#                                          [--ip 127.0.0.1] [--port-base 9330] [--bucket NAME]
#   scripts/seaweedfs-cluster.sh status DIR      # one line per process; exit 1 if one is down
#   scripts/seaweedfs-cluster.sh stop DIR        # SIGTERM, then SIGKILL after 15 s
#
# Ports from --port-base B: master B (gRPC B+1), filer B+2 (B+3), S3 B+4 (B+5), volume server
# i (from 1) B+10+2i (B+11+2i); keep them below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768 up by default), where an outgoing connection
# can hold a port just when a server wants to listen on it. A start that fails stops what it
# started. Replication 001 keeps a second copy of every volume on another
# server of the same rack: it needs at least 2 volume servers (010: racks, 100: data centres).
#
# The internal ports are locked as the embedded store's are (blockstore/host/embedded.py): mutual
# TLS (a CA and key made here, DIR/tls, 0700) on every gRPC port and on the master's HTTP, and
# JWT keys for every read and write on the volume servers' and filer's HTTP (DIR/security.toml,
# 0600, read from each process's working directory, DIR). Only S3 with the keys reaches data.
# Several hosts (not tested here): every host needs the same DIR/security.toml and DIR/tls
# (weed does not check host names on its certificates, so one serves every host), and the
# master and filer addresses the script passes assume one host: adapt the launch lines.
set -euo pipefail

WEED="${WEED:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/weed}"
[[ -x $WEED ]] || WEED="$(command -v weed || true)"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

cmd="${1:-}"; dir="${2:-}"
[[ -n $cmd && -n $dir ]] || usage
shift 2
volumes=2 replication=001 chunk_mb=1 ip=127.0.0.1 base=9330 bucket=blockstore
while (($#)); do
    case "$1" in
        --volumes) volumes="$2"; shift 2 ;;
        --replication) replication="$2"; shift 2 ;;
        --chunk-mb) chunk_mb="$2"; shift 2 ;;
        --ip) ip="$2"; shift 2 ;;
        --port-base) base="$2"; shift 2 ;;
        --bucket) bucket="$2"; shift 2 ;;
        *) usage ;;
    esac
done

names() {  # the processes, in start order
    echo master
    for ((i = 1; i <= $(cat "$dir/volumes" 2>/dev/null || echo "$volumes"); i++)); do echo "volume$i"; done
    echo filer
    echo s3
}

alive() { [[ -f $dir/pids/$1.pid ]] && kill -0 "$(cat "$dir/pids/$1.pid")" 2>/dev/null; }

make_tls() {  # a CA and one certificate for serverAuth and clientAuth, for $ip
    local t="$dir/tls"
    [[ -f $t/weed.crt ]] && return
    mkdir -p -m 0700 "$t"
    printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' \
        "$ip" > "$t/ext.cnf"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -days 36500 -keyout "$t/ca.key" -out "$t/ca.crt" \
        -subj /CN=blockstore-seaweedfs-ca 2>/dev/null
    openssl req "${ec[@]}" -keyout "$t/weed.key" -out "$t/weed.csr" -subj /CN=blockstore-seaweedfs 2>/dev/null
    openssl x509 -req -in "$t/weed.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
        -out "$t/weed.crt" -days 36500 -extfile "$t/ext.cnf" 2>/dev/null
    rm -f "$t/ca.key" "$t/weed.csr" "$t/ext.cnf" "$t/ca.srl"
}

make_security() {  # DIR/security.toml, read by every weed process started in DIR
    [[ -f $dir/security.toml ]] && return
    local t="$dir/tls" c
    {
        for s in jwt.signing jwt.signing.read jwt.filer_signing jwt.filer_signing.read; do
            printf '[%s]\nkey = "%s"\nexpires_after_seconds = 10\n' "$s" "$(openssl rand -hex 32)"
        done
        printf '[access]\nui = false\n[filer.expose_directory_metadata]\nenabled = false\n'
        printf '[grpc]\nca = "%s/ca.crt"\n' "$t"
        for c in master volume filer s3 admin worker msg_broker msg_agent mq client; do
            printf '[grpc.%s]\ncert = "%s/weed.crt"\nkey = "%s/weed.key"\n' "$c" "$t" "$t"
        done
        printf '[https.master]\ncert = "%s/weed.crt"\nkey = "%s/weed.key"\nca = "%s/ca.crt"\n' "$t" "$t" "$t"
    } > "$dir/security.toml"
}

make_identities() {  # the S3 gateway's identities (-config) and blockstore's settings
    [[ -f $dir/s3.json ]] && return
    local ak sk
    ak="bs$(openssl rand -hex 8)"; sk="$(openssl rand -base64 30 | tr -d '/+=\n')"
    printf '{"identities": [{"name": "blockstore", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
        "$ak" "$sk" > "$dir/s3.json"
    cat > "$dir/blockstore.env" <<EOF
BLOCKSTORE_S3_ENDPOINT=http://$ip:$((base + 4))
BLOCKSTORE_S3_BUCKET=$bucket
BLOCKSTORE_S3_ACCESS_KEY=$ak
BLOCKSTORE_S3_SECRET_KEY=$sk
BLOCKSTORE_S3_REGION=us-east-1
EOF
}

launch() {  # name, args...: start one weed process in DIR, detached, pid in DIR/pids
    local name="$1"; shift
    alive "$name" && return
    (cd "$dir" && umask 077 && exec setsid "$WEED" "$@" >>"$dir/logs/$name.log" 2>&1 < /dev/null) &
    echo $! > "$dir/pids/$name.pid"
}

wait_for() {  # seconds, what, command...
    local secs="$1" until=$((SECONDS + $1)) what="$2"; shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < until)) || { echo "seaweedfs-cluster: $what not ready after ${secs} s; logs in $dir/logs" >&2; return 1; }
        sleep 0.5
    done
}

master_sees_volumes() {  # the master (over mutual TLS) lists every volume server
    local t="$dir/tls" n
    n=$(curl -s -m 2 --cacert "$t/ca.crt" --cert "$t/weed.crt" --key "$t/weed.key" \
        "https://127.0.0.1:$base/dir/status" | grep -o '"Url"' | wc -l)
    ((n >= $(cat "$dir/volumes")))
}

s3() {  # method, path: a signed S3 request with the generated keys; prints the status
    local ak sk
    ak=$(sed -n 's/^BLOCKSTORE_S3_ACCESS_KEY=//p' "$dir/blockstore.env")
    sk=$(sed -n 's/^BLOCKSTORE_S3_SECRET_KEY=//p' "$dir/blockstore.env")
    curl -s -m 5 -o /dev/null -w '%{http_code}' -X "$1" --aws-sigv4 "aws:amz:us-east-1:s3" \
        --user "$ak:$sk" "http://127.0.0.1:$((base + 4))$2"
}

bucket_ready() { local st; st=$(s3 PUT "/$bucket"); [[ $st == 200 || $st == 409 ]]; }

start() {
    command -v openssl >/dev/null || { echo "seaweedfs-cluster: openssl is needed" >&2; exit 1; }
    [[ -x $WEED ]] || { echo "seaweedfs-cluster: weed not found (scripts/setup.sh)" >&2; exit 1; }
    if [[ -f $dir/settings ]]; then  # a restart keeps the first start's layout
        # shellcheck disable=SC1091
        . "$dir/settings"
    fi
    umask 077
    mkdir -p "$dir"; chmod 0700 "$dir"
    mkdir -p -m 0700 "$dir/pids" "$dir/logs" "$dir/master" "$dir/filer"
    printf 'volumes=%s replication=%s chunk_mb=%s ip=%s base=%s bucket=%s\n' \
        "$volumes" "$replication" "$chunk_mb" "$ip" "$base" "$bucket" > "$dir/settings"
    echo "$volumes" > "$dir/volumes"
    make_tls; make_security; make_identities
    local on=(-ip="$ip" -ip.bind="$ip") masters="$ip:$base.$((base + 1))" i
    launch master master -port="$base" -port.grpc=$((base + 1)) -mdir="$dir/master" \
        -defaultReplication="$replication" -volumeSizeLimitMB=1024 -telemetry=false "${on[@]}"
    for ((i = 1; i <= volumes; i++)); do
        mkdir -p -m 0700 "$dir/volume$i"
        launch "volume$i" volume -port=$((base + 10 + 2 * i)) -port.grpc=$((base + 11 + 2 * i)) \
            -dir="$dir/volume$i" -master="$masters" -max=64 "${on[@]}"
    done
    wait_for 60 "volume servers" master_sees_volumes || { stop; exit 1; }
    launch filer filer -port=$((base + 2)) -port.grpc=$((base + 3)) -master="$masters" \
        -maxMB="$chunk_mb" -defaultStoreDir="$dir/filer" "${on[@]}"
    launch s3 s3 -port=$((base + 4)) -port.grpc=$((base + 5)) \
        -filer="$ip:$((base + 2)).$((base + 3))" -config="$dir/s3.json" -port.iceberg=0 \
        -port.lance=0 "${on[@]}"
    wait_for 60 "S3 gateway and bucket $bucket" bucket_ready || { stop; exit 1; }
    echo "# SeaweedFS cluster in $dir: master, $volumes volume servers (replication $replication), filer (${chunk_mb} MiB chunks), S3"
    echo "# blockstore settings (also in $dir/blockstore.env):"
    cat "$dir/blockstore.env"
}

stop() {
    local n pid names_rev
    if [[ -f $dir/settings ]]; then
        # shellcheck disable=SC1091
        . "$dir/settings"
    fi
    names_rev=$(names | tac)
    for n in $names_rev; do
        alive "$n" && kill -TERM "$(cat "$dir/pids/$n.pid")"
    done
    for n in $names_rev; do
        pid=$(cat "$dir/pids/$n.pid" 2>/dev/null || true)
        [[ -n $pid ]] || continue
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        rm -f "$dir/pids/$n.pid"
    done
    # weed leaves its unix sockets behind: /tmp/seaweedfs-<component>[-grpc]-<port>.sock
    local p
    for ((p = base; p < base + 12 + 2 * $(cat "$dir/volumes" 2>/dev/null || echo "$volumes"); p++)); do
        rm -f /tmp/seaweedfs-*-"$p".sock
    done
    return 0
}

status() {
    local n bad=0
    for n in $(names); do
        if alive "$n"; then echo "$n running (pid $(cat "$dir/pids/$n.pid"))"
        else echo "$n stopped"; bad=1; fi
    done
    return $bad
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
