#!/usr/bin/env bash
# `make run`, for now: synthesize a Mandarin sentence with the embedded engine.
set -euo pipefail
mkdir -p run
.venv/bin/glmtts synth --text "你好，欢迎使用语音合成服务。" -o run/hello.wav
echo "wrote run/hello.wav"
