"""Renders conversation records with Jinja2 under transformers' chat-template settings and compares them, text for text,
with what `reslora tokenize --data FILE --chat-renders` prints.

Settings (as transformers' apply_chat_template documents them): an ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, the loop-controls extension, a `tojson` filter that is json.dumps with ensure_ascii=False (so non-ASCII
stays as it is and HTML characters are not escaped), and the globals raise_exception and strftime_now; the template sees
messages, tools (None when the record has none), documents=None, add_generation_prompt and the BOS/EOS token texts that
are set.

Usage: python3 render_check.py RESLORA_CLI WORKDIR CONVERSATIONS.jsonl TEMPLATE_SPEC...
  TEMPLATE_SPEC = name=path.jinja;bos;eos;tools  (bos/eos empty for none; tools 1 when the template renders tool use)
Exit status 0 when every record agrees.
"""
import json
import os
import subprocess
import sys
from datetime import datetime

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def environment():
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def messages_of(record):
    messages = list(record["messages"])
    if "system" in record:
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


def render(template, messages, tools, bos, eos):
    variables = {"messages": messages, "tools": tools, "documents": None, "add_generation_prompt": False}
    if bos:
        variables["bos_token"] = bos
    if eos:
        variables["eos_token"] = eos
    return template.render(**variables)


def uses_tools(record):
    return bool(record.get("tools")) or any(m.get("role") == "tool" or m.get("tool_calls") for m in record["messages"])


def check(cli, work, records, name, path, bos, eos, tools_ok):
    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    source = open(path, encoding="utf-8").read()
    config = {"chat_template": source}
    if bos:
        config["bos_token"] = bos
    if eos:
        config["eos_token"] = eos
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False)
    chosen = [r for r in records if tools_ok or not uses_tools(r)]
    data = os.path.join(folder, "data.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for r in chosen:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    out = subprocess.run([cli, "tokenize", "--model", folder, "--data", data, "--chat-renders"],
                         check=True, capture_output=True, text=True, encoding="utf-8").stdout
    ours = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(ours) == len(chosen), f"{name}: {len(ours)} results for {len(chosen)} records"
    template = environment().from_string(source)
    agree = refused = examples = per_turn = renders = 0
    for number, (record, mine) in enumerate(zip(chosen, ours), 1):
        messages = messages_of(record)
        tools = record.get("tools")
        try:
            full = render(template, messages, tools, bos, eos)
            turns = [render(template, messages[: i + 1], tools, bos, eos) for i, m in enumerate(messages) if m["role"] == "assistant"]
        except Exception as e:  # the template refuses the record (raise_exception, a type error)
            if mine.get("error"):
                refused += 1
                agree += 1
            else:
                print(f"  {name} record {number}: jinja2 refuses ({type(e).__name__}: {e}), reslora renders it")
            continue
        if mine.get("error"):
            print(f"  {name} record {number}: reslora refuses ({mine['error']}), jinja2 renders it")
            continue
        problems = []
        if mine["full"] != full:
            problems.append("whole conversation differs")
        if mine["turns"] != turns:
            problems.append("per-turn renders differ: " + ", ".join(str(i + 1) for i, (a, b) in enumerate(zip(mine["turns"], turns)) if a != b))
        for e in mine["examples"]:
            if e["text"] != full and e["text"] not in turns:
                problems.append(f"example of turns {e['turns']} is no jinja2 render")
        if problems:
            print(f"  {name} record {number}: " + "; ".join(problems))
            for label, a, b in (("full", mine["full"], full),):
                if a != b:
                    print(f"    reslora: {json.dumps(a, ensure_ascii=False)}\n    jinja2:  {json.dumps(b, ensure_ascii=False)}")
            continue
        agree += 1
        renders += 1 + len(turns)
        examples += len(mine["examples"])
        per_turn += 1 if len(mine["examples"]) > 1 or (mine["examples"] and mine["examples"][0]["text"] != full) else 0
    print(f"{name:15} {len(chosen):3} records  {agree:3} agree ({refused} refused by both)  {renders:3} texts compared  "
          f"{examples:3} training examples, {per_turn} conversations trained per turn")
    return agree == len(chosen)


def main():
    cli, work, conversations = sys.argv[1:4]
    records = [json.loads(line) for line in open(conversations, encoding="utf-8") if line.strip()]
    ok = True
    for spec in sys.argv[4:]:
        name, rest = spec.split("=", 1)
        path, bos, eos, tools_ok = rest.split(";")
        ok &= check(cli, work, records, name, path, bos, eos, tools_ok == "1")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
