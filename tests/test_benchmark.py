"""The sync benchmark harness runs end to end (--quick) and reports correctly.

Timings are not asserted (they are what the harness measures, on a shared machine); the
correctness columns are: after a same-size edit with an older mtime, hashsync transfers every
edited file, aws s3 sync and s5cmd (size, and "local newer") transfer none, and rclone (size and
exact mtime, then MD5 against the ETag when only the mtime differs) transfers every one. Every
tool's uploads and downloads in the latency and big scenarios equal the source.

The --quick run covers every scenario group; without the delay proxy (no cargo to build it)
it runs without the latency group, and the cheap tests below cover the rest.
"""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from hashsync.testing import benchmark as bench
from hashsync.testing import find_rclone
from hashsync.testing.benchmark import main, write_report
from hashsync.testing.delay_proxy import DelayProxyError, _find_cargo, find_delay_proxy


def _delay_proxy_available() -> bool:
    try:
        find_delay_proxy(build=False)
    except DelayProxyError:
        return _find_cargo() is not None
    return True


@pytest.mark.s3
@pytest.mark.slow
def test_quick_benchmark(tmp_path, monkeypatch):
    latency = _delay_proxy_available()
    args = ["--quick", "--out", str(tmp_path), "--name", "q"]
    if not latency:
        args += ["--scenarios", "loopback,big"]  # cargo missing: the rest still runs
    assert main(args) == 0
    report = json.loads((tmp_path / "q.json").read_text())
    runs = report["runs"]
    assert {r["tool"] for r in runs} == set(bench.TOOLS)
    assert all(r["exit_code"] == 0 for r in runs), [r for r in runs if r["exit_code"]]
    same_size = {r["tool"]: r for r in runs if r["scenario"] == "edit-same-size"}
    for tool in ("hashsync", "rclone"):
        assert same_size[tool]["edited_transferred"] == same_size[tool]["edited_total"]
        assert same_size[tool]["remote_equals_local"] is True
    for tool in ("awscli", "s5cmd"):
        assert same_size[tool]["edited_transferred"] == 0
        assert same_size[tool]["remote_equals_local"] is False
    normal = {r["tool"]: r for r in runs if r["scenario"] == "edit"}
    assert all(r["remote_equals_local"] for r in normal.values())
    deleted = {r["tool"]: r for r in runs if r["scenario"] == "delete"}
    assert all(r["remote_equals_local"] for r in deleted.values()), deleted
    groups = [*bench.BIG_SCENARIOS, *(bench.LATENCY_SCENARIOS if latency else ())]
    for scenario in groups:
        assert {r["tool"] for r in runs if r["scenario"] == scenario} == set(bench.TOOLS)
    copies = [r for r in runs if r["scenario"] in groups and r["remote_equals_local"] is not None]
    assert len(copies) == len(bench.TOOLS) * (4 if latency else 2)
    assert all(r["remote_equals_local"] for r in copies), copies
    if latency:
        assert all(
            r["proxy_cpu_seconds"] is not None
            for r in runs
            if r["scenario"] in bench.LATENCY_SCENARIOS
        )
    else:
        assert not any(r["scenario"] in bench.LATENCY_SCENARIOS for r in runs)
    md = (tmp_path / "q.md").read_text()
    assert "| edit-same-size |" in md and "hashsync/s5cmd" in md and "hashsync/awscli" in md
    assert "| scenario | hashsync | awscli | s5cmd | rclone |" in md
    assert "rclone v" in md
    assert "| big-upload (2 x 32 MiB) |" in md
    if latency:
        assert "| latency-upload (20 ms RTT) |" in md and "proxy CPU" in md
    assert (tmp_path / "q.png").stat().st_size > 1000
    # The same results without matplotlib: written first, the chart skipped, nothing lost.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    r = report
    plain = tmp_path / "plain"
    assert not write_report(plain, "q", r["meta"], r["summary"], r["checks"], r["runs"], "t")
    assert (plain / "q.md").read_text() == md
    assert json.loads((plain / "q.json").read_text()) == report
    assert not (plain / "q.png").exists()


def test_chart_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    from hashsync.testing.benchmark import chart

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    summary = {"upload": {"hashsync": {"median": 1.0, "min": 1.0, "max": 1.0}}}
    assert chart(summary, tmp_path / "c.png", "t") is False
    assert not (tmp_path / "c.png").exists()


def test_rclone_command_is_copy_or_sync_on_the_env_remote():
    rclone = find_rclone()
    assert bench.command("rclone", "/data/src", "s3://bench/p", "http://ignored") == [
        rclone,
        "copy",
        "/data/src",
        "hsbench:bench/p",
    ]
    assert bench.command("rclone", "s3://bench/p", "/data/down", "http://ignored") == [
        rclone,
        "copy",
        "hsbench:bench/p",
        "/data/down",
    ]
    deleting = bench.command("rclone", "/data/src", "s3://bench/p", "http://x", delete=True)
    assert deleting[1] == "sync"
    # s5cmd is the one tool whose endpoint is on its command line.
    s5 = bench.command("s5cmd", "/data/src", "s3://bench/p", "http://127.0.0.1:9")
    assert s5[1:3] == ["--endpoint-url", "http://127.0.0.1:9"]
    with pytest.raises(ValueError, match="unknown tool"):
        bench.command("rsync", "/a", "/b", "http://x")


def test_rclone_environment_ignores_the_users_rclone_settings(tmp_path):
    inherited = {
        "PATH": "/usr/bin",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        # A user's own rclone settings must not reach the measured runs.
        "RCLONE_TRANSFERS": "64",
        "RCLONE_CONFIG": "/home/someone/.config/rclone/rclone.conf",
        "RCLONE_CONFIG_HSBENCH_CHUNK_SIZE": "64M",
    }
    config = tmp_path / "rclone.conf"
    env = bench.environment(inherited, "http://127.0.0.1:2", config)
    rclone = {k: v for k, v in env.items() if k.startswith("RCLONE_")}
    assert rclone == {
        "RCLONE_CONFIG": str(config),
        "RCLONE_CONFIG_HSBENCH_TYPE": "s3",
        "RCLONE_CONFIG_HSBENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_HSBENCH_ACCESS_KEY_ID": "key",
        "RCLONE_CONFIG_HSBENCH_SECRET_ACCESS_KEY": "secret",
        "RCLONE_CONFIG_HSBENCH_REGION": "us-east-1",
        "RCLONE_CONFIG_HSBENCH_ENDPOINT": "http://127.0.0.1:2",
    }
    assert env["AWS_ENDPOINT_URL"] == env["S3_ENDPOINT_URL"] == "http://127.0.0.1:2"
    assert env["PATH"] == "/usr/bin"
    # The latency scenario re-points every tool at once.
    moved = dict(env, **bench.endpoint_vars("http://127.0.0.1:3"))
    assert {moved[k] for k in bench.endpoint_vars("x")} == {"http://127.0.0.1:3"}


def test_scenario_groups_are_parsed_in_canonical_order():
    assert bench.parse_scenarios("big, loopback") == ("loopback", "big")
    assert bench.parse_scenarios("all") == bench.GROUPS
    for bad in ("", "latency,wan", "ALL,big"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_scenarios(bad)
    p = bench.Params(**vars(bench.QUICK))
    p.scenarios, p.huge_mib, p.latency_ms = ("latency",), 8, 2.5
    assert bench.command_line(p, quick=True) == (
        "hashsync bench --quick --latency-ms 2.5 --huge-mib 8 --scenarios latency"
    )
    p.scenarios = ("loopback",)  # what --count runs by default
    assert bench.command_line(p, quick=True, count=True) == (
        "hashsync bench --quick --count --latency-ms 2.5 --huge-mib 8"
    )


def test_latency_asked_for_without_the_proxy_fails_before_measuring(tmp_path, monkeypatch, capsys):
    def no_proxy(*args, **kwargs):
        raise DelayProxyError("cargo is not on PATH")

    monkeypatch.setattr(bench, "find_delay_proxy", no_proxy)
    monkeypatch.setattr(bench, "require_tools", lambda: None)
    assert main(["--scenarios", "latency", "--out", str(tmp_path)]) == 1
    assert "needs the delay proxy: cargo is not on PATH" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_report_has_four_tools_ratios_to_s5cmd_and_group_labels(tmp_path):
    p = vars(bench.Params(**vars(bench.DEFAULT)))

    def t(seconds: float) -> dict[str, float]:
        return {"median": seconds, "min": seconds, "max": seconds, "rss_mib": 50.0}

    summary = {
        "upload": {tool: t(s) for tool, s in zip(bench.TOOLS, (2.0, 6.0, 4.0, 8.0), strict=True)},
        "latency-upload": {
            tool: dict(t(s), proxy_cpu=0.5)
            for tool, s in zip(bench.TOOLS, (8.0, 25.0, 5.0, 60.0), strict=True)
        },
        "big-download": {"hashsync": t(3.0), "s5cmd": t(2.0)},
    }
    checks = {"big-download": {"hashsync": "-, yes", "s5cmd": "-, NO"}}
    meta = {
        "date": "2026-01-01",
        "cpu": "CPU",
        "cores": 2,
        "versions": dict.fromkeys(("hashsync", "awscli", "s5cmd", "rclone", "seaweedfs"), "1"),
        "params": p,
        "command": "hashsync bench",
    }
    md = bench.markdown(meta, summary, checks)
    assert (
        "| scenario | hashsync | awscli | s5cmd | rclone | hashsync/s5cmd | hashsync/awscli "
        "| hashsync/rclone |" in md
    )
    assert "| upload | 2.00 s | 6.00 s | 4.00 s | 8.00 s | 0.50 | 0.33 | 0.25 |" in md
    assert "| latency-upload (20 ms RTT) | 8.00 s | 25.00 s | 5.00 s | 60.00 s | 1.60 |" in md
    assert "| big-download (2 x 1,024 MiB) | 3.00 s | - | 2.00 s | - | 1.50 | - | - |" in md
    assert "| big-download (2 x 1,024 MiB) | -, yes | - | -, NO | - |" in md
    assert "proxy CPU for the three rows, medians: hashsync 0.50 s" in md
    assert "uses CPU" not in md and "taken from them" in md
    if bench.chart(summary, tmp_path / "c.png", "t", p):
        assert (tmp_path / "c.png").stat().st_size > 1000


def _fake_bsd_time(tmp_path):
    # BSD time(1) as a Mac has it: no -f; -l appends a report with the peak RSS in bytes.
    fake = tmp_path / "bsd-time"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "-l" ] || { echo "time: illegal option -- ${1#-}" >&2; exit 1; }\n'
        'shift; "$@"; code=$?\n'
        'printf "        0.00 real 0.00 user 0.00 sys\\n  12582912  maximum resident set size\\n'
        '         0  average shared memory size\\n" >&2\n'
        "exit $code\n"
    )
    fake.chmod(0o755)
    return str(fake)


def test_processes_are_timed_with_whichever_time_there_is(tmp_path):
    import os
    import shutil

    env = dict(os.environ)
    seconds, rss, code = bench.timed(["true"], env, tool=str(tmp_path / "no-such-time"))
    assert code == 0 and rss is None and seconds > 0
    assert bench.time_kind(str(tmp_path / "no-such-time")) is None
    bsd = _fake_bsd_time(tmp_path)
    assert bench.time_kind(bsd) == "bsd"
    seconds, rss, code = bench.timed(["sh", "-c", "exit 3"], env, tool=bsd)
    assert (rss, code) == (12582912 // 1024, 3)
    if shutil.which("time") and bench.time_kind() == "gnu":
        seconds, rss, code = bench.timed([sys.executable, "-c", "b = bytearray(64 << 20)"], env)
        assert code == 0 and rss is not None and rss >= 64 << 10
