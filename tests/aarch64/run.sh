#!/usr/bin/env bash
# make test-aarch64: the device tests, then the long-stream parity against this machine, under
# user-mode QEMU for each of Pi 4 (cortex-a72) and Pi 5 (cortex-a76) x Python 3.11 (bookworm) and
# 3.13 (trixie); two lanes in parallel (each QEMU is one busy thread). A log per combination.
# The pairs a device ships with (Pi 4 + bookworm's 3.11, Pi 5 + trixie's 3.13) run the whole
# selection; the crossed pairs run the in-process engine tests (CORE_K) and the parity.
#   run.sh ENV BUNDLES PARITY_BUNDLE HOST_PYTHON TEST...
set -uo pipefail
ENV=$1 BUNDLES=$2 PARITY_BUNDLE=$3 HOST=$4; shift 4
TESTS=("$@")
CORE_K="engines_agree or bound_buffers or multi_stream or nan_policies or wrong_width or state_round_trip"
mkdir -p "$ENV/logs"
rm -f "$ENV"/logs/*.log "$ENV"/parity-*.json

combo() {   # combo VER CPU full|core
  local ver=$1 cpu=$2 log="$ENV/logs/python$1-$2.log" t0=$SECONDS sel=("${TESTS[@]}")
  [ "$3" = core ] && sel=(tests/test_runtime.py -k "$CORE_K")
  if QEMU_CPU=$cpu GRU_EDGE_BUNDLES=$BUNDLES "$ENV/python$ver" -m pytest -q -p no:cacheprovider "${sel[@]}" \
       >"$log" 2>&1 </dev/null \
     && "$HOST" -m bench.platform_parity "$PARITY_BUNDLE" --python "$ENV/python$ver" --cpu "$cpu" --steps 3000 \
       --check --json "$ENV/parity-$ver-$cpu.json" >>"$log" 2>&1 </dev/null; then
    echo "aarch64 python$ver $cpu ($3): ok in $((SECONDS - t0)) s ($(grep -E '^[0-9]+ passed' "$log" | tail -1))"
  else
    echo "aarch64 python$ver $cpu: FAILED ($log):"; tail -30 "$log"; return 1
  fi
}

flash() {    # FLASH_RUNTIME=1 to an emulated Pi 4 (a folder device), from this machine's venv
  local log="$ENV/logs/flash.log" t0=$SECONDS
  if GRU_EDGE_AARCH64=$ENV GRU_EDGE_BUNDLES=$BUNDLES "$HOST" -m pytest -q -p no:cacheprovider tests/test_aarch64_flash.py \
       >"$log" 2>&1 </dev/null; then
    echo "aarch64 flash --install-runtime to an emulated Pi 4: ok in $((SECONDS - t0)) s"
  else
    echo "aarch64 flash: FAILED ($log):"; tail -30 "$log"; return 1
  fi
}

(combo 3.11 cortex-a72 full && combo 3.11 cortex-a76 core) & lane1=$!
(combo 3.13 cortex-a76 full && combo 3.13 cortex-a72 core) & lane2=$!
flash & lane3=$!
status=0
wait $lane1 || status=1
wait $lane2 || status=1
wait $lane3 || status=1
for log in "$ENV"/logs/*.log; do    # the parity table of each combination
  echo "$(basename "$log" .log):"; grep -E '^  (ok|FAIL)' "$log"
done
exit $status
