# Two entry points (see README.md):
#   make demo   set everything up, then run pipelines/phase4.yaml on the bundled demo model
#   make test   set everything up, then run the whole test suite, fmt and clippy
.PHONY: demo test setup
setup:
	scripts/setup.sh

demo: setup
	cargo build --release --workspace
	target/release/bitnet-pipeline run pipelines/phase4.yaml

test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo build --workspace
	cargo test --workspace
