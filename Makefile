# The two commands a newcomer needs:  make repro   and   make test
# Both create .venv (if missing) and install the project into it first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands (`python -m pipeline.x`) must find the venv's python.
export PATH := $(BIN):$(PATH)
# Setup does not byte-compile all 16,000 modules it installs (30 s of 2 cores); it compiles
# what the commands import (.ci/compile_imports.py, 13 s), and any other module is compiled
# the first time a process imports it. That needs bytecode writes, which a
# PYTHONDONTWRITEBYTECODE from a Docker image or a CI runner turns off: make's commands
# write bytecode anyway (into .venv and git-ignored __pycache__ folders).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup system-deps repro test test-fast lint format clean tracking-server ui serve monitor retrain docs

setup: $(STAMP)

# uv installs what pip would, faster: a fresh venv in about 25 s with the compiling above, against
# pip's 130 s on 2 cores (BENCHMARKS.md). It does not read pip's configuration:
# .ci/uv_args.py passes pip's indexes, find-links and constraints on. pip is the fallback.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet \
		--index-strategy unsafe-best-match $$($(BIN)/python .ci/uv_args.py) -e '.[dev]' \
	|| $(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python .ci/compile_imports.py
	touch $(STAMP)

# What the full suite needs outside Python (Debian/Ubuntu): PostgreSQL's server binaries
# for the team-server and sweep tests, Chromium for the real-browser UI test, Prometheus,
# its Pushgateway and Fashion-MNIST for the alerting tests, HAProxy for the rolling restart
# (docs/operations.md). .ci/run
# and the pull-request workflow call it; it installs only what is missing, in one apt run.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || [ -x /usr/bin/chromium-browser ] || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-pushgateway >/dev/null || missing="$$missing prometheus-pushgateway"; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

repro: setup
	$(BIN)/dvc repro

# Three pytest-xdist workers, a test file each at a time (module fixtures stay whole; the
# session's smoke project is built once and shared), the slowest files first
# (tests/conftest.py: SLOWEST_FIRST). On 2 cores the suite's tests also
# wait on servers and on each other's subprocesses: with two workers a fresh-clone CI run
# kept 1.4 cores busy on average, with three 1.6 (AMD EPYC, 2 cores).
PYTEST_WORKERS ?= 3

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The unit tests alone (no training, no dvc repro, no servers): under 2 minutes.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The team's tracking server (PostgreSQL + accounts); see docs/team.md.
tracking-server: setup
	$(BIN)/python -m pipeline.tracking_server $(TRACKING_SERVER_ARGS)

# The MLflow UI on this project's runs (local store, or MLFLOW_TRACKING_URI's server): prints
# the URLs of the runs view, the comparison of the last runs and the model; Ctrl-C stops it.
ui: setup
	$(BIN)/python -m pipeline.ui $(UI_ARGS)

# The scoring service of @champion (docs/serving.md): follows the alias, batches, logs every
# prediction (predictions.db, or PREDICTION_LOG_URL) and exposes /metrics; Ctrl-C stops it.
serve: setup
	$(BIN)/python -m pipeline.serve $(SERVE_ARGS)

# Drift and estimated accuracy of the served model, from its prediction log
# (docs/monitoring.md): monitor/report.html and report.json, an MLflow run;
# MONITOR_ARGS=--fail-on-drift
monitor: setup
	$(BIN)/python -m pipeline.monitor $(MONITOR_ARGS)

# The labels users sent (POST /feedback, with a key) up to now -> feedback, train,
# evaluate, register's gate on every slice (docs/loop.md). RETRAIN_ARGS=--if-needed: only
# on drift or retrain.min_labels new labels.
retrain: setup
	$(BIN)/python -m pipeline.retrain $(RETRAIN_ARGS)

# The README and docs/ as a site in site/ (MkDocs Material, strict: a broken link or anchor
# fails the build); open site/index.html. The same Markdown reads on GitHub without it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- Review in CI (docs/ci.md): the only commands .github/workflows/ and
# .gitlab-ci.yml run; tests/test_report.py runs each one here.
REPORT_BASE ?= main
REPORT_DIR  ?= report
MNIST_DIR   ?= ../shared/mnist
SMOKE_ARGS  ?= -S train.max_samples=2000 -S train.epochs=1

.PHONY: mnist-mirror smoke report report-summary pr-comment ci-repro ci-push ci-register
.PHONY: ci-pull ci-retrain retrain-pr

# The four MNIST files in $(MNIST_DIR), where the test suite expects them: the download
# stage alone (MNIST_MIRROR if set, else the public mirrors of params.yaml).
mnist-mirror: setup
	$(BIN)/python -m pipeline.download
	mkdir -p $(MNIST_DIR)
	cp data/raw/*.gz $(MNIST_DIR)/

# The whole pipeline on a slice, as a DVC experiment in the workspace. Raw data: from
# MNIST_MIRROR if set, else from the DVC remote if one is configured, else the mirrors.
smoke: setup
	if [ -z "$$MNIST_MIRROR" ] && [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc pull data/raw; fi
	$(BIN)/dvc exp run $(SMOKE_ARGS)

# The workspace against $(REPORT_BASE): $(REPORT_DIR)/report.md, report.json, plots/.
report: setup
	$(BIN)/python -m pipeline.report --base $(REPORT_BASE) --out $(REPORT_DIR)

# GitHub: the report as the job's summary page.
report-summary:
	test -n "$$GITHUB_STEP_SUMMARY"
	cat $(REPORT_DIR)/report.md >> "$$GITHUB_STEP_SUMMARY"

# GitHub: the report as ONE comment on pull request $$PR_NUMBER, edited on every push
# (gh's own --edit-last: the last comment of this token's user; --create-if-none: the first).
pr-comment:
	test -n "$$PR_NUMBER"
	gh pr comment "$$PR_NUMBER" --edit-last --create-if-none --body-file $(REPORT_DIR)/report.md

# main: reproduce against the team's tracking server (MLFLOW_TRACKING_* from the CI's
# secrets), outputs first pulled from the DVC remote where it has them, then pushed back.
ci-repro: setup
	if [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc pull --allow-missing; fi
	$(BIN)/dvc repro

ci-push: setup
	$(BIN)/dvc push

ci-register: setup
	$(BIN)/python -m pipeline.register

# Scheduled retrain (.github/workflows/retrain.yml): the outputs from the DVC remote, the
# monitor (make monitor), a retrain if needed, the report, and a pull request of it.
ci-pull: setup
	if [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc pull --allow-missing; fi

ci-retrain: setup
	$(BIN)/python -m pipeline.retrain --if-needed

# A retrain/<time> branch with params.yaml (the new feedback.until), dvc.lock and the small
# outputs, its data pushed to the DVC remote, and a pull request with the report as body.
# Nothing retrained (params.yaml unchanged): nothing to propose.
retrain-pr:
	if git diff --quiet -- params.yaml; then echo "no retrain: nothing to propose"; exit 0; fi; \
	branch="retrain/$$(date -u +%Y%m%d-%H%M)"; \
	git switch -c "$$branch" && git add params.yaml dvc.lock data && \
	git -c user.name="pipeline retrain" -c user.email="retrain@users.noreply.github.com" \
		commit -qm "Retrain on the labels up to $$(date -u +%FT%TZ)" && \
	$(BIN)/dvc push && git push origin "$$branch" && \
	gh pr create --head "$$branch" --title "Retrain on production labels" \
		--body-file $(REPORT_DIR)/report.md
