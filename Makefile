# Two commands do everything on a fresh machine:
#   make demo   - install, make the demo data, run jobs/demo.yaml into runs/demo/, jobs/demo_audio.yaml
#                 into runs/demo-audio/, jobs/demo_video.yaml into runs/demo-video/ and jobs/demo_code.yaml
#                 into runs/demo-code/; audit, report and check all four; train docstring<->code retrieval
#   make test   - install, run the test suite
VENV := .venv
PY := $(VENV)/bin/python
# the team's shared checker beside this checkout, else its copy in tests/tools
SHARD_CHECKER := $(firstword $(wildcard ../shared/tools/check_shards.py) tests/tools/check_shards.py)

.PHONY: setup demo test bench clean

setup:
	@bash scripts/install.sh

demo: setup
	$(PY) -m jobs.demo_data runs/demo-data
	$(VENV)/bin/mmcurate run jobs/demo.yaml --output runs/demo
	$(VENV)/bin/mmcurate audit runs/demo > runs/demo/audit.json && echo "audit: every input is in the shards or the rejects (runs/demo/audit.json)"
	$(VENV)/bin/mmcurate report runs/demo
	$(PY) -m jobs.read_shards runs/demo/shards
	$(PY) $(SHARD_CHECKER) runs/demo/shards
	$(PY) -m jobs.demo_audio_data runs/demo-audio-data
	$(VENV)/bin/mmcurate run jobs/demo_audio.yaml --output runs/demo-audio
	$(VENV)/bin/mmcurate audit runs/demo-audio > runs/demo-audio/audit.json && echo "audit: every recording and segment is in the shards or the rejects (runs/demo-audio/audit.json)"
	$(VENV)/bin/mmcurate report runs/demo-audio
	$(PY) -m jobs.read_shards runs/demo-audio/shards
	$(PY) $(SHARD_CHECKER) runs/demo-audio/shards
	$(PY) -m jobs.demo_video_data runs/demo-video-data
	$(VENV)/bin/mmcurate run jobs/demo_video.yaml --output runs/demo-video
	$(VENV)/bin/mmcurate audit runs/demo-video > runs/demo-video/audit.json && echo "audit: every video and clip is in the shards or the rejects (runs/demo-video/audit.json)"
	$(VENV)/bin/mmcurate report runs/demo-video
	$(PY) -m jobs.read_shards runs/demo-video/shards
	$(PY) $(SHARD_CHECKER) runs/demo-video/shards
	$(PY) -m jobs.demo_code_data runs/demo-code-data
	$(VENV)/bin/mmcurate run jobs/demo_code.yaml --output runs/demo-code
	$(VENV)/bin/mmcurate audit runs/demo-code > runs/demo-code/audit.json && echo "audit: every repository and file is in the shards or the rejects (runs/demo-code/audit.json)"
	$(VENV)/bin/mmcurate report runs/demo-code
	$(PY) $(SHARD_CHECKER) runs/demo-code/shards
	$(VENV)/bin/mmcurate train jobs/train_code.yaml

test: setup
	$(PY) -m pytest -q tests

# every bench prints its own figures; the last step prints one table of them all against their goals
bench: setup
	$(PY) bench/goals.py --clear
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_download.py
	$(PY) bench/bench_minhash.py
	$(PY) bench/bench_dedup.py
	$(PY) bench/bench_dedup_vs_datasketch.py
	$(PY) bench/bench_phash.py
	$(PY) bench/bench_clip.py
	$(PY) bench/bench_audio.py
	$(PY) bench/bench_audio_dedup.py
	$(PY) bench/bench_video.py
	$(PY) bench/bench_video_dedup.py
	$(PY) bench/bench_license.py
	$(PY) bench/bench_code.py
	$(PY) bench/bench_code_dedup.py
	$(PY) bench/bench_code_secrets.py
	$(PY) bench/bench_dedup_scale.py --docs 200000 --docs 1000000
	$(PY) bench/bench_refresh.py --texts 100000
	$(PY) bench/bench_refresh.py --images 4000
	$(PY) bench/bench_semantic_dedup.py
	$(PY) bench/goals.py

clean:
	rm -rf runs .venv .venv-pillow bench/_data
