"""The TCP addresses a process and its children listen on (psutil comes with DVC)."""

import psutil


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    root = psutil.Process(pid)
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found
