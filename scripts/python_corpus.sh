#!/usr/bin/env bash
# Usage: scripts/python_corpus.sh WORK_DIR [BINARY]
# Builds the demo corpus deterministically (the paper's Stack-V2-Python setting in miniature):
# the Python files Debian 12 installs under /usr/lib/python3.11 (the python3.11 standard library),
# sorted by path (C locale), split by file: held out iff cksum(path) mod 20 == 0 (~5%), else train.
# Each file's text is followed by <|endoftext|>. Then trains the byte-level BPE tokenizer
# (vocab 4096) on the training text and writes the token files.
# Writes WORK_DIR/{files,train,heldout}.list, {train,heldout}.txt, tokenizer/, {train,heldout}.bin.
set -euo pipefail
work=${1:?usage: scripts/python_corpus.sh WORK_DIR [BINARY]}
bin=${2:-build/parscale}
src=/usr/lib/python3.11
[ -d "$src" ] || { echo "python_corpus: $src not found (Debian 12 package libpython3.11-stdlib)" >&2; exit 1; }
mkdir -p "$work"
export LC_ALL=C
find "$src" -name '*.py' -type f | sort > "$work/files.list"
: > "$work/train.list"; : > "$work/heldout.list"
while IFS= read -r f; do
  h=$(printf '%s' "$f" | cksum | cut -d' ' -f1)
  if [ $((h % 20)) -eq 0 ]; then echo "$f" >> "$work/heldout.list"; else echo "$f" >> "$work/train.list"; fi
done < "$work/files.list"
for part in train heldout; do
  : > "$work/$part.txt"
  while IFS= read -r f; do cat "$f" >> "$work/$part.txt"; printf '<|endoftext|>' >> "$work/$part.txt"; done < "$work/$part.list"
done
echo "python_corpus: $(wc -l < "$work/files.list") files: $(wc -l < "$work/train.list") train ($(wc -c < "$work/train.txt") bytes)," \
     "$(wc -l < "$work/heldout.list") held out ($(wc -c < "$work/heldout.txt") bytes)"
"$bin" tokenizer-train --files "$work/train.txt" --vocab-size 4096 --out "$work/tokenizer/tokenizer.json"
for part in train heldout; do
  "$bin" tokenize --tokenizer "$work/tokenizer/tokenizer.json" --file "$work/$part.txt" --out "$work/$part.bin"
done
