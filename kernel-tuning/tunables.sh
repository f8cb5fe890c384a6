# shellcheck shell=bash
# The tunables Sluice wants on a dedicated host, shared by `check` and
# `apply`. Each `tune_*` function measures one setting and calls `report`
# with its verdict, what to write now to fix it, and how to persist it.
#
# Every path goes through $ROOT (SLUICE_TUNING_ROOT, default empty), so the
# test suite can run both scripts against a fake /proc, /sys and /etc.

ROOT="${SLUICE_TUNING_ROOT:-}"

# Parsed options (set by parse_options).
DATA_DIR="/var/lib/sluice"
DEVICE=""
SHARDS=""
PID=""

usage_options() {
  cat <<'USAGE'
  --data-dir DIR   the broker's data directory (default /var/lib/sluice); its
                   block device gets the I/O-scheduler checks
  --device NAME    the block device itself (nvme0n1), instead of --data-dir
  --shards N       the broker's shard count (default: one per core, as
                   `shards = 0` in sluice.toml); shard i runs on core i
  --pid PID        a running broker: check its own nofile and memlock limits
                   (default: this shell's limits)
USAGE
}

# parse_options "$@": sets the globals above and leaves the caller's own
# flags in REST.
REST=()
parse_options() {
  while (($#)); do
    case "$1" in
      --data-dir) DATA_DIR="${2:?--data-dir needs a directory}"; shift 2 ;;
      --device) DEVICE="${2:?--device needs a name}"; shift 2 ;;
      --shards) SHARDS="${2:?--shards needs a number}"; shift 2 ;;
      --pid) PID="${2:?--pid needs a process id}"; shift 2 ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  if [[ -n "$SHARDS" && ! "$SHARDS" =~ ^[0-9]+$ ]]; then
    echo "--shards must be a number, not $SHARDS" >&2
    exit 2
  fi
  if [[ -n "$PID" && ! -d "$ROOT/proc/$PID" ]]; then
    echo "--pid $PID: no such process" >&2
    exit 2
  fi
}

# Verdicts, one line each, filled by report().
NAMES=() CURRENTS=() RECOMMENDEDS=() STATUSES=() WHYS=() FIXES=() PERSISTS=()

# report NAME CURRENT RECOMMENDED STATUS WHY [FIX] [PERSIST]
#   STATUS: ok | off | info (shown, never a failure) | skip (not on this host)
#   FIX: what apply does, tab-separated: "write<TAB>path<TAB>value",
#        "governor<TAB>name", "irq<TAB>cores<TAB>irq numbers"; empty: apply
#        leaves it to the operator and says how
#   PERSIST: "kind<TAB>line" with kind sysctl | udev | tmpfiles
report() {
  NAMES+=("$1") CURRENTS+=("$2") RECOMMENDEDS+=("$3") STATUSES+=("$4") WHYS+=("$5")
  FIXES+=("${6:-}") PERSISTS+=("${7:-}")
}

read_value() { # read_value PATH -> first line, or empty if missing
  local path="$ROOT$1"
  [[ -r "$path" ]] && head -n1 "$path" | tr -s '\t' ' ' || true
}

cores() {
  local online
  online=$(read_value /sys/devices/system/cpu/online)
  if [[ -z "$online" ]]; then nproc; return; fi
  expand_list "$online" | wc -l
}

# expand_list "0-3,6" -> one number per line
expand_list() {
  local part
  IFS=',' read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    [[ -z "$part" ]] && continue
    if [[ "$part" == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
  done
}

shard_cores() { # the cores shards run on: 0..min(shards, cores)-1
  local total count
  total=$(cores)
  count="${SHARDS:-0}"
  ((count == 0 || count > total)) && count=$total
  seq 0 $((count - 1))
}

# --- sysctls ---------------------------------------------------------------

sysctl_path() { echo "/proc/sys/${1//.//}"; }

# sysctl_at_most KEY MAX WHY / sysctl_at_least KEY MIN WHY
sysctl_bound() {
  local key="$1" op="$2" bound="$3" why="$4" path current status
  path=$(sysctl_path "$key")
  current=$(read_value "$path")
  if [[ -z "$current" ]]; then
    report "$key" "absent" "$op $bound" skip "$why (not in this kernel)"
    return
  fi
  status=ok
  if [[ "$op" == "<=" ]] && ((current > bound)); then status=off; fi
  if [[ "$op" == ">=" ]] && ((current < bound)); then status=off; fi
  report "$key" "$current" "$op $bound" "$status" "$why" \
    "write	$path	$bound" "sysctl	$key = $bound"
}
sysctl_at_most() { sysctl_bound "$1" "<=" "$2" "$3"; }
sysctl_at_least() { sysctl_bound "$1" ">=" "$2" "$3"; }

# tcp_buffers KEY MAX_MIN: the third field (max) of tcp_rmem/tcp_wmem
tcp_buffers() {
  local key="$1" want="$2" why="$3" path current min default max
  path=$(sysctl_path "$key")
  current=$(read_value "$path")
  if [[ -z "$current" ]]; then
    report "$key" "absent" "max >= $want" skip "$why"
    return
  fi
  read -r min default max <<<"$current"
  local status=ok
  ((max < want)) && status=off
  report "$key" "$min $default $max" "$min $default $want" "$status" "$why" \
    "write	$path	$min $default $want" "sysctl	$key = $min $default $want"
}

tune_vm() {
  sysctl_at_most vm.dirty_background_ratio 5 \
    "the commit log bypasses the page cache (O_DIRECT); what is dirty (consume-queue maps, checkpoints) should reach the disk early and in small batches"
  sysctl_at_most vm.dirty_ratio 20 \
    "a low ceiling keeps a burst of dirty queue pages from throttling the shard threads in balance_dirty_pages"
  sysctl_at_most vm.dirty_expire_centisecs 1500 \
    "queue pages are fsynced by every checkpoint; expiring them sooner spreads that writeback instead of piling it onto one fsync"
  sysctl_at_most vm.swappiness 1 \
    "a swapped-out shard stalls every partition it owns; keep anonymous memory in RAM"
  sysctl_at_least vm.max_map_count 262144 \
    "each partition's consume-queue file is one memory map; the default 65530 caps a broker near 60 000 partitions"
}

tune_net() {
  sysctl_at_least net.core.somaxconn 4096 \
    "the Kafka listener's accept backlog is capped here; reconnect storms after a restart overflow a small one"
  sysctl_at_least net.core.netdev_max_backlog 16384 \
    "packets queued per core before the stack drops them; bursts of produce traffic at 10+ Gb/s need room"
  sysctl_at_least net.core.rmem_max 16777216 \
    "lets TCP autotuning grow a receive window to 16 MiB for high-bandwidth producers"
  sysctl_at_least net.core.wmem_max 16777216 \
    "lets TCP autotuning grow a send buffer to 16 MiB for consumers catching up"
  tcp_buffers net.ipv4.tcp_rmem 16777216 \
    "the receive-buffer ceiling TCP autotuning may reach per connection"
  tcp_buffers net.ipv4.tcp_wmem 16777216 \
    "the send-buffer ceiling: zero-copy fetch responses queue in it"
}

tune_files() {
  sysctl_at_least fs.file-max 1048576 \
    "system-wide file handles: each connection, segment and consume-queue file holds one"
}

# --- block device ----------------------------------------------------------

# The whole-disk name under /sys/block for DATA_DIR or DEVICE; empty if none.
data_device() {
  if [[ -n "$DEVICE" ]]; then echo "${DEVICE#/dev/}"; return; fi
  local dir="$DATA_DIR" source name
  while [[ ! -e "$dir" && "$dir" != "/" ]]; do dir=$(dirname "$dir"); done
  source=$(df --output=source "$dir" 2>/dev/null | tail -n1)
  [[ "$source" == /dev/* ]] || return 0
  name=$(basename "$(readlink -f "$source")")
  if [[ -e "$ROOT/sys/class/block/$name/partition" ]]; then
    name=$(basename "$(readlink -f "$ROOT/sys/class/block/$name/..")")
  fi
  [[ -d "$ROOT/sys/block/$name" ]] && echo "$name"
  return 0
}

tune_block() {
  local device queue
  device=$(data_device)
  if [[ -z "$device" ]]; then
    report "block device" "unknown" "an NVMe device" skip \
      "no block device found under $DATA_DIR (give --device or --data-dir)"
    return
  fi
  queue="/sys/block/$device/queue"
  local scheduler current rotational want=none
  scheduler=$(read_value "$queue/scheduler")
  current=$(grep -o '\[[^]]*\]' <<<"$scheduler" | tr -d '[]' || true)
  [[ -z "$current" ]] && current="$scheduler"
  rotational=$(read_value "$queue/rotational")
  [[ "$rotational" == 1 ]] && want=mq-deadline
  local status=ok
  [[ "$current" != "$want" ]] && status=off
  report "$device scheduler" "${current:-absent}" "$want" "$status" \
    "NVMe queues requests in hardware; a software scheduler only adds latency and CPU (spinning disks: mq-deadline)" \
    "write	$queue/scheduler	$want" "udev	ACTION==\"add|change\", KERNEL==\"$device\", ATTR{queue/scheduler}=\"$want\""

  local read_ahead
  read_ahead=$(read_value "$queue/read_ahead_kb")
  status=ok
  if [[ -z "$read_ahead" ]]; then status=skip; elif ((read_ahead < 64 || read_ahead > 512)); then status=off; fi
  report "$device read_ahead_kb" "${read_ahead:-absent}" "128 (64-512)" "$status" \
    "cold fetches read segments sequentially; too little read-ahead costs IOPS, too much fills the page cache with data nobody asked for" \
    "write	$queue/read_ahead_kb	128" "udev	ACTION==\"add|change\", KERNEL==\"$device\", ATTR{queue/read_ahead_kb}=\"128\""

  local requests
  requests=$(read_value "$queue/nr_requests")
  status=ok
  if [[ -z "$requests" ]]; then status=skip; elif ((requests < 256)); then status=off; fi
  report "$device nr_requests" "${requests:-absent}" ">= 256" "$status" \
    "every shard keeps several 1 MiB writes and fdatasyncs in flight, and fetches add reads: the queue must not throttle them" \
    "write	$queue/nr_requests	256" "udev	ACTION==\"add|change\", KERNEL==\"$device\", ATTR{queue/nr_requests}=\"256\""
}

# The mount options of the filesystem holding DATA_DIR, from
# $ROOT/proc/self/mounts (the longest mount point that is a prefix of its
# path, as given); empty if unknown.
data_mount_options() {
  local dir="$DATA_DIR" mounts="$ROOT/proc/self/mounts" best="" options="" point opts
  [[ -r "$mounts" ]] || return 0
  [[ "$dir" == /* ]] || dir="$PWD/$dir"
  while read -r _ point _ opts _; do
    point=$(printf '%b' "$point")
    if [[ "$dir/" == "${point%/}/"* && ${#point} -ge ${#best} ]]; then
      best=$point options=$opts
    fi
  done <"$mounts"
  echo "$options"
}

tune_mount() {
  local options current=nodiscard status=ok
  options=$(data_mount_options)
  if [[ -z "$options" ]]; then
    report "discard mount option" "unknown" "nodiscard, fstrim.timer" skip \
      "no mount found for $DATA_DIR"
    return
  fi
  if [[ ",$options," == *,discard,* ]]; then current=discard status=off; fi
  report "discard mount option" "$current" "nodiscard, fstrim.timer" "$status" \
    "with online discard every freed block is discarded while the freeing call waits, and fdatasyncs queue behind it: Sluice frees deleted segments in small paced steps to bound that, a weekly fstrim (systemctl enable --now fstrim.timer) with nodiscard in /etc/fstab costs nothing on the hot path"
}

# --- memory ----------------------------------------------------------------

tune_thp() {
  local path=/sys/kernel/mm/transparent_hugepage/enabled value current status=ok
  value=$(read_value "$path")
  if [[ -z "$value" ]]; then
    report "transparent_hugepage" "absent" "madvise" skip "not built into this kernel"
    return
  fi
  current=$(grep -o '\[[^]]*\]' <<<"$value" | tr -d '[]' || true)
  # The kernel brackets the mode in use; a bare word (as written) is it.
  [[ -n "$current" ]] || current=$value
  [[ "$current" != madvise ]] && status=off
  report "transparent_hugepage" "$current" "madvise" "$status" \
    "Sluice advises huge pages for its commit-log write buffers only (a 1 MiB O_DIRECT write from them is one block segment, not 256: +37-41 % produce throughput on a virtio disk); 'never' refuses that, 'always' makes khugepaged compact memory behind the shards' backs, with latency spikes" \
    "write	$path	madvise" "tmpfiles	w $path - - - - madvise"
}

# --- limits ----------------------------------------------------------------

# limit_of NAME: the soft limit of the broker (--pid) or this shell.
limit_of() {
  local name="$1"
  if [[ -n "$PID" ]]; then
    awk -v want="$name" 'index($0, want) == 1 { print $(NF-2) }' "$ROOT/proc/$PID/limits" | head -n1
    return
  fi
  local value
  case "$name" in
    "Max open files") ulimit -Sn ;;
    "Max locked memory") # ulimit -l counts KiB; /proc/PID/limits, bytes
      value=$(ulimit -Sl)
      if [[ "$value" == unlimited ]]; then echo unlimited; else echo $((value * 1024)); fi ;;
  esac
}

tune_limits() {
  local who="this shell"
  [[ -n "$PID" ]] && who="process $PID"
  local files status=ok
  files=$(limit_of "Max open files")
  if [[ "$files" != unlimited ]] && ((files < 1048576)); then status=off; fi
  report "nofile ($who)" "$files" ">= 1048576" "$status" \
    "one descriptor per client connection, segment, consume-queue file and pipe (set LimitNOFILE in the systemd unit)"

  local release major minor memlock
  release=$(read_value /proc/sys/kernel/osrelease)
  [[ -z "$release" ]] && release=$(uname -r)
  major=${release%%.*}
  minor=${release#*.}
  minor=${minor%%[!0-9]*}
  memlock=$(limit_of "Max locked memory")
  if ((major > 5 || (major == 5 && minor >= 12))); then
    report "memlock ($who)" "$memlock" "any (kernel $release)" ok \
      "since 5.12 io_uring rings are charged to the memory cgroup, not RLIMIT_MEMLOCK"
  else
    status=ok
    if [[ "$memlock" != unlimited ]]; then status=off; fi
    report "memlock ($who)" "$memlock" "unlimited" "$status" \
      "before 5.12 every io_uring ring is locked memory; a small limit makes io_uring_setup fail with ENOMEM (set LimitMEMLOCK=infinity)"
  fi

  local disabled path=/proc/sys/kernel/io_uring_disabled
  disabled=$(read_value "$path")
  if [[ -z "$disabled" ]]; then
    report kernel.io_uring_disabled "absent" 0 ok "io_uring cannot be disabled by sysctl on this kernel"
  else
    status=ok
    ((disabled != 0)) && status=off
    report kernel.io_uring_disabled "$disabled" 0 "$status" \
      "1 allows io_uring only to kernel.io_uring_group, 2 to nobody: Sluice then falls back to epoll with thread-pool fsync" \
      "write	$path	0" "sysctl	kernel.io_uring_disabled = 0"
  fi
}

# --- CPU -------------------------------------------------------------------

tune_governor() {
  local core path value off="" seen=0
  for core in $(shard_cores); do
    path="/sys/devices/system/cpu/cpu$core/cpufreq/scaling_governor"
    value=$(read_value "$path")
    [[ -z "$value" ]] && continue
    seen=$((seen + 1))
    [[ "$value" != performance ]] && off+="cpu$core=$value "
  done
  if ((seen == 0)); then
    report "cpu governor" "not exposed" performance skip \
      "no cpufreq on this host (a VM or fixed-frequency CPUs): nothing to set"
  elif [[ -n "$off" ]]; then
    report "cpu governor" "${off% }" performance off \
      "shard threads park between bursts; a power-saving governor clocks the core down and every burst pays the ramp-up" \
      "governor	performance"
  else
    report "cpu governor" performance performance ok "shard cores run at full clock"
  fi
}

tune_isolation() {
  local cmdline shards total isolated
  cmdline=$(read_value /proc/cmdline)
  total=$(cores)
  shards=$(shard_cores | wc -l)
  isolated=$(grep -o 'isolcpus=[^ ]*' <<<"$cmdline" | head -n1 || true)
  if ((shards < total)); then
    local want
    want="isolcpus=$(shard_cores | paste -sd, -)"
    if [[ -n "$isolated" ]]; then
      report "core isolation" "$isolated" "$want" ok \
        "shard cores kept free of other tasks"
    else
      report "core isolation" "none" "$want" info \
        "with spare cores, isolating the shard cores (kernel command line) keeps other tasks off them; needs a reboot, so apply leaves it alone"
    fi
  else
    report "core isolation" "${isolated:-none}" "none (shards use all $total cores)" ok \
      "every core runs a shard, so there is nothing to isolate them from"
  fi

  # Device interrupts landing on shard cores.
  local irq list on_shards="" device_irqs=0 line name
  local -A shard_set=()
  for irq in $(shard_cores); do shard_set[$irq]=1; done
  while read -r line; do
    irq=${line%%:*}
    irq=${irq// /}
    [[ "$irq" =~ ^[0-9]+$ ]] || continue
    name=${line##* }
    [[ "$name" =~ ^(nvme|virtio|eth|ens|enp|eno|mlx|ixgbe|i40e|ice|bnxt) ]] || continue
    device_irqs=$((device_irqs + 1))
    list=$(read_value "/proc/irq/$irq/smp_affinity_list")
    local core hits=0
    for core in $(expand_list "$list"); do [[ -n "${shard_set[$core]:-}" ]] && hits=$((hits + 1)); done
    ((hits > 0)) && on_shards+="$irq "
  done < <(cat "$ROOT/proc/interrupts" 2>/dev/null)
  if ((device_irqs == 0)); then
    report "irq affinity" "no device IRQs" "device IRQs off shard cores" skip "no NVMe or NIC interrupts found"
  elif ((shards < total)); then
    local status=ok
    [[ -n "$on_shards" ]] && status=off
    report "irq affinity" "${on_shards:+IRQs ${on_shards% } on shard cores}${on_shards:-all off shard cores}" \
      "device IRQs on cores $((shards))-$((total - 1))" "$status" \
      "an interrupt on a shard core preempts its event loop; with spare cores, steer NVMe and NIC IRQs to them (stop irqbalance)" \
      "irq	$shards-$((total - 1))	${on_shards% }"
  else
    report "irq affinity" "$device_irqs device IRQs" "spread over all cores" info \
      "every core runs a shard, so IRQs cannot avoid them; the kernel spreads NVMe queue IRQs one per core"
  fi
}

tune_numa() {
  local nodes device node
  nodes=$(find "$ROOT/sys/devices/system/node" -maxdepth 1 -name 'node[0-9]*' 2>/dev/null | wc -l)
  if ((nodes <= 1)); then
    report "numa" "${nodes} node" "1 node, or shards on the device's node" ok "one memory node: nothing to place"
    return
  fi
  device=$(data_device)
  node=$(read_value "/sys/block/$device/device/numa_node")
  [[ -z "$node" ]] && node=$(read_value "/sys/block/$device/device/device/numa_node")
  local spans
  spans=$(for core in $(shard_cores); do
    basename "$(find "$ROOT/sys/devices/system/cpu/cpu$core" -maxdepth 1 -name 'node*' 2>/dev/null | head -n1)"
  done | sort -u | paste -sd, -)
  if [[ "$spans" == "node$node" ]]; then
    report "numa" "shards on $spans" "shards on node${node}" ok "shards share the data device's memory node"
  else
    report "numa" "$nodes nodes; shards on ${spans:-?}; $device on node${node:-?}" "shards on node${node:-of the device}" off \
      "cross-node memory and DMA cost latency: run one broker per node, bound with numactl --cpunodebind=N --membind=N and shards = that node's cores"
  fi
}

# Measure everything, in a fixed order.
measure_all() {
  tune_block
  tune_mount
  tune_vm
  tune_thp
  tune_net
  tune_files
  tune_limits
  tune_governor
  tune_isolation
  tune_numa
}
