# make demo / make test bootstrap .venv from the pinned requirements on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.samtune-installed

.PHONY: venv demo test bench lock clean stack-k8s k8s-render

$(STAMP): requirements.txt requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q -r requirements.txt -c requirements.lock
	# sam2 compiles an optional CUDA extension; build it without (CPU) and against our torch
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install -q --no-build-isolation -c requirements.lock sam2==1.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/python run.py --pipeline finetune --config demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/convert.py

# Register (idempotently) and activate the remote stack described in stacks/k8s_stack.yaml.
stack-k8s: venv
	$(BIN)/python -m stacks.remote stacks/k8s_stack.yaml --activate

# Render an overlay (kubectl kustomize where installed, else samtune's Python renderer).
k8s-render: venv
	$(BIN)/python -m stacks.kustomize k8s/overlays/$${OVERLAY:-gpu-cluster}

lock: venv
	$(BIN)/python -m pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf outputs .samtune
