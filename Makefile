# The two commands a new operator needs:
#   make serve   creates .venv, installs ductile, and runs the gateway on a generated demo
#   make test    creates .venv, installs ductile with its test extras, runs the whole suite
#
# The venv is built from a world-reachable interpreter (deploy/find-python.sh): plugins
# dropped to unprivileged accounts run the same Python, so it must not live under a 0700 home.

PYTHON ?= $(shell deploy/find-python.sh)
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test serve venv clean tools deploy-files bench

$(VPY):
	@test -n "$(PYTHON)" || { deploy/find-python.sh >/dev/null; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(STAMP): $(VPY) setup.cfg pyproject.toml
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Host tools the suite exercises for real (age for vault interop, libcap's capsh for the
# exec'd drop). Installed only when missing and only as root; elsewhere the tests say what
# is absent.
tools:
	@command -v age >/dev/null 2>&1 || { [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get install -y -q age >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q age >/dev/null)) \
	  || echo "make: age CLI not installed; vault interop tests need it (apt-get install age)"; }
	@test -x /usr/sbin/capsh || test -x /sbin/capsh || { [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get install -y -q libcap2-bin >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libcap2-bin >/dev/null)) \
	  || echo "make: capsh not installed; the exec'd-drop tests need it (apt-get install libcap2-bin)"; }

test: $(STAMP) tools
	$(VPY) -m pytest -q -rs $(PYTEST_ARGS)

# Performance, measured side by side and printed as tables (docs/performance.md keeps them).
# Needs root: the jobs drop to a numeric account. py-spy (the sampling profiler behind the
# "where the time goes" tables) is installed into the venv here, not by hand.
BENCH_ARGS ?=
bench: $(STAMP)
	@$(VENV)/bin/py-spy --version >/dev/null 2>&1 || $(VPY) -m pip install -q 'py-spy>=0.3'
	$(VPY) bench/startup.py $(BENCH_ARGS)
	$(VPY) bench/spawn.py $(BENCH_ARGS)
	$(VPY) bench/boot.py $(BENCH_ARGS)
	$(VPY) bench/throughput.py 300 9 --profile
	$(VPY) bench/queue_depth.py $(BENCH_ARGS)
	$(VPY) bench/spawn_and_attest.py $(BENCH_ARGS)
	$(VPY) bench/attest_tree.py $(BENCH_ARGS)

# The demo lives in .demo/ (git-ignored) and is reused on the next run; as root it
# provisions two demo accounts and enforces the wall, otherwise it runs unconfined.
# DUCTILE_LISTEN=host:port moves the API; SERVE_ARGS=--show-token prints the token again.
SERVE_ARGS ?=
serve: $(STAMP)
	$(VPY) -m ductile serve --demo --demo-dir .demo $(SERVE_ARGS)

# deploy/systemd/ is rendered from deploy/config/*.yaml (tests/test_deploy_static.py fails
# when they differ): edit the config or the renderer, then run this.
deploy-files: $(STAMP)
	$(VENV)/bin/ductile deploy render sysusers --config deploy/config/ductile.yaml --config-dir /etc/ductile > deploy/systemd/ductile.sysusers.conf
	$(VENV)/bin/ductile deploy render tmpfiles --config deploy/config/ductile.yaml --config-dir /etc/ductile > deploy/systemd/ductile.tmpfiles.conf
	$(VENV)/bin/ductile deploy render unit     --config deploy/config/ductile.yaml --config-dir /etc/ductile > deploy/systemd/ductile.service
	$(VENV)/bin/ductile deploy render sysusers --config deploy/config/ductile-admin.yaml --config-dir /etc/ductile-admin --gateway-user ductile-admin > deploy/systemd/ductile-admin.sysusers.conf
	$(VENV)/bin/ductile deploy render tmpfiles --config deploy/config/ductile-admin.yaml --config-dir /etc/ductile-admin --gateway-user ductile-admin > deploy/systemd/ductile-admin.tmpfiles.conf
	$(VENV)/bin/ductile deploy render unit     --config deploy/config/ductile-admin.yaml --config-dir /etc/ductile-admin --gateway-user ductile-admin > deploy/systemd/ductile-admin.service
	$(VENV)/bin/ductile deploy render backup-service --config deploy/config/ductile.yaml --config-dir /etc/ductile > deploy/systemd/ductile-backup.service
	$(VENV)/bin/ductile deploy render backup-timer   --config deploy/config/ductile.yaml --config-dir /etc/ductile > deploy/systemd/ductile-backup.timer
	$(VENV)/bin/ductile deploy render backup-service --config deploy/config/ductile-admin.yaml --config-dir /etc/ductile-admin --gateway-user ductile-admin > deploy/systemd/ductile-admin-backup.service
	$(VENV)/bin/ductile deploy render backup-timer   --config deploy/config/ductile-admin.yaml --config-dir /etc/ductile-admin --gateway-user ductile-admin > deploy/systemd/ductile-admin-backup.timer

clean:
	rm -rf $(VENV) build *.egg-info .demo
