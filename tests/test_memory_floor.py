"""benchmarks/memory_floor.py at the tiny configuration: the resident memory at each stage and
the sizes of what must stay (decoder parameters, optimizer state) for our L-MAC step."""

import json
from pathlib import Path

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
memory_floor = load_script("_memory_floor", ROOT / "benchmarks" / "memory_floor.py")


def test_tiny_step_reports_the_resident_parts(tmp_path):
    out = tmp_path / "floor.json"
    overrides = '{"optimizer_in_backward": true, "max_grad_norm": 0}'
    report = memory_floor.main(
        [str(out), "--config", "tiny", "--seconds", "1", "--ours_overrides", overrides]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    resident = report["resident_gib"]
    assert list(resident) == [
        "python",
        "torch imported",
        "models built",
        "after step 1",
        "after step 2",
        "peak",
    ]
    assert all(value > 0 for value in resident.values())
    assert resident["peak"] >= max(v for k, v in resident.items() if k != "peak") - 1e-3
    sizes = report["sizes_gib"]
    # Adam keeps two moments per decoder parameter; the hooks freed every gradient
    assert abs(sizes["optimizer state"] - 2 * sizes["decoder parameters"]) < 1e-9
    assert sizes["decoder parameters"] > 0 and sizes["classifier parameters and buffers"] > 0
    assert sizes["gradients alive"] == 0
