#!/usr/bin/env python3
"""lukspack against its peers, side by side, in one run: prints a table of medians and ratios.

Inputs (built once in the work directory): a 1 GiB dynamic VHD that is half random data and half
unallocated (2 MiB blocks alternating), the same disk as RAW and as VMDK, a 2 GiB VHD made the
same way (the 2 GiB run minus the 1 GiB run is the CPU cost per GiB, with start-up, calibration
and key derivation cancelled out), and a 16 GiB sparse dynamic VHD. Runs alternate between tools,
round after round; the table gives medians. Every tool reads its input from the page cache (run
once before timing); outputs are deleted and `sync`ed between runs.

    .venv/bin/python bench/bench.py [--rounds 3] [--work DIR] [--quick] [--sections LIST]

Sections (--sections, comma-separated, default all): main (the 1 GiB rows, kernel, targets),
sparse (40 GiB sparse sources), startup, cloud (object storage upload), remote (a remote source
against a local file: bench/remote_bench.py). `--sections remote` builds only the VMDK it reads.

Targets (issue 3) are checked at the end and printed as PASS/FAIL lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
GiB = 1 << 30
LUKSPACK = [sys.executable, "-m", "lukspack"]


@dataclass
class Sample:
    wall: float
    cpu: float
    maxrss_mib: float
    extra: dict = field(default_factory=dict)


def run(cmd: list[str], *, env: dict | None = None, stdout: bool = False) -> Sample:
    """Run cmd, return wall seconds, user+sys CPU seconds and peak RSS of the whole process.

    qemu-img's PBKDF2 calibration sometimes gives up on a busy machine ("Unable to get accurate
    CPU usage"); such a run is repeated, up to three times.
    """
    for _attempt in range(3):
        try:
            return _run_once(cmd, env=env, stdout=stdout)
        except _Retry:
            continue
    raise SystemExit(f"{cmd} kept failing")


class _Retry(Exception):
    pass


def _run_once(cmd: list[str], *, env: dict | None, stdout: bool) -> Sample:
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    out = p.stdout.read() if p.stdout else b""
    err = p.stderr.read() if p.stderr else b""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0 and b"accurate CPU usage" in err:
        raise _Retry
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed ({p.returncode}): {err.decode()[-2000:]}")
    extra = json.loads(out) if stdout and out.strip().startswith(b"{") else {}
    return Sample(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, extra)


def sync() -> None:
    os.sync()


def build_inputs(work: Path, key: Path, quick: bool, vmdk_only: bool = False) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    if not key.exists():
        subprocess.run([*LUKSPACK, "keygen", str(key)], check=True, env=ENV)
    raw = work / "half.raw"
    if not raw.exists():
        _half_data_raw(raw, GiB)
    vmdk = work / "half.vmdk"
    if not vmdk.exists():
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)],
                       check=True)
    if vmdk_only:
        subprocess.run(["cat", str(vmdk)], stdout=subprocess.DEVNULL, check=True)
        return {"raw": raw, "vmdk": vmdk}
    vhd = work / "half.vhd"
    if not vhd.exists():
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on",
                        str(raw), str(vhd)], check=True)
    vhd2 = work / "half2g.vhd"  # twice the disk: the difference is the cost per GiB of data path
    if not vhd2.exists():
        raw2 = work / "half2g.raw"
        _half_data_raw(raw2, 2 * GiB)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on",
                        str(raw2), str(vhd2)], check=True)
        raw2.unlink()
    paths = {"raw": raw, "vhd": vhd, "vhd2": vhd2, "vmdk": vmdk}
    if not quick:
        big_raw = work / "sparse16g.raw"
        big = work / "sparse16g.vhd"
        if not big.exists():
            with open(big_raw, "wb") as f:
                f.truncate(16 * GiB)
                for off in range(0, 16 * GiB, GiB):  # 16 MiB of data per GiB
                    f.seek(off)
                    f.write(os.urandom(16 * MiB))
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
                            "force_size=on", str(big_raw), str(big)], check=True)
            big_raw.unlink()
        paths["big"] = big
    for p in paths.values():  # warm the page cache so every tool reads from memory
        subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)
    return paths


def _half_data_raw(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for block in range(0, size, 4 * MiB):  # 2 MiB random, 2 MiB hole
            f.seek(block)
            f.write(os.urandom(2 * MiB))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    ap.add_argument("--quick", action="store_true", help="skip the 16 and 40 GiB sparse runs")
    ap.add_argument("--no-cloud", action="store_true", help="skip the object-storage rows")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run, of {','.join(SECTIONS)} [all]")
    args = ap.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections or sections - set(SECTIONS):
        ap.error(f"--sections takes some of {','.join(SECTIONS)}")
    if args.no_cloud:
        sections.discard("cloud")
    work: Path = args.work
    key = work / "dek.key"
    work.mkdir(parents=True, exist_ok=True)
    inputs = build_inputs(work, key, args.quick, vmdk_only=sections <= {"remote", "startup"})
    if "main" in sections:
        main_rows(args, work, key, inputs)
    if "sparse" in sections and not args.quick:
        sparse_rows(work, key, args.rounds)
    if "startup" in sections:
        startup_rows()
    if "cloud" in sections:
        cloud_rows(work, key, inputs["vhd"])
    if "remote" in sections:
        remote_rows(work, key, inputs["vmdk"], args.rounds)


def main_rows(args: argparse.Namespace, work: Path, key: Path, inputs: dict[str, Path]) -> None:
    out = work / "out.img"
    secret = f"secret,id=s0,file={key}"

    def lk(*extra: str, src: str = "vhd", dest: Path = out) -> list[str]:
        # no --json in timed runs: it adds a SHA-256 of the whole output (a second read)
        return [*LUKSPACK, "encrypt", str(inputs[src]), str(dest), "--key-file", str(key),
                "--force", "--no-progress", *extra]

    qout = work / "out.qcow2"
    vout = work / "out.vhd"  # the encrypted VHD (IBM Cloud classic), with a 64-byte key
    vkey = work / "vhd.dek"
    if not vkey.exists():
        subprocess.run([*LUKSPACK, "keygen", str(vkey), "--for", "vhd"], check=True, env=ENV)

    def lk_vhd(*extra: str) -> list[str]:
        return [*LUKSPACK, "encrypt", str(inputs["vhd"]), str(vout), "--key-file", str(vkey),
                "--force", "--no-progress", *extra]

    def qemu_qcow2(src: str) -> list[str]:
        return ["qemu-img", "convert", "-O", "qcow2", "--object", secret, "-o",
                "encrypt.format=luks,encrypt.key-secret=s0", str(inputs[src]), str(qout)]

    cases: dict[str, list[str]] = {
        "lukspack encrypt (defaults: verify, fsync)": lk(),
        "lukspack encrypt --no-verify": lk("--no-verify"),
        "lukspack encrypt --no-verify --iter-time 10": lk("--no-verify", "--iter-time", "10"),
        "qemu-img convert -O luks": ["qemu-img", "convert", "-f", "vpc", "-O", "luks",
                                     "--object", secret, "-o", "key-secret=s0",
                                     str(inputs["vhd"]), str(out)],
        "qemu-img convert -O luks (iter-time=10)": [
            "qemu-img", "convert", "-f", "vpc", "-O", "luks", "--object", secret,
            "-o", "key-secret=s0,iter-time=10", str(inputs["vhd"]), str(out)],
        "qemu-img convert -O luks + sync": ["sh", "-c", " ".join([
            "qemu-img", "convert", "-f", "vpc", "-O", "luks", "--object", secret,
            "-o", "key-secret=s0", str(inputs["vhd"]), str(out), "&& sync"])],
        "cryptsetup reencrypt --encrypt (LUKS2, in place)": ["sh", "-c", " ".join([
            "cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size",
            "32M", "--batch-mode", "--key-file", str(key), str(out)])],
        "lukspack encrypt -> qcow2+LUKS (defaults)": lk(dest=qout),
        "lukspack encrypt -> qcow2+LUKS --no-verify": lk("--no-verify", dest=qout),
        "qemu-img convert -O qcow2 -o encrypt.format=luks": qemu_qcow2("vhd"),
        "lukspack encrypt -> encrypted VHD (defaults)": lk_vhd(),
        "lukspack encrypt -> encrypted VHD --no-verify": lk_vhd("--no-verify"),
        "lukspack encrypt VMDK input --no-verify": lk("--no-verify", src="vmdk"),
        "qemu-img convert -O luks, VMDK input": [
            "qemu-img", "convert", "-O", "luks", "--object", secret, "-o", "key-secret=s0",
            str(inputs["vmdk"]), str(out)],
        "2 GiB: lukspack encrypt --no-verify": lk("--no-verify", src="vhd2"),
        "2 GiB: qemu-img convert -O luks": ["qemu-img", "convert", "-f", "vpc", "-O", "luks",
                                            "--object", secret, "-o", "key-secret=s0",
                                            str(inputs["vhd2"]), str(out)],
        "dd bs=4M conv=fdatasync (durable copy)": ["dd", f"if={inputs['raw']}", f"of={out}",
                                                   "bs=4M", "conv=fdatasync", "status=none"],
        "dd bs=4M (page-cache copy)": ["dd", f"if={inputs['raw']}", f"of={out}", "bs=4M",
                                       "status=none"],
    }
    results: dict[str, list[Sample]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, cmd in cases.items():
            for old in (out, qout, vout):
                if old.exists():
                    old.unlink()
            if name.startswith("cryptsetup"):  # in place: start from a copy of the RAW disk
                shutil.copyfile(inputs["raw"], out)
            sync()
            results[name].append(run(cmd, env=ENV, stdout=name.startswith("lukspack")))
            print(f"round {r + 1}: {name}: {results[name][-1].wall:.2f} s", file=sys.stderr)
    for old in (out, qout, vout):
        if old.exists():
            old.unlink()
    # untimed for the table: the summaries say how much of each source was read
    read_1g = run(lk("--no-verify", "--json"), env=ENV, stdout=True)
    out.unlink()
    big = None
    if "big" in inputs:
        big = run(lk("--no-verify", "--json", src="big"), env=ENV, stdout=True)
        out.unlink()
    kernel = json.loads(subprocess.run([*LUKSPACK, "benchmark", "--json"], capture_output=True,
                                       check=True, env=ENV).stdout)
    report(results, big, kernel, inputs, read_1g)


def sparse_rows(work: Path, key: Path, rounds: int) -> None:
    """Issue 10: a 42949017600-byte sparse RAW with 22 MiB of data and a 40 GiB dynamic VHD with
    a few MiB allocated, to qcow2+LUKS, lukspack beside qemu-img (wall, CPU, bytes read)."""
    raw = work / "sparse40g.raw"
    if not raw.exists():
        with open(raw, "wb") as f:
            f.truncate(42949017600)
            for i, off in enumerate((0, 10 * GiB, 39 * GiB)):  # 22 MiB of data in all
                f.seek(off)
                f.write(os.urandom((8 if i < 2 else 6) * MiB))
    vhd = work / "sparse40g.vhd"
    if not vhd.exists():
        small = work / "sparse40g-src.raw"
        with open(small, "wb") as f:
            f.truncate(40 * GiB)
            for off in (0, 20 * GiB):
                f.seek(off)
                f.write(os.urandom(2 * MiB))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
                        "subformat=dynamic", str(small), str(vhd)], check=True)
        small.unlink()
    q = work / "sparse.qcow2"
    secret = f"secret,id=s0,file={key}"
    print("\n| 40 GiB sparse source -> qcow2+LUKS | wall s | CPU s | source bytes read |")
    print("|---|---:|---:|---:|")
    for name, src, fmt in (("42949017600-byte RAW, 22 MiB data", raw, "raw"),
                           ("40 GiB dynamic VHD, 4 MiB data", vhd, "vpc")):
        cases = {
            "lukspack encrypt (defaults)": [*LUKSPACK, "encrypt", str(src), str(q), "--key-file",
                                            str(key), "--force", "--no-progress"],
            "lukspack --no-verify --iter-time 10": [
                *LUKSPACK, "encrypt", str(src), str(q), "--key-file", str(key), "--force",
                "--no-progress", "--no-verify", "--iter-time", "10"],
            "qemu-img convert (defaults)": [
                "qemu-img", "convert", "-f", fmt, "-O", "qcow2", "--object", secret, "-o",
                "encrypt.format=luks,encrypt.key-secret=s0", str(src), str(q)],
            "qemu-img convert (iter-time=10)": [
                "qemu-img", "convert", "-f", fmt, "-O", "qcow2", "--object", secret, "-o",
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(src),
                str(q)],
        }
        got: dict[str, list[Sample]] = {k: [] for k in cases}
        for _ in range(rounds):
            for k, cmd in cases.items():
                if q.exists():
                    q.unlink()
                got[k].append(run(cmd, env=ENV))
        if q.exists():
            q.unlink()
        read = run([*cases["lukspack --no-verify --iter-time 10"], "--json", "--no-digest"],
                   env=ENV, stdout=True).extra.get("source_bytes_read", 0)
        q.unlink()
        for k, s in got.items():
            shown = f"{read / MiB:.1f} MiB" if k.startswith("lukspack") else "(SEEK_DATA: data)"
            print(f"| {name}: {k} | {med(s, 'wall'):.2f} | {med(s, 'cpu'):.2f} | {shown} |")


def startup_rows() -> None:
    """`lukspack --version` and `--help`, median of 10 runs each (target: under 100 ms)."""
    for args in (["--version"], ["--help"]):
        walls = [run([*LUKSPACK, *args], env=ENV).wall for _ in range(10)]
        print(f"start-up: lukspack {args[0]}: {statistics.median(walls) * 1000:.0f} ms "
              f"(median of 10; python -m lukspack)")


def cloud_rows(work: Path, key: Path, source: Path) -> None:
    """Issue 12: upload against a single-stream PUT, and a streamed encrypt against
    encrypt-to-file then upload, against one local SeaweedFS server (bench/cloud_bench.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from cloud_bench import bench_upload

    rows = bench_upload(work / "cloud", size_mib=256, rounds=1, stream_source=source,
                        key_file=key)
    print("\n| object storage (local SeaweedFS, 256 MiB) | wall s | peak RSS MiB |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['wall_s']:.2f} | {r['maxrss_mib']:.0f} |")


def remote_rows(work: Path, key: Path, vmdk: Path, rounds: int) -> None:
    """Issue 19: the 1 GiB VMDK read from http://127.0.0.1 and cos:// against the local file,
    beside download-then-encrypt and qemu-img's curl driver (bench/remote_bench.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from remote_bench import bench_remote, print_rows

    print_rows(bench_remote(work / "remote", key, vmdk, rounds), vmdk, rounds)


def med(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def report(results: dict[str, list[Sample]], big: Sample | None, kernel: dict,
           inputs: dict[str, Path], read_1g: Sample) -> None:
    ref = results["dd bs=4M conv=fdatasync (durable copy)"]
    print(f"\nlukspack bench, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, {_cpu_model()}, Python {platform.python_version()}, "
          f"{len(ref)} rounds (medians)\n")
    print("| run (1 GiB dynamic VHD, half data) | wall s | CPU s | peak RSS MiB | wall vs dd fdatasync |")
    print("|---|---:|---:|---:|---:|")
    for name, s in results.items():
        print(f"| {name} | {med(s, 'wall'):.2f} | {med(s, 'cpu'):.2f} | "
              f"{med(s, 'maxrss_mib'):.0f} | {med(s, 'wall') / med(ref, 'wall'):.2f}x |")
    lk_default = results["lukspack encrypt (defaults: verify, fsync)"]
    lk_nov = results["lukspack encrypt --no-verify"]
    lk_fast = results["lukspack encrypt --no-verify --iter-time 10"]
    q = results["qemu-img convert -O luks"]
    q_fast = results["qemu-img convert -O luks (iter-time=10)"]
    q_sync = results["qemu-img convert -O luks + sync"]
    read_bytes = read_1g.extra.get("source_bytes_read", 0)
    print()
    if big is not None:
        print(f"16 GiB sparse dynamic VHD (256 MiB of data), `encrypt --no-verify`: "
              f"{big.wall:.1f} s, peak RSS {big.maxrss_mib:.0f} MiB, source bytes read "
              f"{big.extra.get('source_bytes_read', 0) / MiB:.1f} MiB of "
              f"{inputs['big'].stat().st_size / MiB:.0f} MiB file")
    print(f"1 GiB half-allocated VHD: source bytes read {read_bytes / MiB:.1f} MiB "
          f"(file {inputs['vhd'].stat().st_size / MiB:.0f} MiB, disk 1024 MiB)")
    lq = results["lukspack encrypt -> qcow2+LUKS --no-verify"]
    qq = results["qemu-img convert -O qcow2 -o encrypt.format=luks"]
    lv = results["lukspack encrypt VMDK input --no-verify"]
    qv = results["qemu-img convert -O luks, VMDK input"]
    print(f"qcow2+LUKS output: qemu-img CPU / lukspack --no-verify CPU = "
          f"{med(qq, 'cpu') / med(lq, 'cpu'):.1f}x; VMDK input: "
          f"{med(qv, 'cpu') / med(lv, 'cpu'):.1f}x (defaults on both)")
    lk_per_gib = med(results["2 GiB: lukspack encrypt --no-verify"], "cpu") - med(lk_nov, "cpu")
    q_per_gib = med(results["2 GiB: qemu-img convert -O luks"], "cpu") - med(q, "cpu")
    print(f"CPU per extra GiB of disk (2 GiB run minus 1 GiB run, fixed costs cancel): "
          f"qemu-img {q_per_gib:.2f} s, lukspack --no-verify {lk_per_gib:.2f} s "
          f"({q_per_gib / lk_per_gib:.1f}x)")
    print("\nAES-XTS kernel alone (lukspack benchmark), MiB/s:")
    for c in kernel["ciphers"]:
        n = kernel["threads"]
        print(f"  {c['key_bits']}-bit key, {c['sector_size']}-byte sectors: encrypt "
              f"{c['encrypt_mib_s_1t']:.0f} (1 thread) / {c.get(f'encrypt_mib_s_{n}t', 0):.0f} "
              f"({n} threads), decrypt {c['decrypt_mib_s_1t']:.0f} / "
              f"{c.get(f'decrypt_mib_s_{n}t', 0):.0f}")
    k512 = next(c for c in kernel["ciphers"] if c["key_bits"] == 512 and c["sector_size"] == 512)
    n = kernel["threads"]
    checks = [
        ("qemu-img CPU >= 8x lukspack --no-verify CPU (defaults on both)",
         med(q, "cpu") / med(lk_nov, "cpu"), 8.0, True),
        ("qemu-img CPU >= 8x lukspack --no-verify CPU (iter-time 10 ms on both: data path)",
         med(q_fast, "cpu") / med(lk_fast, "cpu"), 8.0, True),
        ("qemu-img CPU >= 8x lukspack --no-verify CPU per extra GiB (data path only)",
         q_per_gib / lk_per_gib, 8.0, True),
        ("lukspack defaults wall <= 1.3x dd conv=fdatasync",
         med(lk_default, "wall") / med(ref, "wall"), 1.3, False),
        ("qemu-img -O luks + sync >= 1.5x lukspack defaults wall",
         med(q_sync, "wall") / med(lk_default, "wall"), 1.5, True),
        ("peak RSS <= 256 MiB (1 GiB)", med(lk_default, "maxrss_mib"), 256, False),
        ("XTS kernel >= 1000 MB/s per core, 512-bit key, 512-byte sectors (1 thread)",
         k512["encrypt_mib_s_1t"] * MiB / 1e6, 1000, True),
        (f"XTS kernel >= {n} x 1000 MB/s on {n} threads",
         k512.get(f"encrypt_mib_s_{n}t", 0) * MiB / 1e6, 1000 * n, True),
    ]
    if big is not None:
        checks.append(("peak RSS <= 256 MiB (16 GiB sparse)", big.maxrss_mib, 256, False))
    print("\nTargets:")
    for text, value, bound, at_least in checks:
        ok = value >= bound if at_least else value <= bound
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value:.2f}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


SECTIONS = ("main", "sparse", "startup", "cloud", "remote")
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))

if __name__ == "__main__":
    main()
