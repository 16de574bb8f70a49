"""Writes corpora of real texts that this project did not write, from Debian's package lists.

    python3 scripts/make_corpus.py            # into <murmur cache>/corpus/

- debian-descriptions.txt: every package's short description (~60k), for tests.
- debian-texts.txt: those plus every paragraph (>= 40 characters) of the long descriptions
  in Translation-en (~144k), for benchmarks at 100k memories. Needs the translation lists:
  `apt-get update -o Acquire::Languages=en` (this script runs it when it is root).

Both are sorted, deduplicated, one text per line, at most 8 KiB each. Existing files are kept.
"""

import glob
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "tools"))
from murmur_cache import cache_dir  # noqa: E402

MIN_PARAGRAPH = 40


def stanzas(text):
    for stanza in text.split("\n\n"):
        yield stanza.split("\n")


def field_with_body(lines, i):
    """The value of the field at lines[i] and its continuation paragraphs."""
    paragraphs = [[]]
    for cont in lines[i + 1 :]:
        if not cont.startswith(" "):
            break
        if cont.strip() == ".":
            paragraphs.append([])
        else:
            paragraphs[-1].append(cont.strip())
    short = lines[i].split(":", 1)[1].strip()
    return short, [" ".join(" ".join(p).split()) for p in paragraphs if p]


def short_descriptions():
    dump = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True, text=True).stdout
    for lines in stanzas(dump):
        for i, line in enumerate(lines):
            if line.startswith("Description:") or line.startswith("Description-en:"):
                short, _ = field_with_body(lines, i)
                yield short.rstrip(".") + "."


def translation_paragraphs():
    files = glob.glob("/var/lib/apt/lists/*_i18n_Translation-en*")
    if not files and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq", "-o", "Acquire::Languages=en"], check=True)
        files = glob.glob("/var/lib/apt/lists/*_i18n_Translation-en*")
    if not files:
        sys.exit("no Translation-en lists: run `apt-get update -o Acquire::Languages=en` as root")
    for path in sorted(files):
        # apt-helper decompresses whatever apt stored (lz4, gz, xz or plain).
        text = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True, text=True
        ).stdout
        for lines in stanzas(text):
            for i, line in enumerate(lines):
                if line.startswith("Description-en:"):
                    _, paragraphs = field_with_body(lines, i)
                    yield from (p for p in paragraphs if len(p) >= MIN_PARAGRAPH)


def write(path, texts, minimum):
    if os.path.exists(path) and os.path.getsize(path) > 0:
        print(f"corpus present: {path}")
        return
    unique = sorted({t for t in texts if t and len(t.encode()) <= 8192})
    if len(unique) < minimum:
        sys.exit(f"only {len(unique)} texts for {path}: run `apt-get update` first")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(unique) + "\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {len(unique)} texts to {path}")


def main():
    out = os.path.join(cache_dir(), "corpus")
    shorts = list(short_descriptions())
    write(os.path.join(out, "debian-descriptions.txt"), shorts, 25000)
    if "--with-paragraphs" in sys.argv:
        write(os.path.join(out, "debian-texts.txt"), shorts + list(translation_paragraphs()), 100000)


if __name__ == "__main__":
    main()
