"""Print the README "Reliability" table from the fault suite's record.

    python tests/fault_table.py /tmp/pytest-of-root/pytest-N/fault_cases.jsonl

One row per fault (the `fault` field of each JSON line written by tests/fault_record.FaultLog):
cases tried, survived (the rerun gave the right answer, or the error was one clear paragraph and a
rerun then succeeded), data lost, and what happened (the `what` field of the fault's last case).
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path


def table(lines: list[dict]) -> str:
    rows: OrderedDict[str, dict] = OrderedDict()
    for case in lines:
        row = rows.setdefault(case["fault"], {"tried": 0, "survived": 0, "lost": 0, "what": ""})
        cases = case.get("cases", 1)  # a property test's line counts its hypothesis examples
        row["tried"] += cases
        row["survived"] += case.get("survived_cases", cases if case["survived"] else 0)
        row["lost"] += cases if case["data_lost"] else 0
        row["what"] = case.get("what") or row["what"]
    out = ["| fault | cases tried | survived | data lost | what happens |", "|---|---|---|---|---|"]
    out += [f"| {fault} | {r['tried']} | {r['survived']} | {r['lost']} | {r['what']} |"
            for fault, r in rows.items()]
    total = {k: sum(r[k] for r in rows.values()) for k in ("tried", "survived", "lost")}
    out.append(f"| **all** | **{total['tried']}** | **{total['survived']}** | "
               f"**{total['lost']}** | |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print(__doc__.strip(), file=sys.stderr)
        return 2
    lines = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    print(table(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
