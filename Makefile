# Spoke: build, test, lint, bench, dev certificates.
CARGO ?= cargo

.PHONY: build release test lint fmt bench certs demo clean validate-deploy text-order

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Unit and integration tests (real sockets on 127.0.0.1; netns and capture tests run when root).
# .ci/tools checks (and as root installs) what the tests use and names what is missing;
# tests whose tool or root is missing say they were skipped.
test:
	bash .ci/tools
	$(CARGO) test --all-targets -- --test-threads=4

# deploy/: manifests against the Kubernetes schemas (strict), the injected example app,
# the Prometheus config (also run by tests/deploy.rs within `make test`).
validate-deploy: build
	SPOKE=$${CARGO_TARGET_DIR:-target}/debug/spoke bash deploy/validate.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: release
	bash bench/run.sh

# link/text-order.txt: the release binary's code layout (link/README.md); needs valgrind.
text-order: release
	$(CARGO) build --release --example control_scale
	bash bench/text-order.sh

certs: build
	./target/debug/spoke ca init --out certs --force
	./target/debug/spoke ca issue --ca certs --id spiffe://cluster.local/ns/default/sa/web --out certs/web --validity 8760h --force
	./target/debug/spoke ca issue --ca certs --id spiffe://cluster.local/ns/default/sa/backend --out certs/backend --validity 8760h --force

demo:
	$(CARGO) run --release -- demo

clean:
	$(CARGO) clean
