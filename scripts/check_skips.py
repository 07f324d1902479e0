#!/usr/bin/python3
"""Fails when a CTest run skipped (or disabled) a test that tests/skip_allowlist.txt does not allow.

Usage: check_skips.py [--tests TESTS_JSON] JUNIT_XML [ALLOWLIST]
       check_skips.py --self-test
JUNIT_XML is from `ctest --output-junit`; TESTS_JSON from `ctest --show-only=json-v1` (the labels).

A skip passes CTest quietly (exit 77 of a script test, `[  SKIPPED ]` of a gtest), so a missing
tool or a broken precondition would shrink the suite without anyone noticing. Every skip must match
an allow-list entry: a regular expression matched against the whole test name (or `label:NAME`,
matching every test with that CTest label; needs --tests), then ` -- ` and the reason the skip is
legitimate in CI. Exit 0: no unexpected skip; 1: unexpected skips (listed with
their skip message and last output line); 2: bad input (unreadable XML, malformed allow-list).
"""
import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET

DEFAULT_ALLOWLIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                 "skip_allowlist.txt")


def load_allowlist(path):
    """Returns [(compiled regex, reason)]; raises ValueError naming the bad line."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            pattern, sep, reason = line.partition(" -- ")
            if not sep or not pattern.strip() or not reason.strip():
                raise ValueError(f"{path}:{number}: want 'REGEX -- reason', got {line!r}")
            pattern = pattern.strip()
            if pattern.startswith("label:"):
                entries.append((pattern, reason.strip()))
                continue
            try:
                entries.append((re.compile(pattern), reason.strip()))
            except re.error as e:
                raise ValueError(f"{path}:{number}: bad regex {pattern.strip()!r}: {e}") from e
    return entries


def skipped_tests(junit_path):
    """Returns [(name, why)] of the testcases that did not run (skipped or disabled)."""
    root = ET.parse(junit_path).getroot()
    out = []
    for case in root.iter("testcase"):
        status = case.get("status", "run")
        skipped = case.find("skipped")
        if status in ("run", "fail") and skipped is None:
            continue
        if status == "fail":
            continue  # a failure is already a failure
        why = skipped.get("message", "") if skipped is not None else status
        text = (case.findtext("system-out") or "").strip().splitlines()
        reasons = [l for l in text if "SKIP" in l.upper()]
        last = reasons[-1] if reasons else (text[-1] if text else "")
        out.append((case.get("name", "?"), f"{why}: {last.strip()}" if last else why))
    return out


def test_labels(tests_json_path):
    """Returns {test name: set of labels} from `ctest --show-only=json-v1` output."""
    if not tests_json_path:
        return {}
    with open(tests_json_path, encoding="utf-8") as f:
        tests = json.load(f).get("tests", [])
    labels = {}
    for t in tests:
        for prop in t.get("properties", []):
            if prop.get("name") == "LABELS":
                labels[t["name"]] = set(prop.get("value") or [])
    return labels


def is_allowed(name, entries, labels):
    for pattern, _ in entries:
        if isinstance(pattern, str):
            if pattern[len("label:"):] in labels.get(name, ()):
                return True
        elif pattern.fullmatch(name):
            return True
    return False


def check(junit_path, allowlist_path, tests_json_path=None, out=sys.stdout):
    entries = load_allowlist(allowlist_path)
    labels = test_labels(tests_json_path)
    skipped = skipped_tests(junit_path)
    unexpected = [(n, why) for n, why in skipped if not is_allowed(n, entries, labels)]
    allowed = len(skipped) - len(unexpected)
    print(f"check_skips: {len(skipped)} skipped in {os.path.basename(junit_path)}, {allowed} allowed "
          f"by {allowlist_path}", file=out)
    for name, why in unexpected:
        print(f"check_skips: UNEXPECTED SKIP {name} ({why})", file=out)
    if unexpected:
        print("check_skips: make these tests run (install what they need) or add them to the "
              "allow-list with a reason", file=out)
    return 1 if unexpected else 0


def self_test():
    junit = """<?xml version="1.0"?><testsuite tests="4">
      <testcase name="A.Runs" status="run"/>
      <testcase name="Isa/LinearTest.Matches/avx512bf16" status="notrun">
        <skipped message="SKIP_REGULAR_EXPRESSION_MATCHED"/>
        <system-out>[  SKIPPED ] CPU lacks avx512bf16</system-out></testcase>
      <testcase name="deploy_helm" status="notrun"><skipped message="SKIP_RETURN_CODE=77"/>
        <system-out>SKIP: tools could not be installed</system-out></testcase>
      <testcase name="B.Disabled" status="disabled"/>
      <testcase name="C.Fails" status="fail"/>
      <testcase name="G.NeedsDevice" status="notrun"><skipped message="SKIP_RETURN_CODE=77"/></testcase>
    </testsuite>"""
    with tempfile.TemporaryDirectory() as d:
        j, a, t = (os.path.join(d, n) for n in ("j.xml", "allow.txt", "tests.json"))
        with open(j, "w") as f:
            f.write(junit)
        with open(t, "w") as f:
            json.dump({"tests": [{"name": "G.NeedsDevice", "properties": [
                {"name": "LABELS", "value": ["gpu"]}]}, {"name": "deploy_helm", "properties": []}]}, f)
        with open(a, "w") as f:
            f.write("# comment\nIsa/LinearTest\\..*/avx512.* -- CPU without AVX-512\n"
                    "label:gpu -- no GPU\n")
        import io
        buf = io.StringIO()
        assert check(j, a, None, buf) == 1, buf.getvalue()
        assert "UNEXPECTED SKIP G.NeedsDevice" in buf.getvalue(), buf.getvalue()  # no labels known
        buf = io.StringIO()
        assert check(j, a, t, buf) == 1, buf.getvalue()
        text = buf.getvalue()
        assert "UNEXPECTED SKIP deploy_helm (SKIP_RETURN_CODE=77: SKIP: tools could not be installed)" in text, text
        assert "UNEXPECTED SKIP B.Disabled (disabled)" in text, text
        assert "UNEXPECTED SKIP Isa/" not in text, text
        assert "C.Fails" not in text and "A.Runs" not in text, text
        assert "G.NeedsDevice" not in text, text
        assert "4 skipped" in text and "2 allowed" in text, text
        with open(a, "a") as f:
            f.write("deploy_helm -- tools\nB\\.Disabled -- known\n")
        assert check(j, a, t, io.StringIO()) == 0
        with open(a, "a") as f:
            f.write("no_reason_here\n")
        try:
            load_allowlist(a)
            raise AssertionError("an entry without a reason was accepted")
        except ValueError as e:
            assert ":6: want 'REGEX -- reason'" in str(e), e
    print("check_skips self-test: ok")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    args = argv[1:]
    tests_json = None
    if len(args) >= 2 and args[0] == "--tests":
        tests_json, args = args[1], args[2:]
    if len(args) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return check(args[0], args[1] if len(args) == 2 else DEFAULT_ALLOWLIST, tests_json)
    except (OSError, ET.ParseError, ValueError, KeyError) as e:
        print(f"check_skips: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
