"""zoo.environment: the machine a figure was taken on is named closely enough to compare figures."""

from __future__ import annotations

from zoo.environment import environment, features_from_cpuinfo

# The first lines of /proc/cpuinfo on the two kinds of machine our figures come from, and on an Arm one.
EPYC_AVX512 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu vme sse sse2 avx2 fma avx512f avx512dq avx512_bf16 avx512vl avx512_vnni avx512_bitalg

processor\t: 1
flags\t\t: fpu
"""
EPYC_AVX2 = """processor\t: 0
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
stepping\t: 0
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes sha1 asimddp sve i8mm
CPU implementer\t: 0x41
"""


def test_two_epycs_of_one_name_are_told_apart_by_their_simd_extensions() -> None:
    wide, narrow = features_from_cpuinfo(EPYC_AVX512), features_from_cpuinfo(EPYC_AVX2)
    assert wide == "family 25 model 17 stepping 1; AVX-512, AVX-512 VNNI, AVX-512 BF16, AVX2, FMA"
    assert narrow == "family 23 model 49 stepping 0; AVX2, FMA"


def test_arm_features_and_an_empty_cpuinfo() -> None:
    assert features_from_cpuinfo(ARM) == "SVE, I8MM, NEON dot product, NEON"
    assert features_from_cpuinfo("") == ""


def test_the_environment_block_carries_the_features() -> None:
    env = environment(threads=2, seed=0)
    assert env["cpu"] and isinstance(env["cpu_features"], str)
    assert env["threads_for"] == "timing"  # bench's threads time; compress's train and evaluate, and says so
    with open("/proc/cpuinfo") as f:
        assert env["cpu_features"] == features_from_cpuinfo(f.read())
