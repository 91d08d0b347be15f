// Generates the tokenizer test fixtures with an independent implementation: the npm package
// @huggingface/transformers (its JS tokenizers and apply_chat_template via @huggingface/jinja).
// Run by hand, never by CI:
//   mkdir -p /tmp/tokfix && cd /tmp/tokfix && npm init -y && \
//     npm install --ignore-scripts @huggingface/transformers@3.8.1
//   NODE_PATH=/tmp/tokfix/node_modules node tests/reference/tokenizer/make_fixtures.mjs
// (run from the repository root; it reads tests/fixtures/tokenizers/{qwen3,qwen2.5}/ and local
// text files for sample prose and code, and writes tests/fixtures/tokenizers/*/expected.json and
// chat.json). The output is deterministic (seeded PRNG; the sampled files are Debian's).
//
// Known, deliberate differences between transformers.js and HF `tokenizers` (Rust), which the C++
// implementation follows; the generated strings avoid them and the C++ tests cover them apart:
//  - JS regex \s includes U+FEFF and excludes U+0085; Rust's \s is Unicode White_Space.
//  - transformers.js rewrites (?i:'s|...) as ASCII-only alternatives; Rust's (?i) also lets 's
//    match U+017F (long s).
//  - transformers.js ignores added tokens' single_word flag.
import { createRequire } from 'module';
import fs from 'fs';
import path from 'path';

const require = createRequire(path.join(process.env.NODE_PATH || '/tmp/tokfix/node_modules', 'x'));
const { PreTrainedTokenizer } = require('@huggingface/transformers');

const ROOT = 'tests/fixtures/tokenizers';
const MODELS = ['qwen3', 'qwen2.5'];

// ---- deterministic PRNG (mulberry32) ----
let seed = 20250601;
function rand() {
  seed |= 0; seed = (seed + 0x6D2B79F5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const randint = (a, b) => a + Math.floor(rand() * (b - a + 1));
const pick = (arr) => arr[randint(0, arr.length - 1)];
const cp = (lo, hi) => String.fromCodePoint(randint(lo, hi));

const cases = [];  // {name, text} or {name, bytes: [..]}
const add = (name, text) => cases.push({ name, text });

// ---- English prose: paragraphs and sentences from Debian's license texts ----
function readText(file) { try { return fs.readFileSync(file, 'utf8'); } catch { return ''; } }
const prose = ['GPL-3', 'Apache-2.0', 'Artistic', 'LGPL-2.1', 'MPL-2.0', 'GFDL-1.3']
  .map((f) => readText('/usr/share/common-licenses/' + f)).join('\n');
const paragraphs = prose.split(/\n\s*\n/).filter((p) => p.trim().length > 20);
for (let i = 0; i < 250; ++i) add(`english/paragraph/${i}`, pick(paragraphs));
const sentences = prose.replace(/\s+/g, ' ').split(/(?<=[.!?])\s/).filter((s) => s.length > 3);
for (let i = 0; i < 250; ++i) add(`english/sentence/${i}`, pick(sentences));

// ---- Source code with tabs and indentation ----
function listFiles(dir, re) {
  try { return fs.readdirSync(dir).filter((f) => re.test(f)).sort().map((f) => path.join(dir, f)); }
  catch { return []; }
}
const pyFiles = listFiles('/usr/lib/python3.11', /\.py$/);
const cFiles = listFiles('/usr/include', /\.h$/).filter((f) => /\t/.test(readText(f)));
function snippet(file) {
  const lines = readText(file).split('\n');
  const start = randint(0, Math.max(0, lines.length - 30));
  return lines.slice(start, start + randint(3, 30)).join(pick(['\n', '\n', '\r\n']));
}
for (let i = 0; i < 200; ++i) add(`code/python/${i}`, snippet(pick(pyFiles)));
for (let i = 0; i < 150; ++i) add(`code/c-tabs/${i}`, snippet(pick(cFiles)));
add('code/tabs-indent', 'def f(x):\n\tif x:\n\t\treturn  x\t# tab\n    \telse:\n\t    pass\n');

// ---- Numbers of every length ----
for (let len = 1; len <= 60; ++len) {
  let s = String(randint(1, 9));
  for (let k = 1; k < len; ++k) s += String(randint(0, 9));
  add(`numbers/len${len}`, s);
  add(`numbers/in-text/len${len}`, `Total: ${s} items, ${s.slice(0, Math.ceil(len / 2))}.${s.slice(0, 3)}%`);
}
for (let i = 0; i < 40; ++i) {
  add(`numbers/mixed/${i}`, `${randint(0, 1e6)},${randint(0, 999)} ${(rand() * 1e4).toFixed(randint(0, 6))} -${randint(0, 99)}e${randint(-30, 30)} 0x${randint(0, 1e9).toString(16)} ١٢٣ ४५६ ＫＭ１２３`);
}

// ---- Scripts: CJK, Cyrillic, Arabic, Devanagari, Hangul, Thai, Greek ----
const samples = [
  '你好，世界！我们今天去公园散步，然后吃了一碗面条。', '東京は日本の首都です。ひらがなとカタカナ、漢字を使います。',
  '대한민국의 수도는 서울입니다. 한글은 과학적인 문자입니다.', 'Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.',
  'Ёлки-палки, ЁЖИК и щука — 1999 год.', 'مرحبا بالعالم! اللغة العربية تكتب من اليمين إلى اليسار. ١٢٣٤',
  'नमस्ते दुनिया! हिन्दी देवनागरी लिपि में लिखी जाती है। क़िला ज़रूरी',
  'สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ', 'Γειά σου Κόσμε! Ελληνικά: αβγδε ΑΒΓΔΕ ς σ',
  'שלום עולם', 'Tiếng Việt có dấu: Hà Nội, Đà Nẵng, phở bò.', 'ÆØÅ æøå ß ẞ İstanbul ıi Ğğ Şş',
];
samples.forEach((s, i) => add(`scripts/sample/${i}`, s));
const blocks = [[0x4E00, 0x9FFF], [0x3040, 0x309F], [0x30A0, 0x30FF], [0xAC00, 0xD7A3], [0x0410, 0x044F],
  [0x0621, 0x064A], [0x0900, 0x097F], [0x0E01, 0x0E5B], [0x0391, 0x03C9], [0x05D0, 0x05EA], [0x3000, 0x303F],
  [0xFF01, 0xFF5E], [0x20000, 0x2A6DF]];
for (let i = 0; i < 300; ++i) {
  const [lo, hi] = pick(blocks);
  let s = '';
  const n = randint(1, 40);
  for (let k = 0; k < n; ++k) {
    const r = rand();
    s += r < 0.75 ? cp(lo, hi) : r < 0.85 ? ' ' : r < 0.9 ? pick(['，', '。', '!', '?', '.', ',', '、', '»', '«', '—']) : r < 0.95 ? String(randint(0, 99)) : pick(['a', 'Z', 'xy', 'Hello']);
  }
  add(`scripts/random/${i}`, s);
}

// ---- Emoji: ZWJ sequences, skin tones, flags, keycaps, variation selectors ----
const emoji = ['👨‍👩‍👧‍👦', '👩🏽‍💻', '🏳️‍🌈', '🏴‍☠️', '👍🏻', '👍🏼', '👍🏽', '👍🏾', '👍🏿', '🇯🇵', '🇺🇸', '🇩🇪', '1️⃣', '#️⃣', '❤️', '❤',
  '🧑🏿‍🤝‍🧑🏻', '👨‍❤️‍💋‍👨', '🤷‍♀️', '🫠', '😀', '🙂', '🚀', '🐍', '™️', '©', '☺️', '🧔🏻‍♂️', '🏃🏾‍♀️‍➡️'];
for (let i = 0; i < 150; ++i) {
  let s = '';
  const n = randint(1, 12);
  for (let k = 0; k < n; ++k) s += rand() < 0.7 ? pick(emoji) : pick([' ', 'ok', ' yes', '!', '\n', 'é']);
  add(`emoji/${i}`, s);
}

// ---- Combining marks and non-NFC input ----
const nonNfc = ['e\u0301', 'A\u030A', '\u212B', '\u1E9B\u0323', 'q\u0307\u0323', '\u1100\u1161\u11A8', '\u0915\u093C',
  'o\u0308\u0304', 'a\u0328\u0301', '\u00C5\u0301', 'Z\u0336\u0335', '\u0041\u0300\u0301\u0302', 'ﬁ ﬀ ＡＢＣ', '\u2126', '\u0344'];
nonNfc.forEach((s, i) => add(`nfc/fixed/${i}`, `x${s}y ${s}`));
for (let i = 0; i < 150; ++i) {
  let s = '';
  const n = randint(1, 10);
  for (let k = 0; k < n; ++k) {
    s += pick(['a', 'e', 'o', 'u', 'A', 'E', 'n', 'c', 'z', 'ω', 'и', 'ा', ' ', 'α']);
    const m = randint(0, 3);
    for (let j = 0; j < m; ++j) s += cp(0x0300, 0x036F);
  }
  add(`nfc/random/${i}`, s);
}

// ---- Whitespace runs: spaces, tabs, newlines, \r\n, exotic spaces ----
const ws = [' ', '  ', '\t', '\n', '\r\n', '\r', '\n\n', '   ', '\u00A0', '\u3000', '\u2003', '\u2028', '\f', '\v'];
for (let i = 0; i < 200; ++i) {
  let s = '';
  const n = randint(1, 16);
  for (let k = 0; k < n; ++k) s += rand() < 0.6 ? pick(ws) : pick(['word', 'x', '1', '!', 'foo bar', '}', '中', '#', '  ']);
  add(`whitespace/${i}`, s);
}
add('whitespace/only-spaces', ' '.repeat(37));
add('whitespace/only-newlines', '\n'.repeat(9));
add('whitespace/crlf', 'a\r\n\r\nb\r\n');

// ---- Contractions in every case ----
const suffixes = ['s', 't', 're', 've', 'm', 'll', 'd'];
function cases_of(s) {  // every upper/lower combination
  const out = [];
  for (let mask = 0; mask < (1 << s.length); ++mask) {
    out.push([...s].map((c, k) => (mask >> k) & 1 ? c.toUpperCase() : c).join(''));
  }
  return out;
}
for (const suf of suffixes) {
  for (const v of cases_of(suf)) {
    add(`contractions/${suf}/${v}`, `it'${v} we'${v} I'${v}'${v} '${v} x '${v}x`);
  }
}
for (let i = 0; i < 40; ++i) {
  add(`contractions/random/${i}`, `${pick(["They", "WE", "you", "She", "it", "I"])}'${pick(cases_of(pick(suffixes)))} ${pick(["gone", "DONE", "been", "ok"])}${pick(["'", "’", "''", " '"])}${pick(suffixes)}`);
}

// ---- Special tokens inside text ----
const specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|vision_pad|>', '<tool_call>', '</tool_call>',
  '<|fim_prefix|>', '<|file_sep|>', '<think>', '</think>', '<|im_start', 'im_end|>', '<|', '|>'];
for (let i = 0; i < 150; ++i) {
  let s = '';
  const n = randint(1, 8);
  for (let k = 0; k < n; ++k) s += rand() < 0.5 ? pick(specials) : pick(['user\n', 'Hello', ' ', '\n', 'abc', ' x ', '中文', '  ', "it's"]);
  add(`special/${i}`, s);
}
add('special/chat', '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n');
add('special/glued', 'abc<|endoftext|>def<|im_end|><|im_end|>  <|im_start|>');

// ---- Edge cases ----
add('edge/empty', '');
add('edge/single-space', ' ');
add('edge/single-char', 'a');
add('edge/nul', 'a\u0000b\u0000');
add('edge/controls', '\u0001\u0002\u001b[31mred\u001b[0m\u007f');
add('edge/replacement-char', '\uFFFD\uFFFDx');
add('edge/private-use', '\uE000\uF8FF\u{F0000}');
add('edge/noncharacters', '\uFDD0\uFFFE\uFFFF\u{10FFFF}');
// 100 KB lines: prose words, one long letter run, one long space run, digits
{
  let s = '';
  while (s.length < 100000) s += pick(sentences) + ' ';
  add('edge/100kb-prose-line', s.replace(/\n/g, ' ').slice(0, 100000));
  add('edge/100kb-letters', 'a'.repeat(50000) + 'b'.repeat(50000));
  add('edge/100kb-spaces', ' '.repeat(100000) + 'x');
  add('edge/100kb-digits', '7'.repeat(100000));
  let cj = '';
  while (cj.length < 34000) cj += cp(0x4E00, 0x9FFF);
  add('edge/100kb-cjk', cj);
}

// ---- Random soup from all of the above ----
const atoms = [...emoji, ...ws, ...specials.slice(0, 4), ...nonNfc, 'hello', ' World', "'s", "'LL", '123', '4567890', '{', '}', '();', '=>',
  '你好', 'мир', 'سلام', 'नमस्ते', '\t', '$$', '...', '—', '“quoted”', '«ä»', 'ﬁ', '\u0301', '𝔘𝔫𝔦', '🙂'];
for (let i = 0; i < 250; ++i) {
  let s = '';
  const n = randint(1, 20);
  for (let k = 0; k < n; ++k) s += pick(atoms);
  add(`soup/${i}`, s);
}

// ---- Invalid UTF-8 input bytes (decoded by the reference with U+FFFD replacement) ----
const badBytes = [
  [0x80], [0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80],
  [0xE4, 0xBD], [0xE4, 0xBD, 0x41], [0xF0, 0x9F, 0x98], [0xFF, 0xFE], [0xC3], [0x61, 0xC3, 0x28, 0x62],
];
for (let i = 0; i < 60; ++i) {
  const bytes = [];
  const n = randint(1, 8);
  for (let k = 0; k < n; ++k) {
    const r = rand();
    if (r < 0.4) bytes.push(...Buffer.from(pick(['abc', ' ', 'é', '中', '🙂', 'x y', '\n'])));
    else if (r < 0.7) bytes.push(...pick(badBytes));
    else bytes.push(randint(0x80, 0xFF));
  }
  cases.push({ name: `invalid-utf8/${i}`, bytes });
}
badBytes.forEach((b, i) => cases.push({ name: `invalid-utf8/fixed/${i}`, bytes: [0x41, ...b, 0x42] }));

// Guard the known JS-vs-Rust differences out of the generated strings.
for (const c of cases) {
  if (c.text !== undefined && /[\u0085\uFEFF]|'\u017F/.test(c.text)) throw new Error('generated a JS/Rust-divergent string: ' + c.name);
}

// ---- Decode-only cases: byte tokens that make invalid or truncated UTF-8 ----
function decodeCases(tok) {
  const enc = (s) => tok.encode(s, { add_special_tokens: false });
  const out = [];
  const byteIds = [];
  const BE = bytesToUnicode();
  for (let b = 0; b < 256; ++b) byteIds.push(tok.model.tokens_to_ids.get(BE[b]));
  for (let i = 0; i < 120; ++i) {
    const ids = [];
    const n = randint(1, 10);
    for (let k = 0; k < n; ++k) {
      const r = rand();
      if (r < 0.5) ids.push(byteIds[randint(0x80, 0xFF)]);
      else if (r < 0.7) ids.push(...enc(pick(['中', '🙂', 'é', ' the', 'x'])));
      else if (r < 0.8) ids.push(pick([151643, 151644, 151645]));
      else ids.push(byteIds[randint(0, 0x7F)]);
    }
    out.push(ids);
  }
  // every prefix of multi-byte characters, split byte by byte
  for (const ch of ['é', '中', '🙂', '👩🏽‍💻']) {
    const bytes = [...Buffer.from(ch)];
    for (let k = 1; k <= bytes.length; ++k) out.push(bytes.slice(0, k).map((b) => byteIds[b]));
  }
  return out;
}
function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; ++b) bs.push(b);
  for (let b = 161; b <= 172; ++b) bs.push(b);
  for (let b = 174; b <= 255; ++b) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; ++b) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); ++n; }
  const map = {};
  bs.forEach((b, i) => { map[b] = String.fromCodePoint(cs[i]); });
  return map;
}

// ---- Chat conversations ----
function conversations() {
  const sys = ['You are a helpful assistant.', 'Réponds en français.', '', 'Be terse.\nUse lists.'];
  const users = ['Hi!', 'What is 2+2?', 'Write a haiku about the sea.', '你好，请介绍一下你自己。', '  spaced  ', 'multi\nline\n\ninput', '<|im_start|> in text', "It's 'quoted' \"double\""];
  const assistants = ['Hello! How can I help?', '4', 'The sea breathes\nslow tides', '<think>\nLet me think.\n</think>\n\nThe answer is 4.',
    '<think>reasoning only</think>answer', '\n\nleading newlines', '', 'Sure: 🙂'];
  const convs = [];
  convs.push([{ role: 'user', content: 'Hello' }]);
  convs.push([{ role: 'system', content: 'You are a bot.' }, { role: 'user', content: 'Hello' }]);
  convs.push([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }, { role: 'user', content: 'Bye' }]);
  convs.push([{ role: 'system', content: 'S' }, { role: 'user', content: 'Q1' }, { role: 'assistant', content: '<think>\nr1\n</think>\n\nA1' }, { role: 'user', content: 'Q2' }, { role: 'assistant', content: '<think>r2</think>A2' }]);
  convs.push([{ role: 'user', content: 'Q' }, { role: 'assistant', content: 'A' }, { role: 'system', content: 'late system' }, { role: 'user', content: 'Q2' }]);
  convs.push([{ role: 'assistant', content: 'I start.' }, { role: 'user', content: 'ok' }]);
  convs.push([{ role: 'user', content: '' }]);
  for (let i = 0; i < 30; ++i) {
    const conv = [];
    if (rand() < 0.5) conv.push({ role: 'system', content: pick(sys) });
    const turns = randint(1, 4);
    for (let t = 0; t < turns; ++t) {
      conv.push({ role: 'user', content: pick(users) });
      if (t < turns - 1 || rand() < 0.4) conv.push({ role: 'assistant', content: pick(assistants) });
    }
    convs.push(conv);
  }
  return convs;
}

// ---- Generate ----
for (const model of MODELS) {
  const dir = path.join(ROOT, model);
  const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  const tok = new PreTrainedTokenizer(tj, tc);
  // Same tokenizer with the special added tokens removed: HF's split_special_tokens=True
  // behaviour (special tokens are not in model.vocab, so their text is encoded as plain text).
  const tjPlain = JSON.parse(JSON.stringify(tj));
  tjPlain.added_tokens = tjPlain.added_tokens.filter((t) => !t.special);
  const tokPlain = new PreTrainedTokenizer(tjPlain, tc);

  const out = { generator: 'tests/reference/tokenizer/make_fixtures.mjs with @huggingface/transformers 3.8.1', model, cases: [], decode_cases: [] };
  for (const c of cases) {
    const text = c.text !== undefined ? c.text : new TextDecoder('utf-8').decode(new Uint8Array(c.bytes));
    const ids = tok.encode(text, { add_special_tokens: false });
    const rec = { name: c.name };
    if (c.text !== undefined) rec.text = c.text; else rec.bytes_hex = Buffer.from(c.bytes).toString('hex');
    rec.ids = ids;
    const dec = (x, skip) => (x.length === 0 ? '' : tok.decode(x, { skip_special_tokens: skip }));  // JS rejects []
    rec.decoded = dec(ids, false);
    const plain = tokPlain.encode(text, { add_special_tokens: false });
    if (JSON.stringify(plain) !== JSON.stringify(ids)) rec.ids_no_special = plain;
    const skipped = dec(ids, true);
    if (skipped !== rec.decoded) rec.decoded_skip_special = skipped;
    out.cases.push(rec);
  }
  for (const ids of decodeCases(tok)) {
    out.decode_cases.push({ ids, text: tok.decode(ids, { skip_special_tokens: false }), text_skip_special: tok.decode(ids, { skip_special_tokens: true }) });
  }
  fs.writeFileSync(path.join(dir, 'expected.json'), JSON.stringify(out));
  console.log(`${model}: ${out.cases.length} encode cases, ${out.decode_cases.length} decode cases`);

  const chats = { generator: out.generator, model, conversations: [] };
  for (const conv of conversations()) {
    for (const add_generation_prompt of [false, true]) {
      const rendered = tok.apply_chat_template(conv, { tokenize: false, add_generation_prompt });
      chats.conversations.push({ messages: conv, add_generation_prompt, rendered, ids: tok.encode(rendered, { add_special_tokens: false }) });
    }
    // enable_thinking=false (Qwen3's template adds an empty think block to the generation prompt).
    const rendered = tok.apply_chat_template(conv, { tokenize: false, add_generation_prompt: true, enable_thinking: false });
    chats.conversations.push({ messages: conv, add_generation_prompt: true, flags: { enable_thinking: false }, rendered, ids: tok.encode(rendered, { add_special_tokens: false }) });
  }
  fs.writeFileSync(path.join(dir, 'chat.json'), JSON.stringify(chats, null, 1));
  console.log(`${model}: ${chats.conversations.length} chat renderings`);
}
