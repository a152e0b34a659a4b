#!/usr/bin/env python3
"""Benchmarks of firmware over the air, as issue 17 sets their targets.

    bench/fota.py download [--devices 1000] [--mib 16] [--bin target/release/telemark]
    bench/fota.py campaign [--devices 10000] [--failure 0.02] [--raised 0.2]

download: `telemark serve` with DEVICES simulated routers (`telemark sim`,
each a real HTTP client that streams the image and hashes it) and one
campaign of a single wave over all of them, so every device downloads the
same MIB MiB image at once. Reports the seconds from the campaign's start
until every device is past its download, and the server's peak RSS
(VmHWM). Then the same bytes as plain loopback copies, side by side in the
same run: nginx (Debian's nginx-light) serving the file, `curl --parallel`
fetching it DEVICES times at once; the ratio of the two times.

campaign: DEVICES simulated routers of which --failure fail their update
(at the download, the read-back, the install or the first boot), a
campaign in waves of 1, 10, 50 and 100 %: reports each wave's counts and
checks they add up to the fleet. Then the fleet fails --raised of its
updates, and a second campaign must pause itself at its threshold.
Everything on 127.0.0.1.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error

from platform_run import Platform, free_port

FINAL = {"succeeded", "failed", "rolled_back", "skipped"}


def rss_peak_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def upload(platform, version, data, model_id):
    return platform.call(
        "POST", f"/firmware?version={version}&model_ids={model_id}&file_name=router-{version}.img",
        data, "application/octet-stream",
    )


def model_id(platform):
    return next(m["id"] for m in platform.call("GET", "/device-models") if m["topic_segment"] == "311-a1")


def wait_reported(platform, image_id, devices, version, secs=300):
    """Until every device reported `version` (targeting reads it): what a
    campaign of `image_id` over them would target."""
    deadline = time.time() + secs
    targeted = 0
    while time.time() < deadline:
        try:
            targeted = platform.call("POST", "/campaigns/preview", {
                "name": "preview", "image_id": image_id, "filter": {"current_version": version},
            })["targeted"]
        except urllib.error.HTTPError:
            targeted = 0  # none to target yet: a 400
        if targeted >= devices:
            return targeted
        time.sleep(1)
    return targeted


def all_devices(platform, campaign):
    out, after = [], None
    while True:
        page = platform.call("GET", f"/campaigns/{campaign}/devices?limit=1000" + (f"&after={after}" if after else ""))
        out.extend(page)
        if len(page) < 1000:
            return out
        after = page[-1]["device_id"]


def start_sim(platform, fleet, key, failure):
    sim = platform.sim(fleet, "--interval", "30", "--reboot-ms", "1000", f"--license-public-key={key}",
                       "--fota-failure", str(failure))
    # Its report lines must not fill the pipe and stall it.
    threading.Thread(target=lambda: [None for _ in sim.stdout], daemon=True).start()
    return sim


def download(a):
    platform = Platform(a.bin, prefix="telemark-fota-")
    fleet = platform.register_fleet(a.devices, "02:40:00")
    key = platform.call("GET", "/license/public-key")["public_key"]
    sim = start_sim(platform, fleet, key, 0.0)
    image = os.urandom(a.mib << 20)
    kept = upload(platform, "2.0.0", image, model_id(platform))
    if wait_reported(platform, kept["id"], a.devices, "1.0.0") < a.devices:
        raise SystemExit("the fleet did not come online and report its version")
    peak_before = rss_peak_mib(platform.process.pid)
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            with open(f"/proc/{platform.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        samples.append(int(line.split()[1]) / 1024)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.time()
    campaign = platform.call("POST", "/campaigns", {
        "name": "download benchmark", "image_id": kept["id"],
        "waves": [{"percent": 100, "soak_secs": 0}], "health_secs": 0, "min_finished": a.devices,
    })
    downloaded = None
    while time.time() - start < 900:
        devices = all_devices(platform, campaign["id"])
        waiting = sum(1 for d in devices if d["stage"] in ("pending", "notified", "downloading"))
        if waiting == 0 and len(devices) == a.devices:
            downloaded = time.time() - start
            break
        time.sleep(0.5)
    stop.set()
    sampler.join()
    peak = rss_peak_mib(platform.process.pid)
    print(f"telemark: {a.devices} devices × {a.mib} MiB downloaded in {downloaded:.1f} s "
          f"(campaign start → last device past its download); serve RSS peak {peak:.0f} MiB "
          f"(before the campaign {peak_before:.0f} MiB, sampled max during it {max(samples):.0f} MiB)", flush=True)
    sim.send_signal(signal.SIGTERM)
    sim.wait(timeout=60)

    def curl_all(url, *extra):
        with open(f"{platform.work}/curl.cfg", "w") as f:
            for _ in range(a.devices):
                f.write(f'url = "{url}"\noutput = "/dev/null"\n')
        begin = time.time()
        subprocess.run(["curl", "--silent", "--show-error", "--fail", "--parallel", "--parallel-immediate",
                        "--parallel-max", str(min(a.devices, 300)), *extra, "--config", f"{platform.work}/curl.cfg"],
                       check=True)
        return time.time() - begin

    # The server alone: the same downloads by curl, no device work beside them.
    served = curl_all(f"{platform.base}/api/v1/firmware/{kept['id']}/file",
                      "--header", f"Authorization: Bearer {platform.token}")
    served_peak = rss_peak_mib(platform.process.pid)
    print(f"telemark serving curl --parallel (300 at a time): {a.devices} × {a.mib} MiB in {served:.1f} s; "
          f"RSS peak {served_peak:.0f} MiB", flush=True)
    platform.process.send_signal(signal.SIGTERM)
    platform.process.wait(timeout=60)

    # The same bytes as plain loopback copies: nginx and curl.
    root = tempfile.mkdtemp(prefix="telemark-fota-nginx-")
    with open(f"{root}/image.bin", "wb") as f:
        f.write(image)
    port = free_port()
    conf = f"{root}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2; daemon off; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {root};
  proxy_temp_path {root}; fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", root])
    time.sleep(1)
    with open(f"{root}/curl.cfg", "w") as f:
        for _ in range(a.devices):
            f.write(f'url = "http://127.0.0.1:{port}/image.bin"\noutput = "/dev/null"\n')
    start = time.time()
    subprocess.run(["curl", "--silent", "--show-error", "--parallel", "--parallel-immediate",
                    "--parallel-max", str(min(a.devices, 300)), "--config", f"{root}/curl.cfg"], check=True)
    copied = time.time() - start
    nginx.send_signal(signal.SIGQUIT)
    nginx.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)
    print(f"loopback copies (nginx + curl --parallel, 300 at a time): {a.devices} × {a.mib} MiB in {copied:.1f} s", flush=True)
    print(f"ratio simulated devices / loopback copies: {downloaded / copied:.2f}; "
          f"telemark serving curl / nginx serving curl: {served / copied:.2f} (target ≤ 2); "
          f"RSS peak {max(peak, served_peak):.0f} MiB (target < 200)")


def campaign(a):
    platform = Platform(a.bin, prefix="telemark-fota-")
    fleet = platform.register_fleet(a.devices, "02:41:00")
    key = platform.call("GET", "/license/public-key")["public_key"]
    sim = start_sim(platform, fleet, key, a.failure)
    mid = model_id(platform)
    kept = upload(platform, "2.0.0", os.urandom(64 << 10), mid)
    if wait_reported(platform, kept["id"], a.devices, "1.0.0", secs=600) < a.devices:
        raise SystemExit("the fleet did not come online and report its version")
    start = time.time()
    c = platform.call("POST", "/campaigns", {
        "name": "fleet rollout", "image_id": kept["id"],
        "waves": [{"percent": p, "soak_secs": 5, "success_ratio": 0.9} for p in (1, 10, 50, 100)],
        "health_secs": 0, "failure_threshold": 0.05, "min_finished": 50,
    })
    print(f"campaign over {sum(w['size'] for w in c['waves'])} devices in waves of "
          f"{[w['size'] for w in c['waves']]}", flush=True)
    while True:
        time.sleep(2)
        c = platform.call("GET", f"/campaigns/{c['id']}")
        print(f"{time.time() - start:6.1f} s  {c['state']:8} wave {c['current_wave'] + 1}  "
              f"{json.dumps(c['counts'], sort_keys=True)}", flush=True)
        if c["finished_at"] or c["state"] == "paused" or time.time() - start > 1800:
            break
    devices = all_devices(platform, c["id"])
    by_state = {}
    for d in devices:
        by_state[d["stage"]] = by_state.get(d["stage"], 0) + 1
    total = sum(c["counts"].values())
    print(f"campaign {c['state']} after {time.time() - start:.1f} s; counts {json.dumps(c['counts'], sort_keys=True)} "
          f"add up to {total} of {a.devices}; the device list says {json.dumps(by_state, sort_keys=True)}")
    for w in c["waves"]:
        print(f"  wave {w['number'] + 1}: {w['size']} devices, {w['state']}, {json.dumps(w['counts'], sort_keys=True)}, "
              f"{(w['done_at'] - w['started_at']) / 1000 if w['done_at'] else None} s")
    assert total == a.devices and sum(by_state.values()) == a.devices, "counts must add up to the fleet"

    # The fleet gets worse: the next campaign must stop itself.
    sim.send_signal(signal.SIGTERM)
    sim.wait(timeout=120)
    sim = start_sim(platform, fleet, key, a.raised)
    kept = upload(platform, "2.1.0", os.urandom(64 << 10), mid)
    # A restarted simulator starts its devices on 1.0.0 again.
    again = wait_reported(platform, kept["id"], a.devices, "1.0.0", secs=600)
    print(f"{again} devices report 1.0.0 after the restart of the fleet", flush=True)
    start = time.time()
    c = platform.call("POST", "/campaigns", {
        "name": "bad build", "image_id": kept["id"], "filter": {"current_version": "1.0.0"},
        "waves": [{"percent": p, "soak_secs": 5} for p in (1, 10, 50, 100)],
        "health_secs": 0, "failure_threshold": 0.05, "min_finished": 50,
    })
    while True:
        time.sleep(1)
        c = platform.call("GET", f"/campaigns/{c['id']}")
        if c["state"] != "running" or time.time() - start > 900:
            break
    finished = sum(v for k, v in c["counts"].items() if k in FINAL)
    print(f"with {a.raised:.0%} failing: campaign {c['state']} after {time.time() - start:.1f} s, "
          f"{finished} devices final, counts {json.dumps(c['counts'], sort_keys=True)}; reason: {c['state_reason']}")
    sim.send_signal(signal.SIGTERM)
    sim.wait(timeout=120)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["download", "campaign"])
    p.add_argument("--devices", type=int)
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--failure", type=float, default=0.02)
    p.add_argument("--raised", type=float, default=0.2)
    p.add_argument("--bin", default="target/release/telemark")
    a = p.parse_args()
    if a.what == "download":
        a.devices = a.devices or 1000
        download(a)
    else:
        a.devices = a.devices or 10000
        campaign(a)


if __name__ == "__main__":
    main()
