"""worker.cpu: CPU flags from /proc/cpuinfo, native bf16, usable CPUs, thread settings."""

from __future__ import annotations

import os

import pytest

from worker import cpu


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu.cpu_flags(str(cpuinfo)) >= {"avx512_bf16", "avx512_vnni"}
    assert cpu.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("flags,native", [({"avx512_bf16"}, True), ({"amx_bf16", "avx2"}, True),
                                          ({"avx512f", "avx512_vnni", "avx2"}, False), (set(), False)])
def test_bf16_is_native_only_with_avx512_bf16_or_amx(flags, native):
    assert cpu.bf16_supported(flags) is native


def test_usable_cpus_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert cpu.usable_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert cpu.usable_cpus() == 5


def test_set_threads(monkeypatch):
    import torch

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    before = torch.get_num_threads()
    try:
        cpu.set_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
        cpu.set_threads(2)  # again in the same process: the inter-op setting is kept, no error
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("flags,klass,vnni", [
    ({"avx", "avx2", "fma"}, "avx2", False),
    ({"avx2", "avx512f", "avx512bw"}, "avx512", False),
    ({"avx2", "avx512f", "avx512_vnni"}, "avx512-vnni", True),
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "avx512-bf16", True),
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}, "amx", True),
    ({"avx2", "avx_vnni"}, "avx2", True),
    ({"sse4_2"}, "baseline", False),
])
def test_cpu_class_and_vnni(flags, klass, vnni):
    assert cpu.cpu_class(flags) == klass
    assert cpu.vnni_supported(flags) is vnni


def test_isa_tag_changes_with_the_instruction_sets_only():
    tag = cpu.isa_tag({"avx2", "fma", "sse4_2"})
    assert tag == cpu.isa_tag({"avx2", "fma", "aes"}) and tag.startswith("avx2-")
    assert tag != cpu.isa_tag({"avx2", "fma", "avx_vnni"})
