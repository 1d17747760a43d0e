# The README's two commands: `make demo` (the main job on a bundled example) and `make test`.
# Both run scripts/setup.sh first, so a fresh machine of this kind needs nothing else.
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	./scripts/setup.sh

demo: setup
	$(PY) -m l7fp.demo examples/bookstore

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile
