"""Puts a section file into docs/benchmarks.md: replaces the section with
the same first heading, or inserts it before `## Platform`. Usage:
python3 bench/splice_section.py bench/durability.md"""

import re
import sys

with open(sys.argv[1]) as f:
    section = f.read().rstrip() + "\n\n"
heading = section.splitlines()[0]
with open("docs/benchmarks.md") as f:
    page = f.read()
if heading in page:
    start = page.index(heading)
    rest = page[start + len(heading):]
    nxt = re.search(r"^## ", rest, re.M)
    end = start + len(heading) + (nxt.start() if nxt else len(rest))
    page = page[:start] + section + page[end:]
else:
    anchor = page.index("## Platform")
    page = page[:anchor] + section + page[anchor:]
with open("docs/benchmarks.md", "w") as f:
    f.write(page)
