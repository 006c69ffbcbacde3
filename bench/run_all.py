"""`make bench`: run every bench/<topic>.py with --json and print one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import emit  # noqa: E402

HERE = Path(__file__).parent
SKIP = {"common.py", "run_all.py"}


def main() -> int:
    rows, failed = [], []
    for script in sorted(p for p in HERE.glob("*.py") if p.name not in SKIP):
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(script), "--json"], capture_output=True, text=True)
        if proc.returncode:
            failed.append(script.name)
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rows.append({**json.loads(line), "name": f"{script.stem}: {json.loads(line)['name']}"})
    emit(rows, as_json="--json" in sys.argv)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
