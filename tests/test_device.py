from pathlib import Path

from soundflow.device import ISA_FLAGS, cpu_description


def test_cpu_description_names_the_isa_benchmarks_depend_on():
    d = cpu_description()
    assert set(d) == {"model", "torch_capability", "isa"}
    assert set(d["isa"]) <= set(ISA_FLAGS)
    assert d["torch_capability"]  # torch always reports a dispatch level ("DEFAULT" at least)
    info = Path("/proc/cpuinfo")
    if info.exists():  # every listed flag is one the kernel reports, and none it reports is missed
        flags = set(next(ln for ln in info.read_text().splitlines() if ln.startswith("flags")).split(":")[1].split())
        assert set(d["isa"]) == flags & set(ISA_FLAGS)
        assert d["model"] != "unknown"
