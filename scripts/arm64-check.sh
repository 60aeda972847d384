#!/usr/bin/env bash
# aarch64, proven under emulation: does a Raspberry Pi 4/5 or a Jetson Orin decide as the x86_64 PC does?
#
# Builds a Debian arm64 root (debootstrap, qemu-user-static through binfmt_misc), installs HEAD of this
# repository there from aarch64 wheels, and then, on emulated Cortex-A cores:
#   1. runs the fast lane (pytest -m "not integration") in the background, under QEMU_CPU=cortex-a76;
#   2. replays the SKAB files through `appliance score`'s code path with bundles trained on x86_64
#      (the per-file bundles of `appliance eval skab`) under QEMU_CPU=cortex-a72 (Pi 4) and
#      cortex-a76 (Pi 5; nearest to Orin's A78AE), and compares every row's score and alarm with
#      the x86_64 replay of the same bundles;
#   3. trains a small bundle on aarch64 (`appliance train`; training refuses a bundle whose INT8
#      check fails) and records its check;
# then writes benchmarks/results/arm64-check.{txt,json}. Emulated times mean nothing: decisions do.
#
# Needs root (debootstrap, mounts, binfmt_misc) and network (Debian mirror, PyPI). Re-usable: the
# root is built once (ARM64_ROOT, default /var/tmp/arm64-root, outside the repository); bundles and
# replays go to ARM64_WORK (default /var/tmp/arm64-work).
#   scripts/arm64-check.sh
#   ARM64_SKAB_FILES="valve1/0.csv other/1.csv" scripts/arm64-check.sh   a subset of SKAB files
#   ARM64_UNTIL=20:40 scripts/arm64-check.sh                             report what the fast lane and
#                                                                        the replays finished by then (UTC)
#   ARM64_FAST_LANE=0 scripts/arm64-check.sh                             no new fast lane: report the
#                                                                        last one (waits if it runs)
#   ARM64_PRECISIONS="int8 fp32" scripts/arm64-check.sh                  FP32 replays too (default: INT8,
#                                                                        what a gateway runs)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

ROOT=${ARM64_ROOT:-/var/tmp/arm64-root}
WORK=${ARM64_WORK:-/var/tmp/arm64-work}
SUITE=${ARM64_SUITE:-bookworm}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
CPUS=(cortex-a72 cortex-a76)
read -r -a PRECISIONS <<<"${ARM64_PRECISIONS:-int8}"
FAST_LANE_CPU=cortex-a76
FAST_LANE_LOG=$WORK/fast-lane.log
UNTIL=${ARM64_UNTIL:-}  # HH:MM UTC: report what the background runs finished by then
REPLAY_PIDS=()
read -r -a SKAB_FILES <<<"${ARM64_SKAB_FILES:-}"
APP=/opt/appliance  # the project inside the root: $APP-<commit>, one per commit checked
VENV=/opt/venv
HOST_CA=/etc/ssl/certs/host-ca-certificates.crt  # inside the root
OUT_TXT=$REPO/benchmarks/results/arm64-check.txt
OUT_JSON=$REPO/benchmarks/results/arm64-check.json

log() { echo "arm64-check: $*" >&2; }

# Replays depend on the bundles, the data and the appliance package: one kept in $WORK whose record
# says it finished with the same appliance/ tree is not redone.
APP_TREE=$(git rev-parse HEAD:appliance)

replay_done() {  # replay_done DIR
  [ -f "$1/platform.json" ] && grep -q '"complete": true' "$1/platform.json" \
    && grep -q "\"appliance_tree\": \"$APP_TREE\"" "$1/platform.json"
}

skab_data() {
  if [ -f "$REPO/data/skab/anomaly-free/anomaly-free.csv" ]; then echo "$REPO/data/skab"
  else echo /work/wt/shared/datasets/skab; fi
}

host_python() {
  if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"; else echo python3; fi
}

install_host_packages() {
  local pkgs=()
  command -v debootstrap >/dev/null || pkgs+=(debootstrap)
  [ -x /usr/bin/qemu-aarch64-static ] || pkgs+=(qemu-user-static)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]}"
    apt-get install -y "${pkgs[@]}" >/dev/null
  fi
}

# qemu's aarch64 handler, with the F flag (Debian's definition has it): the kernel opens the static
# interpreter at registration, so it runs inside the chroot without a copy there.
register_binfmt() {
  local misc=/proc/sys/fs/binfmt_misc
  [ -f "$misc/register" ] || mount -t binfmt_misc binfmt_misc "$misc"
  if [ -f "$misc/qemu-aarch64" ]; then
    grep -q '^flags:.*F' "$misc/qemu-aarch64" && return
    echo -1 >"$misc/qemu-aarch64"  # registered without F: replace it
  fi
  local def
  for def in /usr/lib/binfmt.d/qemu-aarch64.conf; do
    [ -f "$def" ] && break
  done
  [ -f "$def" ] || { log "no qemu-aarch64 binfmt definition under /usr/lib/binfmt.d"; exit 1; }
  local line
  line=$(grep -v '^#' "$def" | head -1)
  case "${line##*:}" in *F*) ;; *) line="${line}F" ;; esac
  echo "$line" >"$misc/register"
  log "registered qemu-aarch64 ($(grep '^flags' "$misc/qemu-aarch64"))"
}

build_root() {
  if [ -x "$ROOT/usr/bin/python3" ] && [ -x "$ROOT/usr/sbin/mosquitto" ]; then
    log "root $ROOT exists, not rebuilt"
    return
  fi
  log "debootstrap --arch=arm64 $SUITE into $ROOT (minutes)"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,mosquitto,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1
}

# ONNX Runtime's CPU probe (cpuinfo) reads these two files; the host's sysfs describes x86 cores and
# crashes it, an empty /sys makes it fail. Four cores, as on a Pi 4/5 and the smaller Orins.
fake_cpu_sysfs() {
  local cpu=$ROOT/sys/devices/system/cpu
  mountpoint -q "$cpu" || { mkdir -p "$cpu" && mount -t tmpfs -o size=64k arm64-cpu "$cpu"; }
  echo 0-3 >"$cpu/possible"
  echo 0-3 >"$cpu/present"
}

mount_root() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  if ! mountpoint -q "$ROOT/dev"; then
    mount --rbind /dev "$ROOT/dev"
    mount --make-rslave "$ROOT/dev"
  fi
  fake_cpu_sysfs
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  # pip in the root trusts what the host trusts (a site proxy's CA included).
  cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT$HOST_CA"
}

runs_in_root() {  # any process whose root directory is the root (a fast lane left running, another run)
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && return 0
  done
  return 1
}

unmount_root() {
  runs_in_root && { log "processes still run in $ROOT: mounts left in place"; return 0; }
  local m
  for m in "$ROOT/sys/devices/system/cpu" "$ROOT/proc"; do
    mountpoint -q "$m" && umount "$m" || true
  done
  mountpoint -q "$ROOT/dev" && umount -R "$ROOT/dev" || true
}

in_root() {  # in_root CPU command...: run in the root on the given emulated CPU
  local cpu=$1; shift
  chroot "$ROOT" /usr/bin/env -i PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root LANG=C.UTF-8 \
    QEMU_CPU="$cpu" PYTHONDONTWRITEBYTECODE=1 PIP_CERT="$HOST_CA" PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# HEAD, as git archive gives it (no worktree changes), installed from aarch64 wheels: the project is
# built into a wheel, every dependency must come as a wheel (--only-binary), at constraints.txt's pins
# when HEAD has one. Each commit gets its own source tree, so a fast lane still running from an
# earlier one is not disturbed.
install_project() {
  local head dir
  head=$(git rev-parse HEAD)
  APP_DIR=$APP-${head:0:12}
  dir=$ROOT$APP_DIR
  if [ -f "$dir/.installed" ]; then
    log "HEAD $head already installed in the root ($APP_DIR)"
    return
  fi
  log "installing HEAD $head in the root ($APP_DIR; pip under emulation: minutes)"
  rm -rf "$dir" && mkdir -p "$dir"
  git archive HEAD | tar -x -C "$dir"
  [ -x "$ROOT$VENV/bin/python" ] || in_root cortex-a72 python3 -m venv "$VENV"
  local constraints=()
  [ -f "$dir/constraints.txt" ] && constraints=(-c "$APP_DIR/constraints.txt")
  rm -rf "$ROOT/tmp/appliance-wheel"
  in_root cortex-a72 pip wheel -q --no-deps -w /tmp/appliance-wheel "$APP_DIR"
  local wheel
  wheel=$(cd "$ROOT/tmp/appliance-wheel" && ls edge_anomaly_appliance-*.whl)
  in_root cortex-a72 pip install -q --only-binary=:all: "${constraints[@]}" "/tmp/appliance-wheel/$wheel[test]"
  # Same version number as an earlier commit's wheel: replace it.
  in_root cortex-a72 pip install -q --no-deps --force-reinstall "/tmp/appliance-wheel/$wheel"
  echo "$head" >"$dir/.installed"
}

start_fast_lane() {
  if [ "${ARM64_FAST_LANE:-1}" = 0 ]; then
    log "no new fast lane: reporting $FAST_LANE_LOG"
    return
  fi
  if fast_lane_running; then
    log "a fast lane is still running (pid $(cat "$WORK/fast-lane.pid")): not starting another"
    return
  fi
  log "fast lane started in the background under QEMU_CPU=$FAST_LANE_CPU, log $FAST_LANE_LOG"
  printf '{"commit": "%s", "qemu_cpu": "%s", "started": "%s"}\n' "$(cat "$ROOT$APP_DIR/.installed")" \
    "$FAST_LANE_CPU" "$(date -u +%FT%TZ)" >"$WORK/fast-lane.json"
  # The per-test timeout is for a native run; under emulation only a hang should trip it.
  nohup chroot "$ROOT" /usr/bin/env -i PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root \
    LANG=C.UTF-8 QEMU_CPU="$FAST_LANE_CPU" PYTHONDONTWRITEBYTECODE=1 \
    sh -c "cd $APP_DIR && python -m pytest -q -m 'not integration' -p no:cacheprovider -o timeout=6000" \
    >"$FAST_LANE_LOG" 2>&1 &
  echo $! >"$WORK/fast-lane.pid"
}

fast_lane_running() {
  [ -f "$WORK/fast-lane.pid" ] && kill -0 "$(cat "$WORK/fast-lane.pid")" 2>/dev/null
}

reference_bundles() {
  local data=$1 py p
  py=$(host_python)
  if [ -f "$WORK/bundles/manifest.json" ]; then
    log "bundles in $WORK/bundles exist, not retrained"
  else
    log "training the SKAB per-file bundles on $(uname -m)"
    "$py" scripts/arm64_check.py bundles --data "$data" --out "$WORK/bundles" ${SKAB_FILES[@]:+--files "${SKAB_FILES[@]}"}
  fi
  for p in "${PRECISIONS[@]}"; do
    replay_done "$WORK/runs/x86_64-$p" && { log "x86_64 $p replay kept"; continue; }
    log "replaying on $(uname -m) ($p)"
    rm -rf "$WORK/runs/x86_64-$p"
    "$py" scripts/arm64_check.py score --bundles "$WORK/bundles" --out "$WORK/runs/x86_64-$p" --precision "$p" \
      --appliance-tree "$APP_TREE" ${SKAB_FILES[@]:+--files "${SKAB_FILES[@]}"} >"$WORK/score-x86_64-$p.log"
  done
}

copy_bundles_into_root() {
  rm -rf "$ROOT/opt/check" && mkdir -p "$ROOT/opt/check"
  cp -a "$WORK/bundles" "$ROOT/opt/check/bundles"
}

# In the background, INT8 (what a gateway runs) first, then FP32; each file's replay is saved as it
# finishes, so a replay cut short by ARM64_UNTIL still reports the files it did (taken from each SKAB
# folder in turn).
start_replay_in_root() {
  local cpu=$1 p cmd=""
  for p in "${PRECISIONS[@]}"; do
    replay_done "$WORK/runs/$cpu-$p" && { log "$cpu $p replay kept"; continue; }
    cmd+="python $APP_DIR/scripts/arm64_check.py score --bundles /opt/check/bundles --data $APP_DIR/data/skab"
    cmd+=" --out /opt/check/$cpu-$p --precision $p --appliance-tree $APP_TREE"
    cmd+=" ${SKAB_FILES[*]:+--files ${SKAB_FILES[*]}} && "
  done
  [ -n "$cmd" ] || return 0
  log "replaying under QEMU_CPU=$cpu in the background (${PRECISIONS[*]}), log $WORK/score-$cpu.log"
  in_root "$cpu" sh -c "${cmd}true" >"$WORK/score-$cpu.log" 2>&1 &
  REPLAY_PIDS+=($!)
}

collect_replays() {
  local cpu p
  for cpu in "${CPUS[@]}"; do
    for p in "${PRECISIONS[@]}"; do
      [ -d "$ROOT/opt/check/$cpu-$p" ] || continue  # kept from an earlier run
      rm -rf "$WORK/runs/$cpu-$p"
      cp -a "$ROOT/opt/check/$cpu-$p" "$WORK/runs/$cpu-$p"
      # The emulated core's MIDR and features, read apart from the replay (cheap, and a replay cut
      # short by ARM64_UNTIL has not written its final record).
      in_root "$cpu" python "$APP_DIR/scripts/arm64_check.py" platform >"$WORK/runs/$cpu-$p/cpu.json"
    done
  done
}

# A small bundle trained on aarch64: the first 600 rows of a SKAB file (training refuses a bundle
# whose INT8 check fails, so a bundle on disk is a check passed there).
train_in_root() {
  local cpu=$1 src=valve1/0.csv
  if [ -f "$WORK/train/bundle/bundle.json" ] && [ "$(cat "$WORK/train/appliance_tree" 2>/dev/null)" = "$APP_TREE" ]; then
    log "bundle trained on aarch64 with this appliance/ tree kept"
    return
  fi
  log "training a bundle under QEMU_CPU=$cpu"
  mkdir -p "$ROOT/opt/check/train"
  head -601 "$ROOT$APP_DIR/data/skab/$src" >"$ROOT/opt/check/train/rows.csv"
  rm -rf "$ROOT/opt/check/train/bundle"
  in_root "$cpu" appliance train --data /opt/check/train/rows.csv --out /opt/check/train/bundle \
    >"$WORK/train-aarch64.log" 2>&1 || log "training on aarch64 failed: see $WORK/train-aarch64.log"
  in_root "$cpu" python "$APP_DIR/scripts/arm64_check.py" platform >"$ROOT/opt/check/train/platform.json"
  echo "$APP_TREE" >"$ROOT/opt/check/train/appliance_tree"
  rm -rf "$WORK/train" && cp -a "$ROOT/opt/check/train" "$WORK/train"
}

past_until() {
  [ -n "$UNTIL" ] && [ "$(date -u +%H:%M)" \> "$UNTIL" ]
}

kill_tree() {  # a job this script started, with its children (chroot -> sh -> python)
  local child
  for child in $(ps -o pid= --ppid "$1"); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

# Waits for a background job; at ARM64_UNTIL stops it (stop=1) or leaves it running (stop=0).
wait_or_cut() {
  local pid=$1 what=$2 stop=$3
  while kill -0 "$pid" 2>/dev/null; do
    if past_until; then
      log "$what still running at $UNTIL UTC: reporting what it finished"
      [ "$stop" = 1 ] && kill_tree "$pid"
      return 0
    fi
    sleep 20
  done
  wait "$pid" 2>/dev/null || true  # its outcome is in its log
}

report() {
  local runs=() p cpu
  for p in "${PRECISIONS[@]}"; do
    for cpu in "${CPUS[@]}"; do runs+=("$WORK/runs/$cpu-$p"); done
  done
  cp "$FAST_LANE_LOG" "$REPO/benchmarks/results/arm64-check-fast-lane.log" 2>/dev/null || true
  "$(host_python)" scripts/arm64_check.py report --bundles "$WORK/bundles" --reference-dir "$WORK/runs" \
    --runs "${runs[@]}" --train-bundle "$WORK/train/bundle" --fast-lane-log "$FAST_LANE_LOG" \
    --commit "$(cat "$ROOT$APP_DIR/.installed")" --out-txt "$OUT_TXT" --out-json "$OUT_JSON"
}

main() {
  [ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot, mounts, binfmt_misc)"; exit 1; }
  mkdir -p "$WORK/runs"
  install_host_packages
  register_binfmt
  build_root
  mount_root
  # Left mounted while anything still runs in the root (a fast lane outliving an early report).
  trap unmount_root EXIT
  install_project
  start_fast_lane
  reference_bundles "$(skab_data)"
  copy_bundles_into_root
  for cpu in "${CPUS[@]}"; do start_replay_in_root "$cpu"; done
  train_in_root "$FAST_LANE_CPU"
  local i
  for i in "${!REPLAY_PIDS[@]}"; do wait_or_cut "${REPLAY_PIDS[$i]}" "replay $((i + 1))" 1; done
  collect_replays
  fast_lane_running && wait_or_cut "$(cat "$WORK/fast-lane.pid")" "fast lane" 0
  report
}

main "$@"
