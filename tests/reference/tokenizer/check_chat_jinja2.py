# Cross-check, run by hand (never by CI): renders every conversation of
# tests/fixtures/tokenizers/*/chat.json with Python Jinja2 (HF settings: sandboxed, trim_blocks,
# lstrip_blocks) and compares with the @huggingface/transformers renderings stored there.
# Usage (repo root, a python with jinja2): python3 tests/reference/tokenizer/check_chat_jinja2.py
import jinja2, json, sys
from jinja2.sandbox import ImmutableSandboxedEnvironment
def raise_exception(m): raise Exception(m)
for model in ['qwen3','qwen2.5']:
    cfg=json.load(open(f'tests/fixtures/tokenizers/{model}/tokenizer_config.json'))
    env=ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals['raise_exception']=raise_exception
    t=env.from_string(cfg['chat_template'])
    fx=json.load(open(f'tests/fixtures/tokenizers/{model}/chat.json'))
    bad=0
    for c in fx['conversations']:
        out=t.render(messages=c['messages'], add_generation_prompt=c['add_generation_prompt'], eos_token=cfg['eos_token'], **c.get('flags', {}))
        if out!=c['rendered']: bad+=1; print(model, repr(out)[:200], repr(c['rendered'])[:200])
    print(model, len(fx['conversations']), 'mismatches vs python jinja2:', bad)
