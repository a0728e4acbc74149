"""A worker's footprint as the pool measures it (PSS), made independent of other processes that map the
same model file: the estimate's test and benchmark compare against it."""

from __future__ import annotations

from pathlib import Path


def footprint_alone(pid: int, model: Path) -> int:
    """The worker's PSS as if no other process mapped the model file. PSS is what the pool measures, but a
    run beside another one (another test run, a warren serving the same installed model) would see the
    file's pages split between them: those pages are counted whole here."""
    pss = unshared = 0
    in_model = False
    target = model.resolve()
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if not line[0].isupper():  # a mapping's header: address range, perms, offset, dev, inode, path
                in_model = len(fields) >= 6 and Path(fields[5]) == target
            elif fields[0] == "Pss:":
                pss += int(fields[1]) * 1024
                unshared -= int(fields[1]) * 1024 if in_model else 0
            elif fields[0] == "Rss:" and in_model:
                unshared += int(fields[1]) * 1024
    return pss + unshared
