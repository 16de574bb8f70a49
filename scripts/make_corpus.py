"""Writes a corpus of real short texts that this project did not write: Debian package
descriptions ("short description. first paragraph"), from `apt-cache dumpavail`.

    python3 scripts/make_corpus.py [OUT]     (default: <murmur cache>/corpus/debian-descriptions.txt)

Used by the agent's recall test and benchmarks. Needs Debian's package lists
(`apt-get update` once). Output is sorted by package name, deduplicated, one text per line.
"""

import os
import subprocess
import sys


def cache_dir():
    for var, suffix in (("MURMUR_CACHE_DIR", ""), ("XDG_CACHE_HOME", "murmur")):
        if os.environ.get(var):
            return os.path.join(os.environ[var], suffix)
    return os.path.join(os.path.expanduser("~"), ".cache", "murmur")


def descriptions(dump):
    for stanza in dump.split("\n\n"):
        name, text, lines = None, None, stanza.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Description:") or line.startswith("Description-en:"):
                body = []
                for cont in lines[i + 1 :]:
                    if not cont.startswith(" ") or cont.strip() == ".":
                        break
                    body.append(cont.strip())
                short = line.split(":", 1)[1].strip()
                text = (short + ". " + " ".join(body)).strip()
        if name and text:
            yield name, " ".join(text.split())


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(cache_dir(), "corpus", "debian-descriptions.txt")
    if os.path.exists(out) and os.path.getsize(out) > 0:
        print(f"corpus present: {out}")
        return
    dump = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True, text=True).stdout
    seen, texts = set(), []
    for _, text in sorted(descriptions(dump)):
        if text not in seen and len(text.encode()) <= 8192:
            seen.add(text)
            texts.append(text)
    if len(texts) < 25000:
        sys.exit(f"only {len(texts)} descriptions found: run `apt-get update` first")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")
    os.replace(tmp, out)
    print(f"wrote {len(texts)} texts to {out}")


if __name__ == "__main__":
    main()
