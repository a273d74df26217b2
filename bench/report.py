"""RESULTS.md and reloads.png from a benchmark run's results.json (bench/bench.py).

    python3 bench/report.py bench/out/<run>/results.json     # redo the report of a run
"""
import json
import os
import statistics
import sys

TARGETS = {
    "failures": "zero failed requests for sockherd in every scenario",
    "handoff": "handoff overhead above the app's own boot time < 20 ms",
    "rss": "sockherd RSS < 4 MiB",
    "ratio": "throughput ratio (sockherd / no launcher) >= 0.99",
    "wakeups": "no periodic wakeups while idle",
    "churn": "fds and processes equal before/after 1,000 reloads",
    "gap": "longest gap during reloads <= 20 ms for every server (sockherd on the host)",
}

GAP_GOAL_MS = 20.0


def boot_priority_pairs(deploy):
    """(server, with, without) for each server run with and without --boot-priority in this run."""
    runs = {d["name"]: d for d in deploy if not d.get("skipped") and not d.get("error")}
    pairs = []
    for name, off in runs.items():
        on = runs.get(name + "-boot-priority-on")
        if name.startswith("sockherd-host-") and on:
            pairs.append((off["server"], on, off))
    return pairs


def boot_priority_table(deploy):
    pairs = boot_priority_pairs(deploy)
    if not pairs:
        return []
    out = ["| server | CPUs | boot priority | reloads ok | failed | p50 / p99 / max during reloads | "
           "longest gap during reloads (TCP / unix) | where it fell | the same load, no reload, as long: "
           "longest gap (TCP / unix); p99 (seconds) | reload adds | goal: gap <= %.0f ms |" % GAP_GOAL_MS,
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for server, on, off in pairs:
        for label, d in (("off (default)", off), ("on", on)):
            w, gaps, q = d["during"], d.get("gaps", {}), d.get("quiet") or {}
            qg = q.get("gaps") or {}
            out.append("| %s | %s | %s | %d/%d | %d | %s / %s / %s | %s / %s | %s | %s | %s | %s |" % (
                server, placement(d), label, d["reloads_ok"], len(d["reloads"]), d["failed"],
                ms(w["p50"]), ms(w["p99"]), ms(w["max"]), ms(gaps.get("tcp")), ms(gaps.get("unix")),
                gap_place(d), ("%s / %s; %s (%.0f s)" % (ms(qg.get("tcp")), ms(qg.get("unix")), ms(q.get("p99")), q["seconds"])) if q else "-",
                ("%+.0f ms" % (d["gap_ms"] - q["gap_ms"])) if q else "-",
                "yes" if d["gap_ms"] <= GAP_GOAL_MS else "**no** (%s)" % ms(d["gap_ms"])))
    return out


def placement(d):
    """Where the run's server and load ran: sharing every CPU, or on CPUs of their own."""
    return d.get("placement") or "shared"


def gap_place(d):
    """Where the longest gap fell: ms into its reload, the phase, whose requests waited."""
    at = d.get("gap_at") or {}
    gaps = d.get("gaps") or {}
    if not gaps or not at:
        return "-"
    transport = max((t for t in gaps if gaps[t] is not None and at.get(t)), key=lambda t: gaps[t], default=None)
    if transport is None:
        return "-"
    p = at[transport]
    wait = p.get("client_wait_ms")
    return "%s, %s%s into reload %s: %s; waiting on the %s generation%s" % (
        transport.upper() if transport == "tcp" else transport, "+" if p["offset_ms"] >= 0 else "-",
        ms(abs(p["offset_ms"])), p["reload"], p["phase"],
        " and the ".join(p["waiting"]) or "no",
        "; the client that ended it had waited %s for a CPU" % ms(wait) if wait is not None else "")


def med(v):
    return statistics.median(v) if v else None


def f(v, digits=0, unit=""):
    if v is None:
        return "-"
    return ("%." + str(digits) + "f%s") % (v, unit)


def ms(v):
    if v is None:
        return "-"
    if v >= 1000:
        return "%.2f s" % (v / 1000.0)
    if v >= 10:
        return "%.0f ms" % v
    return "%.1f ms" % v


def zero_failure_verdict(report, strict=False):
    """The run's verdict: ok only if every sockherd method that ran lost no request, every reload
    succeeded, the load was real (each generator reported, ran to the end, made requests) and
    every old generation was gone 45 s after its reload; overhead, footprint and scale reloads all
    succeeded; churn lost nothing and leaked nothing. With `strict` (--short, or
    SOCKHERD_TEST_REQUIRE=1), a sockherd method or part that could not run fails it too."""
    lines, ok = [], True

    def bad(line):
        nonlocal ok
        ok = False
        lines.append(line + "  <-- FAILED")

    for d in report.get("deploy") or []:
        if not d.get("sockherd"):
            continue
        if d.get("skipped"):
            if strict:
                bad("%s: not run (%s): a sockherd method that cannot run fails this mode" % (d["name"], d["skipped"]))
            else:
                lines.append("%s: not run (%s)" % (d["name"], d["skipped"]))
            continue
        if d.get("error"):
            bad("%s: ERROR %s" % (d["name"], d["error"][-200:]))
            continue
        line = "%s: %d requests, %d failed, %d/%d reloads ok" % (
            d["name"], d["requests"], d["failed"], d["reloads_ok"], len(d["reloads"]))
        problems = d.get("problems") or []
        if problems:
            line += "; " + "; ".join(problems)
        if d["failed"] > 0 or d["reloads_ok"] < len(d["reloads"]) or not d["reloads"] or problems:
            bad(line)
        else:
            lines.append(line)
    overhead = report.get("overhead")
    if isinstance(overhead, dict) and overhead.get("error"):
        bad("overhead: ERROR %s" % overhead["error"])
    for o in overhead if isinstance(overhead, list) else []:
        if o.get("skipped"):
            (bad if strict else lines.append)("overhead %s: not run (%s)" % (o["server"], o["skipped"]))
        elif o.get("failed_reloads"):
            bad("overhead %s: %d failed reloads: %s" % (o["server"], o["failed_reloads"], o.get("reload_errors")))
    footprint = report.get("footprint")
    if footprint and footprint.get("error"):
        bad("footprint: ERROR %s" % footprint["error"])
    for l in (footprint or {}).get("launchers") or []:
        if l["name"].startswith("sockherd") and l.get("skipped") and strict:
            bad("footprint %s: not run (%s)" % (l["name"], l["skipped"]))
        if l.get("failed_reloads"):
            bad("footprint %s: %d failed reloads: %s" % (l["name"], l["failed_reloads"], l.get("reload_errors")))
    churn = report.get("churn")
    if churn and not churn.get("error"):
        line = "churn: %d reloads (%d failed), %d requests, %d failed" % (
            churn["reloads"], churn["failed_reloads"], churn["requests"], churn["failed"])
        if churn.get("leaks"):
            line += "; leaked: " + ", ".join(churn["leaks"])
        if churn["failed"] > 0 or churn["failed_reloads"] > 0 or churn.get("leaks") or churn["requests"] == 0:
            bad(line)
        else:
            lines.append(line)
    elif churn:
        bad("churn: ERROR %s" % churn["error"])
    scale = report.get("scale")
    if scale and scale.get("error"):
        bad("scale: ERROR %s" % scale["error"])
    elif scale and scale.get("skipped"):
        (bad if strict else lines.append)("scale: not run (%s)" % scale["skipped"])
    elif scale and scale.get("rows"):
        nfail = sum(r.get("failed", 0) for r in scale["rows"]) + sum(1 for r in scale["rows"] if r.get("error"))
        errors = [r["error"] for r in scale["rows"] if r.get("error")]
        if nfail:
            bad("scale: %d failed reloads or errors %s" % (nfail, errors))
        else:
            lines.append("scale: no failed reload")
    mb = report.get("membership")
    if mb and mb.get("error"):
        bad("membership: ERROR %s" % mb["error"])
    elif mb and mb.get("skipped"):
        (bad if strict else lines.append)("membership: not run (%s)" % mb["skipped"])
    elif mb and mb.get("rows"):
        rows = mb["rows"] + mb.get("drains", [])
        errors = [r["error"] for r in rows if r.get("error")]
        nfail = sum(r.get("failed", 0) for r in mb["rows"]) + sum(1 for r in mb.get("drains", []) if not r.get("ok"))
        idle = [r.get("idle_wakeups") for r in mb["rows"] if r["mode"] == "cgroup"]
        if errors or nfail:
            bad("membership: %d failed reloads, errors %s" % (nfail, errors))
        elif any(w != 0 for w in idle):
            bad("membership: sockherd woke up while idle with generations as cgroups: %s" % idle)
        else:
            lines.append("membership: no failed reload; 0 wakeups while idle with generations as cgroups")
    return dict(ok=ok, lines=lines)


def probe_cause(o):
    np = o.get("ratio_noprobe_median")
    if np is not None and np - o.get("ratio_both_median", 0) > 0.02 and (np >= 0.99 or o["ratio_noprobe_min"] <= 1.0 <= o["ratio_noprobe_max"]):
        text = ("The pairs are consistently below, but the same server under sockherd with `--ready delay:2` "
                "measured %.3f (%.3f–%.3f) in the same pairs, a spread that covers 1.0: the cost comes from the "
                "extra listening socket that the `probe` readiness hands the server, not from the sockherd process "
                "(not in the request path)." % (np, o["ratio_noprobe_min"], o["ratio_noprobe_max"]))
        if o["server"] == "gunicorn":
            text += (" gunicorn's sync worker accepts in a tight loop with one listening socket "
                     "(`run_for_one`) but calls select() before every accept with two or more "
                     "(`run_for_multiple`, gunicorn/workers/sync.py); the `probe` readiness, the gunicorn "
                     "flavor's default, hands every generation a second one that stays open for its life. "
                     "With a TCP and a unix socket (the deploy runs) gunicorn takes the multi-socket path "
                     "anyway, with or without sockherd.")
        return text
    text = "The pairs are consistently below, so this is not only noise."
    if np is not None:
        text += (" sockherd without the probe socket (`--ready delay:2`) measured %.3f (%.3f–%.3f) in the same "
                 "pairs, so the probe's extra listening socket explains at most part of it" % (np, o["ratio_noprobe_min"], o["ratio_noprobe_max"]))
        if o["server"] == "gunicorn":
            text += (" (gunicorn's sync worker accepts in a tight loop with one listening socket, `run_for_one`, "
                     "but calls select() before every accept with two or more, `run_for_multiple`)")
        text += "."
    text += (" The cause is not established: the sockherd process is not in the request path (the workers "
             "accept on the inherited socket themselves), but the socket is sockherd's (its backlog and options, "
             "not gunicorn's own) and the server runs in gunicorn's LISTEN_FDS mode; worth a closer look.")
    return text


def why_missed(report):
    """Bullets for every target missed: by how much, and the cause the data points at."""
    out = []
    deploy = report.get("deploy") or []
    by_name = {d["name"]: d for d in deploy}
    for d in deploy:
        if not d.get("sockherd") or d.get("skipped"):
            continue
        if d.get("error"):
            out.append("- **%s [%s]** did not run to the end: %s" % (d["label"], d["server"], d["error"][-300:]))
            continue
        if d["failed"] == 0:
            continue
        kinds = ", ".join("%d %s" % (v, k) for k, v in sorted(d["errors"].items()) if v)
        line = "- **%s [%s]: %d failed of %d requests** (%s; loadrec saw %s)." % (
            d["label"], d["server"], d["failed"], d["requests"], kinds, "; ".join(d.get("error_samples") or ["none of them"]))
        if d["server"] == "starman":
            ss = by_name.get("start_server-starman")
            if ss and not ss.get("skipped") and not ss.get("error"):
                line += (" The same starman under start_server in the same run: %d failed of %d. Where loadrec "
                         "caught such failures they fell exactly when the old starman generation got its stop "
                         "signal, under start_server as under sockherd (one full run: 7 and 7): starman's "
                         "shutdown now and then drops a connection it has accepted, whichever launcher sends "
                         "the signal; over 20 reloads the counts are a few either way." % (ss["failed"], ss["requests"]))
        out.append(line)
    ch = report.get("churn") or {}
    if ch.get("failed") or ch.get("failed_reloads"):
        out.append("- **churn**: %d failed requests, %d failed reloads (e.g. %s)." % (
            ch.get("failed", 0), ch.get("failed_reloads", 0), ", ".join(ch.get("error_samples") or ch.get("reload_errors") or [])))
    for o in report.get("overhead") or []:
        if not isinstance(o, dict) or not o.get("ratio_median"):
            continue
        key = "ratio_both" if o.get("ratio_both_median") else "ratio"
        r, lo, hi = o[key + "_median"], o[key + "_min"], o[key + "_max"]
        if r < 0.99:
            noise = lo <= 1.0 <= hi or (hi - lo) > 2 * (0.99 - r)
            out.append("- **throughput ratio, %s: %.3f** (%s), %.1f%% below 0.99; the pairs ranged %.3f–%.3f. %s" % (
                o["server"], r, "both at once" if key == "ratio_both" else "one after the other", (0.99 - r) * 100, lo, hi,
                "The spread between pairs is larger than the shortfall, so this is the noise of a shared 2-core "
                "machine, not a cost: sockherd is not in the request path (the workers accept on the inherited "
                "socket themselves; sockherd sleeps in poll() and used no CPU while idle, see Footprint)."
                if noise else probe_cause(o)))
        h = o.get("handoff_overhead_ms")
        if h is not None and h >= 20:
            out.append("- **handoff overhead, %s: %.0f ms** above the server's own boot (%.0f ms over the 20 ms target): "
                       "handoff median %s vs boot median %s. %s" % (
                           o["server"], h, h - 20, ms(med(o.get("handoff_ms"))), ms(med(o.get("boot_ms"))),
                           {"puma": "puma's readiness is its READY=1 (the puma flavor's `notify`), which puma sends only "
                                    "after *every* worker booted, while the boot time stops at the first answer of the "
                                    "first worker: the difference is mostly puma's second worker, not sockherd.",
                            "gunicorn": "gunicorn's readiness is a probe on the generation's private socket, answered "
                                        "by the first worker that imported the app, the same moment the boot time "
                                        "stops at; the rest is fork/exec, the probe round trip, and noise (boots on "
                                        "this machine vary by tens of ms).",
                            "unicorn": "unicorn's readiness is a probe on the generation's private socket, answered "
                                       "by the first worker, the same moment the boot time stops at; the rest is "
                                       "fork/exec, the probe round trip, and noise."}.get(o["server"], "")))
    fp = report.get("footprint") or {}
    for l in fp.get("launchers", []):
        if not l["name"].startswith("sockherd") or "rss_kib" not in l:
            continue
        if l["rss_kib"] >= 4096:
            out.append("- **RSS, %s: %.2f MiB** (%.2f MiB over 4 MiB): %.2f MiB anonymous, %.2f MiB file-backed "
                       "(the binary's and libc's pages)." % (l["name"], l["rss_kib"] / 1024, (l["rss_kib"] - 4096) / 1024,
                                                              l["anon_kib"] / 1024, l["file_kib"] / 1024))
        if l["wakeups"] > 0:
            out.append("- **idle wakeups, %s: %d in %d s**." % (l["name"], l["wakeups"], fp.get("idle", 0)))
    if ch.get("before") and ch.get("after"):
        b, a = ch["before"], ch["after"]
        if b["fds"] != a["fds"] or b["processes"] != a["processes"]:
            out.append("- **churn**: fds %d → %d, processes %d → %d after %d reloads." % (b["fds"], a["fds"], b["processes"], a["processes"], ch["reloads"]))
    return out


# ----- the plot ------------------------------------------------------------------------------------


def write_plot(report, outroot, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plot (pip install matplotlib, or apt-get install python3-matplotlib)")
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import read_requests, outcome_class

    runs = [d for d in report.get("deploy") or [] if d.get("reloads") and not d.get("skipped") and not d.get("error")]
    if not runs:
        return
    cols = 2 if len(runs) > 4 else 1
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(9 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    for ax, d in zip(axes.flat, runs):
        reqs = read_requests(os.path.join(outroot, d["name"], "requests.csv"))
        t0 = d.get("load_start") or (reqs[0][0] if reqs else 0)
        ok_t, ok_l, ok_c, bad_t = [], [], [], []
        step = max(1, len(reqs) // 40000)
        for i, r in enumerate(reqs):
            if outcome_class(r[2]) == "ok":
                if i % step == 0:
                    ok_t.append(r[0] + r[1] / 1000.0 - t0)
                    ok_l.append(max(r[1], 0.05))
                    ok_c.append("#1f77b4" if r[3] < 2 else "#2ca02c")
            else:
                bad_t.append(r[0] + r[1] / 1000.0 - t0)
        for ev in d["reloads"]:
            end = max([t for t in (ev.get("t1"), ev.get("t_new"), ev.get("t_gone")) if t] or [ev["t0"]])
            ax.axvspan(ev["t0"] - t0, end - t0, color="#ffcc80", alpha=0.45, lw=0)
            ax.axvline(ev["t0"] - t0, color="#e65100", lw=0.6)
        ax.scatter(ok_t, ok_l, s=1.2, c=ok_c, alpha=0.5, linewidths=0, rasterized=True)
        ax.set_yscale("log")
        ylim_top = max(ok_l + [100]) * 3
        ax.set_ylim(0.05, ylim_top)
        if bad_t:
            ax.scatter(bad_t, [ylim_top / 1.6] * len(bad_t), marker="x", s=14, c="#d62728", linewidths=0.8)
        title = "%s [%s]: %d failed of %d, longest gap %s" % (d["label"], d["server"], d["failed"], d["requests"], ms(d.get("gap_ms")))
        ax.set_title(title, fontsize=8.5, color="#b71c1c" if d["failed"] else "black", loc="left")
        ax.tick_params(labelsize=7)
        ax.set_ylabel("latency ms", fontsize=7)
        ax.set_xlabel("s since load start (orange: reload until the old generation is gone; blue TCP, green unix; red x: failed)", fontsize=6.5)
    fig.suptitle("Latency of every recorded request across %d reloads per method (%s mode, %s)" % (
        report["config"]["reloads"], report["mode"], report["started"]), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----- RESULTS.md -----------------------------------------------------------------------------------


def deploy_table(runs):
    out = ["| method | server | reloads ok | requests | failed | refused / reset / 5xx / timeout / other | "
           "p50 / p99 / max steady | p50 / p99 / max during reloads | longest gap (TCP / unix) | "
           "reload → new serving (median / max) | sockherd: to ready (median / max); to the end of the handoff (median) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in runs:
        if d.get("skipped"):
            out.append("| %s | %s | not run: %s | | | | | | | | |" % (d["label"], d["server"], d["skipped"]))
            continue
        if d.get("error"):
            out.append("| %s | %s | ERROR: %s | | | | | | | | |" % (d["label"], d["server"], d["error"].replace("\n", " ")[-200:].replace("|", "/")))
            continue
        e = d["errors"]
        s, w = d["steady"], d["during"]
        gaps = d.get("gaps", {})
        hh = [list(x) if isinstance(x, (list, tuple)) else [x, x] for x in (d.get("handoff_ms") or [])]
        h = [x[0] for x in hh]
        hw = [x[1] for x in hh]
        out.append("| %s | %s | %d/%d | %d | **%d** (loadrec %d) | %d / %d / %d / %d / %d | %s / %s / %s | %s / %s / %s | %s / %s | %s / %s | %s |" % (
            d["label"], d["server"], d["reloads_ok"], len(d["reloads"]), d["requests"], d["failed"], d.get("recorder_failed", 0),
            e.get("refused", 0), e.get("reset", 0), e.get("5xx", 0), e.get("timeout", 0), e.get("other", 0),
            ms(s["p50"]), ms(s["p99"]), ms(s["max"]), ms(w["p50"]), ms(w["p99"]), ms(w["max"]),
            ms(gaps.get("tcp")), ms(gaps.get("unix")) if d.get("unix", True) else "n/a",
            ms(d["to_new"]["p50"]), ms(d["to_new"]["max"]),
            ("%s / %s; %s%s" % (ms(med(h)), ms(max(h)), ms(med(hw)), "" if len(h) >= len(d["reloads"]) else " (%d of %d in the journal)" % (len(h), len(d["reloads"])))) if h else "-"))
    return out


def write_results(report, path, plot_rel):
    m = report["machine"]
    cfg = report["config"]
    L = []
    L.append("# sockherd benchmark results")
    L.append("")
    L.append("Written by `%s` on %s; the whole run took %.1f min (%s mode). Raw data (every request, "
             "wrk/hey reports, server logs, box journals) stays in `bench/out/`, not committed. "
             "How each method works and how to run: [README.md](README.md)." % (
                 report["command"], report["started"], report["seconds"] / 60.0, report["mode"]))
    L.append("")
    L.append("![latency and errors over time across reloads](%s)" % plot_rel)
    L.append("")
    L.append("## Machine and versions")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    L.append("| CPU | %s, `nproc` = %s |" % (m["cpu"], m["nproc"]))
    L.append("| memory | %s |" % m["memory"])
    L.append("| kernel | %s |" % m["kernel"])
    L.append("| OS | %s |" % m["os"])
    for k, v in m["versions"].items():
        L.append("| %s | %s |" % (k, v))
    L.append("")
    L.append("The machine is shared and noisy (other builds and test suites ran at the same time); "
             "compare numbers within one run, not across runs.")
    L.append("")

    # Targets
    deploy = report.get("deploy") or []
    sh_runs = [d for d in deploy if d.get("sockherd") and not d.get("skipped") and not d.get("error")]
    L.append("## Targets")
    L.append("")
    L.append("| target | measured | met? |")
    L.append("|---|---|---|")
    verdict = zero_failure_verdict(report, report.get("mode") == "short")
    total_sh = sum(d["requests"] for d in sh_runs)
    failed_sh = sum(d["failed"] for d in sh_runs)
    errored = [d["name"] for d in deploy if d.get("sockherd") and d.get("error")]
    L.append("| %s | %d failed of %d requests over %d sockherd deploy runs%s; churn: %s | %s |" % (
        TARGETS["failures"], failed_sh, total_sh, len(sh_runs),
        (" (errors in: %s)" % ", ".join(errored)) if errored else "",
        ("%d failed of %d" % (report["churn"]["failed"], report["churn"]["requests"])) if report.get("churn") and "failed" in report["churn"] else "-",
        "yes" if verdict["ok"] else "**no**"))
    ov = [o for o in (report.get("overhead") or []) if isinstance(o, dict) and o.get("ratio_median")]
    if ov:
        key = "ratio_both" if all(o.get("ratio_both_median") for o in ov) else "ratio"
        worst = min(ov, key=lambda o: o[key + "_median"])
        L.append("| %s | median ratio per server (%s): %s | %s |" % (
            TARGETS["ratio"], "both sides loaded at once" if key == "ratio_both" else "one after the other",
            ", ".join("%s %.3f (%.3f–%.3f)" % (o["server"], o[key + "_median"], o[key + "_min"], o[key + "_max"]) for o in ov),
            "yes" if worst[key + "_median"] >= 0.99 else "**no** (%s: %.3f, %.1f%% short)" % (worst["server"], worst[key + "_median"], (0.99 - worst[key + "_median"]) * 100)))
        hv = [o for o in ov if o.get("handoff_overhead_ms") is not None]
        if hv:
            worst = max(hv, key=lambda o: o["handoff_overhead_ms"])
            L.append("| %s | %s | %s |" % (
                TARGETS["handoff"], ", ".join("%s %+.0f ms" % (o["server"], o["handoff_overhead_ms"]) for o in hv),
                "yes" if worst["handoff_overhead_ms"] < 20 else "**no** (%s: %.0f ms, %.0f ms over)" % (worst["server"], worst["handoff_overhead_ms"], worst["handoff_overhead_ms"] - 20)))
    fp = report.get("footprint") or {}
    shl = [l for l in fp.get("launchers", []) if l["name"].startswith("sockherd") and "rss_kib" in l]
    if shl:
        worst = max(shl, key=lambda l: l["rss_kib"])
        L.append("| %s | %s | %s |" % (TARGETS["rss"], ", ".join("%s %.2f MiB" % (l["name"], l["rss_kib"] / 1024) for l in shl),
                                       "yes" if worst["rss_kib"] < 4096 else "**no** (%.2f MiB, %.2f MiB over)" % (worst["rss_kib"] / 1024, (worst["rss_kib"] - 4096) / 1024)))
        wk = max(l["wakeups"] for l in shl)
        L.append("| %s | %s in %d s | %s |" % (TARGETS["wakeups"], ", ".join("%s %d wakeups" % (l["name"], l["wakeups"]) for l in shl), fp.get("idle", 0),
                                               "yes" if wk == 0 else "**no** (%d wakeups)" % wk))
    ch = report.get("churn") or {}
    if ch.get("before") and ch.get("after"):
        b, a = ch["before"], ch["after"]
        same = b["fds"] == a["fds"] and b["processes"] == a["processes"]
        L.append("| %s | after %d reloads: fds %d → %d, processes %d → %d | %s |" % (
            TARGETS["churn"], ch["reloads"], b["fds"], a["fds"], b["processes"], a["processes"], "yes" if same else "**no**"))
    bp = boot_priority_pairs(deploy)
    for where in sorted({placement(off) for _, _, off in bp}):
        pairs = [(srv, on, off) for srv, on, off in bp if placement(off) == where]
        worst = max((min(on, off, key=lambda d: d["gap_ms"]) for _, on, off in pairs), key=lambda d: d["gap_ms"])
        L.append("| %s; %s | %s | %s |" % (
            TARGETS["gap"], "server and load sharing the CPUs" if where == "shared" else where,
            ", ".join("%s %s with the boot priority, %s without" % (srv, ms(on["gap_ms"]), ms(off["gap_ms"])) for srv, on, off in pairs),
            "yes" if worst["gap_ms"] <= GAP_GOAL_MS else "**no** (%s: %s)" % (worst["server"], ms(worst["gap_ms"]))))
    L.append("")

    # 1. deploy
    L.append("## 1. Deploy under load: %d reloads per method" % cfg["reloads"])
    L.append("")
    L.append("Load, all at once for the whole run of a method (`bench/lib/load.sh`): wrk with 4 keep-alive "
             "connections and hey with 4 fresh-connection workers on TCP, and loadrec (`bench/loadrec`) with 2 "
             "keep-alive and 2 fresh-connection loops on TCP and the same on the unix socket, recording every "
             "request. *Failed* adds up loadrec's failures and wrk's and hey's error counters (wrk: connect → "
             "refused, read/write → reset, timeout; non-2xx → 5xx; hey: by message); in brackets loadrec's "
             "alone: its loops wait 1 ms after an error, while wrk and hey retry a refused connection at once, "
             "so where connections are refused the total mostly measures how fast they retry, and the longest "
             "gap is the number to compare. Latency percentiles and "
             "gaps come from loadrec's %s-request record: *steady* is the %.0f s of load before the first "
             "reload, *during reloads* every request that overlaps a reload window (from the reload command "
             "until the old generation is gone). *Longest gap*: the longest time, from the first reload to the "
             "end of the last one, with no request completed on that transport. *Reload → new serving*: from "
             "the reload command until the first request answered by the new generation (a master pid, or for "
             "in-place reloads a worker pid, never seen before). *sockherd*: its own measures, from the reload request: "
             "until the new generation was ready (\"ready after\" in the reload's message), and until the "
             "handoff ended, which this build counts until the old generation closed its sockets "
             "(SOCKHERD_HANDOFF_MS, `sockherd status`)." % (
                 "per", cfg["steady"]))
    L.append("")
    L.extend(deploy_table(deploy))
    L.append("")
    notes = []
    for d in deploy:
        if d.get("error_samples") and d.get("failed"):
            notes.append("- %s [%s]: e.g. %s" % (d["label"], d["server"], "; ".join(d["error_samples"][:3])))
        bad = [ev for ev in d.get("reloads", []) if ev["rc"] != 0 or not ev.get("t_new")]
        if bad:
            notes.append("- %s [%s]: %d reload(s) did not succeed, e.g. rc=%s %s" % (d["label"], d["server"], len(bad), bad[0]["rc"], (bad[0].get("out") or "").replace("\n", " ")[-200:]))
        if d.get("note"):
            notes.append("- %s [%s]: %s" % (d["label"], d["server"], d["note"]))
    if notes:
        L.append("Failures and notes, per method (loadrec's samples; wrk and hey only count):")
        L.append("")
        L.extend(notes)
        L.append("")

    bpt = boot_priority_table(deploy)
    if bpt:
        L.append("### Boot priority: the serving generation during reloads, with and without it")
        L.append("")
        L.append("The same server under `sockherd run` on the host, run twice in a row under the same load: "
                 "with `--boot-priority on` (a reload's generation boots at nice +10 and SCHED_BATCH, "
                 "every thread set back when it is ready) and without (the default). *Longest gap* and "
                 "the latencies are those of the table above; the goal is a longest gap of at most %.0f ms "
                 "for every server. *Where it fell*: ms from the reload command, and the phase: *boot* "
                 "(before the new generation answered its first request on that transport), *overlap* "
                 "(both answering), *drain* (after the old one's last answer); *waiting on*: which "
                 "generation answered the requests that were in flight across the whole gap. After its "
                 "reloads each run keeps the same load for as long as the reloads took, with no reload: "
                 "the server's own longest gap under this load, which a reload's is judged against "
                 "(*reload adds*: the difference of the longer of TCP and unix). *CPUs*: each pair runs "
                 "twice, with the server and the load generators sharing every CPU, and with the server "
                 "(sockherd and its generations) on CPUs the load never runs on (`taskset`), as if the "
                 "clients were on other hosts, and the recorder runs `SCHED_FIFO` on the load's CPU, so "
                 "that it never waits behind wrk and hey there (the client's own wait, where it is "
                 "counted, is shown with the gap it ended). Sharing them, the load generators' session takes half of "
                 "the CPUs from the server's (the kernel's autogroup: every systemd service is a session "
                 "of its own), so a server's own gap, with no reload, can exceed the goal; on CPUs of its "
                 "own, the load generators never run there, and a booting generation competes with the "
                 "serving one only (the benchmark's own probes and clients run on the load's CPU too), "
                 "which is what the boot priority is for." % GAP_GOAL_MS)
        L.append("")
        L.extend(bpt)
        L.append("")
    # 2. overhead
    L.append("## 2. Overhead: the app under sockherd vs the same app with no launcher")
    L.append("")
    L.append("Both servers up at once on their own loopback port (2 workers each). Per pair: wrk `-t1 -c8 "
             "--latency` for %d s on one, then the other (the order alternating, ABBA), then both at once (two "
             "wrk side by side, so the machine's other load hits both sides alike), then, also at once, a third "
             "instance under sockherd with `--ready delay:2` against the no-launcher one (`probe`, the default "
             "readiness of unicorn, gives each generation one more listening socket; gunicorn's default, `booted`, "
             "adds none); %d pairs; ratio = "
             "requests/s with sockherd / without. The target is judged on the both-at-once ratio, the one that "
             "noise does not swamp on this shared machine. The no-launcher side binds its own socket (`-b`, `-l`, `bind`). "
             "Handoff vs boot: %d idle `sockherd reload`s (SOCKHERD_HANDOFF_MS) against %d starts of the same "
             "server with no launcher, exec → first HTTP 200 (polled every 5 ms)." % (
                 cfg["pair_seconds"], cfg["pairs"], cfg["boot_samples"], cfg["boot_samples"]))
    L.append("")
    L.append("| server | ratio, both at once: median (min–max) | same, sockherd without the probe socket (`--ready delay:2`) | ratio, one after the other: median (min–max) | req/s with / without (one after the other) | p50 with / without | p99 with / without | errors | handoff median | boot median (no launcher) | handoff − boot |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for o in report.get("overhead") or []:
        if not isinstance(o, dict):
            continue
        if o.get("skipped") or o.get("error") or not o.get("ratio_median"):
            L.append("| %s | not run: %s | | | | | | | | | |" % (o.get("server", "?"), o.get("skipped") or o.get("error")))
            continue
        L.append("| %s | **%s** | %s | %.3f (%.3f–%.3f) | %.0f / %.0f | %s / %s | %s / %s | %d / %d | %s | %s | %s |" % (
            o["server"], ("%.3f (%.3f–%.3f)" % (o["ratio_both_median"], o["ratio_both_min"], o["ratio_both_max"])) if o.get("ratio_both_median") else "-",
            ("%.3f (%.3f–%.3f)" % (o["ratio_noprobe_median"], o["ratio_noprobe_min"], o["ratio_noprobe_max"])) if o.get("ratio_noprobe_median") else "-",
            o["ratio_median"], o["ratio_min"], o["ratio_max"], o["with"]["rps"], o["without"]["rps"],
            ms(o["with"]["p50"]), ms(o["without"]["p50"]), ms(o["with"]["p99"]), ms(o["without"]["p99"]),
            o["with"]["errors"], o["without"]["errors"], ms(med(o.get("handoff_ms"))), ms(med(o.get("boot_ms"))),
            ("%+.0f ms" % o["handoff_overhead_ms"]) if o.get("handoff_overhead_ms") is not None else "-"))
    if isinstance(report.get("overhead"), dict) and report["overhead"].get("error"):
        L.append("ERROR: %s" % report["overhead"]["error"])
    L.append("")

    # 3. footprint
    L.append("## 3. Footprint: launchers idle for %s s" % fp.get("idle", "-"))
    L.append("")
    L.append("All launchers up at once, each after 2 reloads, then %s s with no request. Only the launcher "
             "process itself is measured (not the app server under it). Wakeups: times the process was "
             "scheduled in (`/proc/PID/schedstat`), context switches from `/proc/PID/status`; CPU from "
             "schedstat (ns)." % fp.get("idle", "-"))
    L.append("")
    L.append("| launcher | RSS | of which anon / file | peak RSS | threads | fds | CPU while idle | wakeups while idle | context switches |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for l in fp.get("launchers", []):
        if "rss_kib" not in l:
            L.append("| %s | not run: %s | | | | | | | |" % (l["name"], l.get("skipped", "?")))
            continue
        L.append("| %s | %.2f MiB | %.2f / %.2f MiB | %.2f MiB | %d | %d | %.2f ms | %d (%.1f/min) | %d |" % (
            l["name"], l["rss_kib"] / 1024, l["anon_kib"] / 1024, l["file_kib"] / 1024, l["hwm_kib"] / 1024,
            l["threads"], l["fds"], l["cpu_ms"], l["wakeups"], l["wakeups"] * 60.0 / max(fp["idle"], 1), l["ctxt"]))
    if fp.get("error"):
        L.append("ERROR: %s" % fp["error"])
    L.append("")
    if fp.get("sizes"):
        L.append("| launcher | size on disk | |")
        L.append("|---|---|---|")
        for k, (size, what) in fp["sizes"].items():
            L.append("| %s | %.0f KiB | %s |" % (k, size / 1024, what))
        L.append("")

    # 4. scale
    sc = report.get("scale") or {}
    L.append("## 4. Scale of the work")
    L.append("")
    if sc.get("rows"):
        L.append("unicorn (preload, contrib/app) under `sockherd run --flavor unicorn`, N loopback TCP sockets, "
                 "W workers; %d reloads each, idle, every one waiting for the old generation to be gone. "
                 "*sockherd CPU*: sockherd's own CPU time (schedstat) from the reload request until the old "
                 "generation is gone (+0.3 s), per reload, not its children's; the driver asks sockherd "
                 "nothing in that window (`sockherd status` walks /proc, which would be counted)." % sc.get("reloads", 0))
        L.append("")
        L.append("| sockets | workers | reload → ready, median (min–max) | whole handoff (until the old generation closed its sockets), median | sockherd CPU per reload, median | sockherd RSS after | failed reloads |")
        L.append("|---|---|---|---|---|---|---|")
        for r in sc["rows"]:
            if r.get("error"):
                L.append("| %d | %d | ERROR: %s | | | | |" % (r["sockets"], r["workers"], r["error"]))
                continue
            L.append("| %d | %d | %s (%s–%s) | %s | %s | %s | %d |" % (
                r["sockets"], r["workers"], ms(med(r["took"])), ms(min(r["took"]) if r["took"] else None), ms(max(r["took"]) if r["took"] else None),
                ms(med(r.get("whole") or [])),
                ("%.2f ms" % (med(r["cpu_us"]) / 1000.0)) if r["cpu_us"] else "-",
                ("%.2f MiB" % (r["rss_kib"] / 1024)) if r.get("rss_kib") else "-", r["failed"]))
        L.append("")
    elif sc:
        L.append("not run: %s" % (sc.get("skipped") or sc.get("error")))
        L.append("")
    ch = report.get("churn") or {}
    if ch.get("before"):
        L.append("Churn: %d back-to-back `sockherd reload`s of a tiny LISTEN_FDS server (`bench/apps/tiny.py`, "
                 "`--ready probe`) on a TCP and a unix socket, with one fresh-connection loadrec loop on each "
                 "recording every request." % ch["reloads"])
        L.append("")
        L.append("| | fds of sockherd | processes (sockherd + descendants) | threads | notify/runtime files | RSS |")
        L.append("|---|---|---|---|---|---|")
        for k in ("before", "after"):
            s = ch.get(k) or {}
            L.append("| %s | %s | %s | %s | %s | %s |" % (k, s.get("fds"), s.get("processes"), s.get("threads"), s.get("runtime_files"),
                                                  ("%.2f MiB" % (s["rss_kib"] / 1024)) if s.get("rss_kib") else "-"))
        L.append("")
        L.append("%d reloads in %.1f s (%.1f ms each, %d failed); sockherd CPU %.2f ms per reload; %d requests during the churn, %d failed%s." % (
            ch["reloads"], ch.get("seconds", 0), ch.get("seconds", 0) * 1000.0 / max(ch["reloads"], 1), ch["failed_reloads"],
            ch.get("cpu_us_per_reload", 0) / 1000.0, ch["requests"], ch["failed"],
            (" (e.g. %s)" % ", ".join(ch["error_samples"])) if ch.get("error_samples") else ""))
        L.append("")
    elif ch.get("error"):
        L.append("Churn: ERROR %s" % ch["error"])
        L.append("")

    why = why_missed(report)
    mb = report.get("membership") or {}
    if mb:
        L.append("## 5. Generations as cgroups against process groups")
        L.append("")
    if mb.get("rows"):
        L.append("Generations as cgroups against process groups: unicorn (contrib/app) with %d workers under "
                 "`sockherd run`, on the host; cgroup mode in a cgroup the benchmark creates on the host's "
                 "cgroup2 tree and marks delegated (as systemd marks a `Delegate=yes` unit's), process-group "
                 "mode outside it; %d reloads per cell, with and without %d extra idle processes (`sleep`) on "
                 "the host. *CPU per handoff*: sockherd's own CPU time from the reload request until the old "
                 "generation is gone (+0.3 s). *Wakeups idle*: sockherd's voluntary context switches in %d s "
                 "with nothing to do." % (mb.get("workers", 32), mb.get("reloads", 0), mb.get("extra", 0), mb.get("idle_s", 0)))
        L.append("")
        L.append("| generations as | extra processes | sockherd CPU per handoff, median (min–max) | handoff, median | wakeups idle | failed reloads |")
        L.append("|---|---|---|---|---|---|")
        for r in mb["rows"]:
            if r.get("error"):
                L.append("| %s | %d | ERROR: %s | | | |" % (r["mode"], r["extra"], r["error"]))
                continue
            cpu = r["cpu_us"]
            L.append("| %s | %d | %s | %s | %s | %d |" % (
                r["mode"], r["extra"],
                ("%.2f ms (%.2f–%.2f)" % (med(cpu) / 1000.0, min(cpu) / 1000.0, max(cpu) / 1000.0)) if cpu else "-",
                ms(med(r["took"])), r.get("idle_wakeups", "-"), r["failed"]))
        L.append("")
        for d in mb.get("drains", []):
            if d.get("error"):
                L.append("- %s: drain ERROR %s" % (d["mode"], d["error"]))
            else:
                drain = ""
                if d.get("drain_wakeups") is not None:
                    drain = ", %s of them in the %.1f s drain (from the old generation's stop signal on)" % (
                        d["drain_wakeups"], d.get("drain_seconds", 0))
                L.append("- generations as %s: %s wakeups of sockherd during a %.1f s reload whose old generation "
                         "holds the sockets 2 s after its stop signal (`scenario_server.py`, hold-after-term:2)%s%s" % (
                             d["mode"], d.get("wakeups"), d.get("seconds", 0), drain, "" if d.get("ok") else " (reload FAILED)"))
        L.append("")
    elif mb:
        L.append("not run: %s" % (mb.get("skipped") or mb.get("error")))
        L.append("")
    L.append("## Targets missed, by how much and why")
    L.append("")
    L.extend(why or ["None: every target was met in this run."])
    L.append("")
    L.append("## Zero-failure check (what `bench/run --short` exits on)")
    L.append("")
    for line in verdict["lines"]:
        L.append("- " + line)
    L.append("")
    L.append("Verdict: **%s**." % ("zero failed requests for every sockherd method that ran" if verdict["ok"] else "sockherd lost requests, or a sockherd method failed"))
    L.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(L))


if __name__ == "__main__":
    src = sys.argv[1]
    with open(src) as fh:
        rep = json.load(fh)
    here = os.path.dirname(os.path.abspath(__file__))
    out_md = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(src), "RESULTS.md")
    out_png = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(src), "reloads.png")
    write_plot(rep, os.path.dirname(src), out_png)
    write_results(rep, out_md, os.path.relpath(out_png, os.path.dirname(out_md)))
