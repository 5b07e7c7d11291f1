"""The README's demo (`scripts/dev demo`).

Today it walks through what a new mesh starts with: an offline CA, five node certificates, and
`meshctl cert show`, including a tampered certificate being refused. It grows with the project
into a five-node mesh in network namespaces.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from meshd import keyfiles

NODES = ["alpha", "bravo", "charlie", "delta", "echo"]


def meshctl(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ meshctl {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "meshd.cli", *args], cwd=cwd, text=True, capture_output=True
    )
    print(result.stdout + result.stderr, end="", flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: meshctl {args[0]} failed (exit {result.returncode})")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev demo", description=__doc__)
    parser.add_argument("--keep", metavar="DIR", help="keep the CA and certificates in DIR")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshd-demo-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        meshctl(work, "ca", "init", "--mesh", "demo")
        for i, name in enumerate(NODES):
            extra = ["--ipv4", "auto", "--ipv4-pool", "100.100.0.0/24"] if i % 2 == 0 else []
            meshctl(work, "cert", "issue", "--name", name, *extra)
        meshctl(work, "cert", "show", f"nodes/{NODES[0]}/node.cert", "--ca", "ca/ca.pub")
        # An attacker edits a certificate to claim another name: the CA signature breaks.
        path = work / "nodes" / NODES[1] / "node.cert"
        raw = bytearray(keyfiles.read_armored(path, keyfiles.CERT_LABEL))
        i = raw.index(NODES[1].encode())
        raw[i : i + 5] = b"mallo"
        forged = work / "forged.cert"
        forged.write_bytes(keyfiles.armor(keyfiles.CERT_LABEL, bytes(raw)))
        result = meshctl(work, "cert", "show", "forged.cert", check=False)
        if result.returncode == 0:
            raise SystemExit("demo: a tampered certificate was accepted")
        print("demo: the tampered certificate was refused, as it must be")
        if args.keep:
            print(f"demo: CA and certificates kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
