#!/usr/bin/python3
"""Prints the tests that failed in a CTest run, each with its failed assertions and last lines.

Usage: ctest_failures.py JUNIT_XML [LINES]      (LINES: output lines per test, default 30)
       ctest_failures.py --self-test
JUNIT_XML is from `ctest --output-junit`. scripts/test.sh calls it once per failed pass at the very
end of the run, so the names of the failing tests and their last words are in the tail of a CI log
(CI shows only the tail; ctest's --output-on-failure prints them mid-run, minutes earlier). The
GoogleTest assertions that failed ("file:line: Failure" and the lines after it) come first: a test
may print a long log after its assertion, and the last lines alone would not show what failed.
Exit 0 always when the XML is readable (printing is the whole job); 2 when it is not.
"""
import os
import sys
import tempfile
import xml.etree.ElementTree as ET


def failures(junit_path):
    """Returns [(name, seconds, output lines)] of the testcases that failed, in file order."""
    root = ET.parse(junit_path).getroot()
    out = []
    for case in root.iter("testcase"):
        if case.get("status") != "fail" and case.find("failure") is None:
            continue
        text = case.findtext("system-out") or ""
        failure = case.find("failure")
        if failure is not None and failure.get("message"):
            text += "\n" + failure.get("message")
        out.append((case.get("name", "?"), case.get("time", "?"), text.rstrip().splitlines()))
    return out


ASSERTIONS = 5        # failed assertions shown per test
ASSERTION_LINES = 4   # lines shown after each "file:line: Failure"
WIDTH = 400           # characters per line shown


def assertions(text):
    """The first ASSERTIONS GoogleTest failures in `text`, each as its lines."""
    out = []
    for i, line in enumerate(text):
        if line.endswith(": Failure") and len(out) < ASSERTIONS:
            out.append(text[i:i + 1 + ASSERTION_LINES])
    return out


def report(junit_path, lines, out=sys.stdout):
    found = failures(junit_path)
    print(f"ctest_failures: {len(found)} failed in {junit_path}", file=out)
    for name, seconds, text in found:
        print(f"--- FAILED {name} ({seconds} s)", file=out)
        for block in assertions(text):
            print("  assertion:", file=out)
            for line in block:
                print(f"    {line[:WIDTH]}", file=out)
        print(f"  its last {min(lines, len(text))} lines:", file=out)
        for line in text[-lines:]:
            print(f"    {line[:WIDTH]}", file=out)
    return found


def self_test():
    xml = """<?xml version="1.0"?>
    <testsuite tests="3" failures="1">
      <testcase name="A.Passes" status="run" time="0.1"><system-out>fine</system-out></testcase>
      <testcase name="B.Fails" status="fail" time="2.5">
        <system-out>line 1
../tests/b_test.cc:12: Failure
Expected: (x) >= (0), actual: -1 vs 0
line 2
Expected equality of these values</system-out>
        <failure message="Failed"/>
      </testcase>
      <testcase name="C.Skips" status="notrun"><skipped message="SKIP_RETURN_CODE=77"/></testcase>
    </testsuite>"""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "j.xml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(xml)
        with open(os.devnull, "w", encoding="utf-8") as sink:
            found = report(path, 2, sink)
    names = [name for name, _, _ in found]
    if names != ["B.Fails"] or found[0][2][-2:] != ["Expected equality of these values", "Failed"]:
        print(f"ctest_failures self-test: FAILED, got {found}")
        return 1
    shown = assertions(found[0][2])
    if len(shown) != 1 or shown[0][:2] != ["../tests/b_test.cc:12: Failure",
                                            "Expected: (x) >= (0), actual: -1 vs 0"]:
        print(f"ctest_failures self-test: FAILED, assertions {shown}")
        return 1
    print("ctest_failures self-test: passed")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) not in (2, 3) or (len(argv) == 3 and not argv[2].isdigit()):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        report(argv[1], int(argv[2]) if len(argv) == 3 else 30)
    except (OSError, ET.ParseError) as e:
        print(f"ctest_failures: cannot read {argv[1]}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
