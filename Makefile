# berth — the two commands of the README, and their parts.
#   make demo   set up the machine if needed, launch a container from the busybox image,
#               run a command in it, list containers (re-runnable)
#   make test   set up the machine if needed, then run the whole test suite: the host tests,
#               the fuzz targets, then the VM tier
#   make fuzz   every fuzz target (fuzz/) for FUZZ_SECONDS (10) each on its checked-in corpus;
#               make test runs it after the host tests
#   make test-vm  the VM tier alone: tests that need systemd as PID 1 and pure cgroup v2, each
#               in a qemu guest (tests/vm/run-all builds or reuses the guest image)

CARGO ?= cargo
DEMO ?= demo

.PHONY: demo test test-vm setup bins bench check-root lint fuzz

check-root:
	@[ "$$(id -u)" = 0 ] || { echo "berth manages system containers: run make as root (sudo make $(MAKECMDGOALS))"; exit 1; }

setup: check-root
	scripts/setup

demo: setup
	@berth delete --force $(DEMO) >/dev/null 2>&1 || true
	berth launch busybox $(DEMO)
	berth exec $(DEMO) -- sh -c 'echo "hello from $$(hostname), where PID 1 is $$(cat /proc/1/comm)"; id'
	berth list

bins:
	$(CARGO) build --release --locked --workspace --bins

# the test files that drive the CLI: `make test` runs them a second time with the CLI talking
# varlink instead of D-Bus (tests/src/lib.rs: BERTH_TEST_TRANSPORT)
CLI_TESTS = --test e2e --test images --test snapshots --test security --test recover \
	--test quota --test daemon --test crash --test stress --test debian

test: setup bins lint
	$(CARGO) test --release --locked --workspace
	BERTH_TEST_TRANSPORT=varlink $(CARGO) test --release --locked -p berth-tests $(CLI_TESTS)
	fuzz/run
	tests/vm/run-all

# hostile input: the parsers' fuzz targets, a bounded time each (fuzz/run; cargo-fuzz on stable)
fuzz: setup
	fuzz/run

# the gate every commit passes: rustfmt's layout, and clippy with warnings as errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

test-vm: setup bins
	tests/vm/run-all

bench: check-root bins
	target/release/berth-bench --runs 30
