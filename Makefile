# Two entry points: `make demo` (main job on the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_ARGS ?= pretrained=mmq:shapes-blip2,llm_bits=4,method=uniform
TASKS ?= mmq_shapes_cap,mmq_shapes_vqa

GATE_OUT ?= results/ci-gate
# The gate judges a score by the 95% paired-bootstrap interval of its drop where the baseline has
# per-document scores (written by gate-update), by the fixed tolerances otherwise.
GATE_MODE ?= $(if $(wildcard .ci/regression_baseline.per_doc.jsonl),ci,tolerance)

.PHONY: install demo test gate gate-update gate-sweep

install: $(VENV)/.installed

# torch first, from the local CPU wheel: any other torch spec can pull a multi-GB CUDA build.
# PyPI's torchvision (even 0.28.0, made for torch 2.13) is built against CUDA torch: beside the CPU
# torch it cannot load its operators and breaks lmms-eval; timm then breaks `accelerate launch`,
# which imports it. Neither is used by our models: remove both.
$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c .ci/constraints.txt -e ".[test,export]"
	$(PY) -m pip uninstall --quiet -y torchvision timm
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/mmq-eval run --model mmq_blip2 --model_args $(MODEL_ARGS) \
		--tasks $(TASKS) --batch_size 16 --output_path results/demo

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
	$(MAKE) gate

# Regression gate: a small sweep of the embedded model against the committed baseline.
gate: gate-sweep
	$(VENV)/bin/mmq-eval regress --baseline .ci/regression_baseline.json --results $(GATE_OUT) --mode $(GATE_MODE)

# After an intended change of scores: rewrite the baseline (and its per-document scores) from a fresh gate sweep.
gate-update: gate-sweep
	$(VENV)/bin/mmq-eval regress --baseline .ci/regression_baseline.json --results $(GATE_OUT) --update

gate-sweep: install
	rm -rf $(GATE_OUT)
	HF_HUB_OFFLINE=1 $(VENV)/bin/mmq-eval sweep .ci/regression_sweep.yaml --out $(GATE_OUT) --limit 100
