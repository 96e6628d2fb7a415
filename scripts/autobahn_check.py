#!/usr/bin/env python3
"""Gate on an Autobahn fuzzingclient report (`reports/index.json` and the per-case files
beside it), sections 1-7, 12 and 13 (the subset scripts/autobahn.sh runs).

Fails (exit 1) when a case there
- is not OK, NON-STRICT or INFORMATIONAL, for its data behaviour or its close behaviour;
- did not end with a clean closing handshake (`wasClean`), or
- expected Herald to fail the connection but got no close frame with one of the expected
  codes (Autobahn accepts a bare TCP close there; Herald promises a close frame on every
  path, RFC 6455 §7.1.7, see docs/protocol.md).

Prints the count of each outcome and every non-OK case. With `--markdown FILE`, also writes
the case table kept in docs/autobahn.md (one row per group of cases with the same outcome).
"""

import collections
import json
import os
import sys

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}


# Sections 1-7 (framing, UTF-8, closing) and the permessage-deflate subset of 12 and 13.
SECTIONS = (1, 2, 3, 4, 5, 6, 7, 12, 13)


def key(case):
    return tuple(int(p) for p in case.split("."))


def main(argv):
    path = argv[1]
    markdown = argv[argv.index("--markdown") + 1] if "--markdown" in argv else None
    with open(path) as f:
        report = json.load(f)
    reports = os.path.dirname(path)
    problems = []
    counts = collections.Counter()
    rows = []
    for agent, cases in report.items():
        for case in sorted(cases, key=key):
            if key(case)[0] not in SECTIONS:
                continue
            r = cases[case]
            with open(os.path.join(reports, r["reportfile"])) as f:
                detail = json.load(f)
            counts[r["behavior"]] += 1
            code = r.get("remoteCloseCode")
            for field in ("behavior", "behaviorClose"):
                if r[field] not in ACCEPTED:
                    problems.append(f"{case}: {field} = {r[field]} (close code {code})")
            if not detail["wasClean"]:
                problems.append(f"{case}: unclean close ({detail['wasNotCleanReason']})")
            expected = detail["expectedClose"]
            if not expected["closedByMe"] and code not in expected["closeCode"]:
                problems.append(f"{case}: expected a close frame with {expected['closeCode']}, "
                                f"got {code}")
            if r["behavior"] != "OK" or r["behaviorClose"] != "OK":
                print(f"{case}: {r['behavior']} (close: {r['behaviorClose']}, code {code})")
            rows.append((case, r["behavior"], r["behaviorClose"], code))
    total = sum(counts.values())
    print("Autobahn sections 1-7, 12, 13:", total, "cases,",
          ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
    if markdown:
        write_markdown(markdown, rows)
    if total == 0:
        print("FAILED: no cases in the report")
        return 1
    for p in problems:
        print("FAILED", p)
    return 1 if problems else 0


def write_markdown(path, rows):
    """Consecutive cases of the same subsection and outcome become one row."""
    groups = []
    for case, behavior, close, code in rows:
        parts = case.split(".")
        section = ".".join(parts[:2]) if len(parts) == 3 else parts[0]
        outcome = (section, behavior, close, code)
        if groups and groups[-1][0] == outcome:
            groups[-1][2] = case
        else:
            groups.append([outcome, case, case])
    with open(path, "w") as f:
        f.write("| cases | behaviour | close behaviour | close code from Herald |\n")
        f.write("| --- | --- | --- | --- |\n")
        for (_, behavior, close, code), first, last in groups:
            span = first if first == last else f"{first} – {last}"
            f.write(f"| {span} | {behavior} | {close} | {code if code is not None else '(empty close frame)'} |\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
