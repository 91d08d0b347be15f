#!/usr/bin/env bash
# Usage: scripts/python_corpus.sh WORK_DIR [BINARY]
# Builds the demo corpus deterministically (the paper's Stack-V2-Python setting in miniature):
# the Python files Debian 12 installs under /usr/lib/python3.11 (the python3.11 standard library),
# sorted by path (C locale), split by file: held out iff cksum(path) mod 20 == 0 (~5%), else train.
# The byte-level BPE tokenizer (vocab 4096) is trained on that standard-library training text.
# EXTRA_PACKAGES (Debian package names, space-separated; default none) adds the .py files those
# installed packages own (`dpkg -L`, sorted) to the training text only, after the standard library:
# the tokenizer and the held-out set stay the standard library's, so held-out losses stay
# comparable with and without them. Each file's text is followed by <|endoftext|>.
# Writes WORK_DIR/{files,train,heldout,extra}.list, {stdlib_train,train,heldout}.txt, tokenizer/,
# {train,heldout}.bin, packages.txt (the extra packages and their versions).
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
: > "$work/extra.list"; : > "$work/packages.txt"
for pkg in ${EXTRA_PACKAGES:-}; do
  version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
    { echo "python_corpus: EXTRA_PACKAGES names $pkg, which is not installed (apt-get install $pkg)" >&2; exit 1; }
  echo "$pkg $version" >> "$work/packages.txt"
  dpkg -L "$pkg" | grep '\.py$' | while IFS= read -r f; do [ -f "$f" ] && echo "$f"; done >> "$work/extra.list"
done
sort -u -o "$work/extra.list" "$work/extra.list"
append() {  # LIST OUT: each listed file's text, then <|endoftext|>
  while IFS= read -r f; do cat "$f" >> "$2"; printf '<|endoftext|>' >> "$2"; done < "$1"
}
: > "$work/stdlib_train.txt"; : > "$work/heldout.txt"
append "$work/train.list" "$work/stdlib_train.txt"
append "$work/heldout.list" "$work/heldout.txt"
cp "$work/stdlib_train.txt" "$work/train.txt"
append "$work/extra.list" "$work/train.txt"
echo "python_corpus: $(wc -l < "$work/files.list") standard-library files: $(wc -l < "$work/train.list") train" \
     "($(wc -c < "$work/stdlib_train.txt") bytes), $(wc -l < "$work/heldout.list") held out ($(wc -c < "$work/heldout.txt") bytes);" \
     "$(wc -l < "$work/extra.list") files of $(wc -l < "$work/packages.txt") extra packages: train text $(wc -c < "$work/train.txt") bytes in all"
"$bin" tokenizer-train --files "$work/stdlib_train.txt" --vocab-size 4096 --out "$work/tokenizer/tokenizer.json"
for part in train heldout; do
  "$bin" tokenize --tokenizer "$work/tokenizer/tokenizer.json" --file "$work/$part.txt" --out "$work/$part.bin"
done
