# The two commands of the README: `make demo` (the main job) and `make test` (every test).
# Both install what they need first.

SHARED ?= $(abspath ../shared)
PLUGIN_PATH := $(abspath target/release)
export WHISPERENCNPU_SHARED := $(SHARED)

.PHONY: setup build demo test fmt release install install-user uninstall

# Installed as GStreamer plugins are (issue 10): `make install` into the system plugin directory
# (pkg-config's pluginsdir; PLUGINDIR and DESTDIR override it), `make install-user` into the one
# GStreamer searches for the user (XDG_DATA_HOME or ~/.local/share, then gstreamer-1.0/plugins);
# gst-launch-1.0 finds the element without GST_PLUGIN_PATH. `make uninstall` removes both.
# tests/install.rs runs them against a temporary directory.
PLUGIN := target/release/libgstwhisperencnpu.so
PLUGINDIR ?= $(shell pkg-config --variable=pluginsdir gstreamer-1.0)
USER_PLUGINDIR ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/gstreamer-1.0/plugins
# sudo only when the system directory is not ours to write.
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || [ -w "$(DESTDIR)$(PLUGINDIR)" ] || echo sudo)

setup:
	scripts/install-deps
	scripts/fetch-models

build: setup
	cargo build --release --locked

# Whisper base on real speech: jfk.wav through the element, embeddings to a file with the timing of
# every window, then the same speech transcribed, segment by segment with timestamps.
demo: build
	examples/pipelines/embeddings-to-file.sh $(SHARED)/audio/jfk.wav target/jfk-embeddings.f32
	examples/pipelines/captions.py $(SHARED)/audio/jfk.wav --srt target/jfk.srt

test: setup
	cargo build --release --locked
	scripts/build-xrt-shim
	GST_PLUGIN_PATH=$(PLUGIN_PATH) gst-inspect-1.0 whisperencnpu > /dev/null
	cargo test --release --locked
	examples/pipelines/embeddings-to-file.sh $(SHARED)/audio/jfk.wav target/jfk-embeddings.f32

fmt:
	cargo fmt --all

# Word error rate of transcription mode on ../shared/audio/eval and ../shared/audio/real (base,
# greedy, language en), per clip and overall, next to faster-whisper run on the same clips in the
# same run, both scored alike (scripts/score_eval.py: OpenAI's EnglishTextNormalizer, jiwer). Installs
# the pinned Python pieces into target/fw-venv from the package registry.
.PHONY: eval eval-vs-faster-whisper
eval eval-vs-faster-whisper: setup
	scripts/eval

# The same on one long stream: jfk.wav and the eval clips joined (1 s of silence after each), twice.
.PHONY: eval-join
eval-join: setup
	scripts/eval --join 2

# Our encoder against CTranslate2 (installed into target/ct2-venv from the package registry): same
# mel, weights and threads, medians and ratios in float32 and int8, accuracy against the golden
# output; then the element's realtime factor and peak memory on 10 minutes of audio. Run it on an
# idle machine (MODEL, THREADS, RUNS, MINUTES override the defaults).
.PHONY: bench-vs-ct2
bench-vs-ct2: setup
	scripts/bench-vs-ct2

# Caption delay under a live source at real time (appsrc is-live=true, 20 ms buffers, appsink
# sync=false): delay of every text buffer from its first word (mean, p95, max), the latency the
# element reports, buffers later than it, per-minute means; a JSON line last. Takes as long as the
# audio. FILE is any audio file or a folder of clips; ARGS passes options and element properties,
# e.g. make bench-delay ARGS="language=en latency-mode=low" or ARGS="--loop-to 600 $(SHARED)/audio/real".
FILE ?= $(SHARED)/audio/eval/long-form-mixed.wav
ARGS ?= language=en
.PHONY: bench-delay
bench-delay: setup
	scripts/caption-delay $(FILE) $(ARGS)

# Many live streams in one process (issue 12): N elements (STREAMS, default 1 2 4 8 16) fed
# distinct speech at real time, in each latency mode, then embeddings as fast as it goes: caption
# delay per stream, CPU, peak memory, the largest N that keeps up. MODEL, PRECISION, THREADS,
# SECONDS, MODES override the defaults (base, int8, 2, 60, full low).
.PHONY: bench-streams
bench-streams: setup
	scripts/bench-streams

# N elements behind one tee (COUNTS, default 1 2 4 8) in one gst-launch-1.0: wall time, peak and
# prepared resident memory, encoder time per window, per mode and precision (issue 12).
.PHONY: bench-tee
bench-tee: setup
	scripts/bench-tee

# The element's encoder time per window against encoder_bench's, in interleaved rounds (issue 12).
.PHONY: bench-encoder-gap
bench-encoder-gap: setup
	scripts/bench-encoder-gap

# Long runs (issue 9): the joins of jfk.wav and the eval clips (ROUNDS=2: 343 s, 7: 20 minutes)
# built into target/long-join/, transcribed, checked for repeated sentences and zero-length
# segments, with the word error rate per round. JOIN_ARGS passes element properties.
ROUNDS ?= 2
JOIN_ARGS ?=
.PHONY: long-join
long-join: setup
	scripts/long-join --rounds $(ROUNDS) $(JOIN_ARGS)

# The plugin, built (cargo decides whether anything changed); `make -o release install` installs
# the one built without looking.
release:
	cargo build --release --locked

install: release
	$(SUDO) install -D -m 644 $(PLUGIN) "$(DESTDIR)$(PLUGINDIR)/$(notdir $(PLUGIN))"

install-user: release
	install -D -m 644 $(PLUGIN) "$(USER_PLUGINDIR)/$(notdir $(PLUGIN))"

uninstall:
	rm -f "$(USER_PLUGINDIR)/$(notdir $(PLUGIN))"
	if [ -e "$(DESTDIR)$(PLUGINDIR)/$(notdir $(PLUGIN))" ]; then \
		$(SUDO) rm -f "$(DESTDIR)$(PLUGINDIR)/$(notdir $(PLUGIN))"; fi

# The element's random stress test for long (issue 10): CASES cases (default 5000) on a new seed
# (SEED to repeat one); `make test` runs 200 of them on a fixed seed.
.PHONY: stress
stress: build
	scripts/stress

# Soak (issue 10): 60 minutes of embeddings and 20 of transcription (real speech, joined and
# repeated) at full speed, resident memory every 10 s of audio; fails when it grows more than
# 5 MiB after the first minute. SOAK_ARGS passes options and properties to examples/soak.rs.
.PHONY: soak
soak: setup
	scripts/soak $(SOAK_ARGS)
