// Fixture for the BPE trainer, made by hand once (never by CI), from the repository root:
//   1. node tests/reference/tokenizer/make_train_fixture.mjs corpus
//        writes tests/fixtures/tokenizers/trained/corpus.txt (synthetic, seeded: Python-like code,
//        prose, numbers, a little non-Latin text and special tokens)
//   2. build/parscale tokenizer-train --files tests/fixtures/tokenizers/trained/corpus.txt \
//        --vocab-size 1000 --out tests/fixtures/tokenizers/trained/tokenizer.json
//   3. NODE_PATH=/tmp/tokfix/node_modules node tests/reference/tokenizer/make_train_fixture.mjs expect
//        loads the trained tokenizer.json with @huggingface/transformers and records its ids for
//        sample strings in tests/fixtures/tokenizers/trained/expected.json
import { createRequire } from 'module';
import fs from 'fs';
import path from 'path';

const DIR = 'tests/fixtures/tokenizers/trained';
let seed = 7;
function rand() {
  seed |= 0; seed = (seed + 0x6D2B79F5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const randint = (a, b) => a + Math.floor(rand() * (b - a + 1));
const pick = (a) => a[randint(0, a.length - 1)];

const names = ['value', 'index', 'result', 'items', 'name', 'path', 'config', 'data', 'count', 'total', 'node', 'parent', 'self', 'key', 'buffer'];
const funcs = ['load', 'parse', 'update', 'compute', 'render', 'validate', 'merge', 'split', 'encode', 'decode'];
const words = ['the', 'model', 'reads', 'a', 'token', 'and', 'returns', 'its', 'value', 'when', 'every', 'stream', 'shares', 'weights',
  'of', 'parallel', 'scaling', 'is', 'cheap', 'at', 'inference', 'time', 'we', 'measure', 'loss', 'on', 'held-out', 'text'];

function pyFunction() {
  const f = `${pick(funcs)}_${pick(names)}`;
  const args = Array.from({ length: randint(0, 3) }, () => pick(names)).join(', ');
  let s = `def ${f}(${args}):\n    """${pick(words)} ${pick(words)} ${pick(words)}."""\n`;
  for (let i = 0; i < randint(1, 6); ++i) {
    const r = rand();
    if (r < 0.3) s += `    ${pick(names)} = ${pick(names)}.${pick(funcs)}(${randint(0, 100)})\n`;
    else if (r < 0.5) s += `    if ${pick(names)} is None:\n        return ${pick(['[]', '{}', 'None', '0', "''"])}\n`;
    else if (r < 0.7) s += `    for ${pick(names)} in range(${randint(1, 1000)}):\n        ${pick(names)} += ${pick(names)}[${randint(0, 9)}]\n`;
    else if (r < 0.85) s += `    # ${pick(words)} ${pick(words)} ${pick(words)}\n`;
    else s += `    raise ValueError(f"bad {${pick(names)}!r}: ${pick(words)}")\n`;
  }
  return s + `    return ${pick(names)}\n\n`;
}
function prose() {
  const n = randint(5, 20);
  const letters = 'etaoinshrdlucmfwypvbgkjqxz';
  const randomWord = () => Array.from({ length: randint(2, 9) }, () => letters[Math.floor(Math.pow(rand(), 2) * 26)]).join('');
  const w = Array.from({ length: n }, () => (rand() < 0.25 ? randomWord() : pick(words)));
  w[0] = w[0][0].toUpperCase() + w[0].slice(1);
  return w.join(' ') + pick(['.', '.', '!', '?']) + (rand() < 0.3 ? " It's " + pick(words) + "." : '') + '\n';
}

if (process.argv[2] === 'corpus') {
  let s = '';
  while (s.length < 300000) {
    const r = rand();
    if (r < 0.55) s += pyFunction();
    else if (r < 0.85) s += prose();
    else if (r < 0.9) s += `${randint(0, 1e9)} ${(rand() * 100).toFixed(3)} 0x${randint(0, 65535).toString(16)}\n`;
    else if (r < 0.95) s += pick(['Привет, мир.', '你好世界。', 'café naïve résumé', 'e\u0301te\u0301', '🙂 👍🏽']) + '\n';
    else s += `<|im_start|>user\n${prose()}<|im_end|>\n<|endoftext|>`;
  }
  fs.mkdirSync(DIR, { recursive: true });
  fs.writeFileSync(path.join(DIR, 'corpus.txt'), s);
  console.log('corpus.txt:', s.length, 'chars');
} else if (process.argv[2] === 'expect') {
  const require = createRequire(path.join(process.env.NODE_PATH || '/tmp/tokfix/node_modules', 'x'));
  const { PreTrainedTokenizer } = require('@huggingface/transformers');
  const tj = JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer.json'), 'utf8'));
  const tc = JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer_config.json'), 'utf8'));
  const tok = new PreTrainedTokenizer(tj, tc);
  const samples = [
    'def load_value(self, path):\n    return self.path\n',
    'The model reads a token and returns its value.',
    "It's cheap at inference time; WE'LL measure loss on held-out text!",
    '    for index in range(1000):\n\t\titems[index] += 42\n',
    '<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n',
    'café e\u0301te\u0301 Привет 你好 🙂 👍🏽 ﬁ',
    '12345678901234567890 3.14159 0xdeadbeef',
    '', ' ', '\n\n\n', 'zzzz qqqq xxxx unknownwordsnotincorpus',
  ];
  for (let i = 0; i < 60; ++i) samples.push(rand() < 0.5 ? pyFunction() : prose());
  const cases = samples.map((text) => {
    const ids = tok.encode(text, { add_special_tokens: false });
    return { text, ids, decoded: ids.length ? tok.decode(ids, { skip_special_tokens: false }) : '' };
  });
  fs.writeFileSync(path.join(DIR, 'expected.json'), JSON.stringify({ generator: 'tests/reference/tokenizer/make_train_fixture.mjs with @huggingface/transformers 3.8.1', cases }, null, 1));
  console.log('expected.json:', cases.length, 'cases');
} else {
  console.error('usage: make_train_fixture.mjs corpus|expect');
  process.exit(2);
}
