#!/usr/bin/env bash
# Chat templates against Jinja2: the conversations of bench/chat/conversations.jsonl (24 multi-turn records: <think>
# blocks, reasoning_content, tool calls with object and string arguments, parallel calls, consecutive tool results,
# non-ASCII, Jinja-looking text) rendered by Debian's python3-jinja2 under transformers' settings (bench/chat/render_check.py)
# and by `reslora tokenize --data FILE --chat-renders`: the whole conversation and, for every assistant turn, the render of
# the messages up to it (what training uses on templates that rewrite earlier turns) must be the same text, and every
# training example must be one of those texts. Templates: Qwen3's published template (the test fixture), Qwen2.5's tool
# template, and five families' templates on the records without tool use.
# Usage: bench/chat-render-check.sh   (needs python3-jinja2). Exit 0 when every record agrees.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import jinja2' 2>/dev/null || { echo "bench/chat-render-check.sh: python3-jinja2 is needed (apt-get install python3-jinja2)" >&2; exit 2; }
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
F=tests/ResLora.Tests/IO/Templates/Fixtures
python3 bench/chat/render_check.py "$R" "$W" bench/chat/conversations.jsonl \
  "qwen3=$F/qwen3.jinja;;<|im_end|>;1" \
  "qwen2.5-tools=$F/qwen2_5_tools.jinja;;<|im_end|>;1" \
  "qwen2=$F/qwen2.jinja;;<|im_end|>;0" \
  "llama3=$F/llama3.jinja;<|begin_of_text|>;<|eot_id|>;0" \
  "phi3=$F/phi3.jinja;<s>;<|endoftext|>;0" \
  "zephyr=$F/zephyr.jinja;<s>;</s>;0" \
  "llama2=$F/llama2.jinja;<s>;</s>;0"
echo "chat-render-check: every record agrees"
