"""Ray's cluster launcher, really exercised on this machine, checked step by step.

`ray up examples/cluster_local.yaml` (provider local: a head and one worker node, both on
127.0.0.1, set up and started over SSH), `ray job submit` of the smoke training through
`ray dashboard` (the SSH tunnel of docs/CLUSTER.md), its env runners routed to the worker by the
custom resource rollout_slot, the job's status, actors and nodes read back over the dashboard's
HTTP API (with the cluster's token; without it the API must answer 401), the custom metrics
(mlir_rl_*) read from the nodes' Prometheus endpoints while it runs, then `ray down`. Every step
asserts what it must see; the exit status is 0 only if all did.
The summary goes to bench/results/launch_local.json, the whole log beside it (launch_local/).

Isolation (the machine is shared): everything runs in namespaces of its own (unshare: network,
PID, mount). Its network has only the loopback interface: nothing leaves 127.0.0.1 and no port can
clash with another Ray. Its PID namespace is why `ray stop`, which `ray down` runs on the head and
which kills every Ray process it can see, stops this cluster and nothing else. /tmp and HOME are
private folders mounted over the real ones (Ray's temp files, the SSH key, the cluster's own
token), with this Python's folder (~/.pyenv here) mounted back inside. sshd listens on 127.0.0.1
of that network only. When the script ends, the kernel kills whatever is left in the namespace.

Needs root, util-linux's unshare, and sshd and rsync (apt-get install -y openssh-server rsync).

    python bench/launch_local.py      # about 2 minutes on 2 cores

With --stop-node NAME (what the cluster's start commands run instead of `ray stop`): stop the
processes started with MLIR_RL_LAUNCH_NODE=NAME, only those.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "cluster_local.yaml")
WORK = os.path.join(ROOT, "bench", "results", "launch_local")
SUMMARY = os.path.join(ROOT, "bench", "results", "launch_local.json")
MARK = "MLIR_RL_LAUNCH_NODE"
DASHBOARD = "http://127.0.0.1:48265"                   # the ports of examples/cluster_local.yaml
METRICS = {"head": 48080, "worker": 48081}
TUNNEL = 48300                                          # `ray dashboard`'s local end
HOME = os.path.expanduser("~")                          # root's: a private folder is mounted over it
JOB_ARGS = ["python", "tune_run.py", "--config", "tune_configs/smoke.yaml", "--no-eval",
            "--env-runner-resources", "rollout_slot=1"]


def _psutil():
    import ray  # noqa: F401  (Ray ships psutil in ray/thirdparty_files and puts it on the path)
    import psutil
    return psutil


# ---------------------------------------------------------------- the node-scoped stop

def stop_node(name: str) -> int:
    """Terminate (then kill) the processes whose environment carries MARK=name."""
    psutil = _psutil()
    me = psutil.Process()
    skip = {me.pid} | {p.pid for p in me.parents()}
    procs = []
    for p in psutil.process_iter():
        if p.pid in skip:
            continue
        try:
            if p.environ().get(MARK) == name and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    print(f"node {name!r}: stopped {len(procs)} process(es)")
    return 0


# ---------------------------------------------------------------- helpers

class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.f.write(line + "\n")


def sh(log, cmd, timeout=600, env=None, check_rc=True, quiet=False):
    """Run a command; its output goes to the log; returns (rc, output)."""
    log(f"$ {' '.join(cmd)}")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    log.f.write(out)
    if not quiet:
        tail = out.strip().splitlines()[-3:]
        for line in tail:
            print("    " + line[:200])
    log(f"  -> rc {rc} in {time.time() - t0:.0f} s")
    if check_rc and rc != 0:
        raise Failed(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} exited {rc} (log: {WORK}/launch.log)")
    return rc, out


def http(url, token=None, timeout=15):
    """GET url -> (status, text); the token, when given, as a Bearer header."""
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def rows(text):
    """The list of records in a state-API answer (data.result.result)."""
    js = json.loads(text)
    data = js.get("data", js)
    res = data.get("result", data)
    return res.get("result", res) if isinstance(res, dict) else res


def ray_processes():
    psutil = _psutil()
    out = []
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["name"] in ("raylet", "gcs_server") or any(
                    k in cmd for k in ("dashboard.py", "monitor.py", "default_worker.py", "log_monitor.py")):
                out.append(f"{p.pid} {p.info['name']}")
        except psutil.Error:
            pass
    return out


# ---------------------------------------------------------------- inside the namespaces

def setup_namespace(work):
    """Loopback up; private /tmp, /run and HOME (this Python's folder under HOME mounted back inside)."""
    def run(*cmd):
        subprocess.run(cmd, check=True)
    run("ip", "link", "set", "lo", "up")
    home, tmp = os.path.join(work, "home"), os.path.join(work, "tmp")
    os.makedirs(home)
    os.makedirs(tmp)
    os.chmod(home, 0o700)
    os.chmod(tmp, 0o1777)
    # This Python (and its packages), where it lies under HOME (~/.pyenv here), stays visible.
    for top in sorted({os.path.relpath(p, HOME).split(os.sep)[0] for p in (sys.prefix, sys.base_prefix)
                       if not os.path.relpath(p, HOME).startswith("..")}):
        os.makedirs(os.path.join(home, top))
        run("mount", "--bind", os.path.join(HOME, top), os.path.join(home, top))
    run("mount", "--rbind", home, HOME)
    run("mount", "--bind", tmp, "/tmp")
    run("mount", "-t", "tmpfs", "tmpfs", "/run")  # sshd's /run/sshd, off the real /run
    # Login shells over SSH find this Python (and its `ray`) through ~/.bashrc.
    with open(os.path.join(HOME, ".bashrc"), "w") as f:
        f.write(f"export PATH={os.path.dirname(sys.executable)}:$PATH\n")


def start_sshd(log, work):
    d = os.path.join(work, "sshd")
    os.makedirs(d)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder (a private /run)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/host_key"], check=True)
    key = os.path.join(HOME, ".ssh", "mlir_rl_launch")
    os.makedirs(os.path.dirname(key), mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    shutil.copy(key + ".pub", os.path.join(HOME, ".ssh", "authorized_keys"))
    os.chmod(os.path.join(HOME, ".ssh", "authorized_keys"), 0o600)
    with open(f"{d}/sshd_config", "w") as f:
        f.write(f"""Port 22
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
PrintMotd no
MaxSessions 64
MaxStartups 64
Subsystem sftp internal-sftp
""")
    subprocess.run(["/usr/sbin/sshd", "-f", f"{d}/sshd_config", "-E", f"{d}/sshd.log"], check=True)
    ssh = ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o",
           "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    for host in ("127.0.0.1", "localhost"):
        rc, out = sh(log, ssh + [f"root@{host}", "bash --login -c -i 'source ~/.bashrc; which ray'"],
                     timeout=30, check_rc=False, quiet=True)
        check(rc == 0 and "ray" in out, f"ssh root@{host} failed: {out.strip()[-300:]}")
    psutil = _psutil()
    listen = sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == 22})
    check(listen == ["127.0.0.1:22"], f"sshd listens on {listen}")
    log(f"sshd: listening on {listen} (in this namespace's network, which has only lo)")


def orchestrate(work, summary):
    log = Log(os.path.join(work, "launch.log"))
    t_start = time.time()
    env = dict(os.environ, RAY_AUTH_MODE="token")   # the CLI sends the token only in token mode
    start_sshd(log, work)
    psutil = _psutil()
    interfaces = sorted(psutil.net_if_addrs())
    summary["network_interfaces"] = interfaces
    check(interfaces == ["lo"], f"the namespace has interfaces {interfaces}")

    # The cluster's own token, shipped to every node by the file mounts.
    subprocess.run(["ray", "get-auth-token", "--generate"], check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the token is never logged
    token = open(os.path.join(HOME, ".ray", "auth_token")).read().strip()
    check(len(token) >= 32, "no token generated")

    t0 = time.time()
    # Autoscaler v1: Ray 2.60's v2 (the default of `ray up`) counts the head towards the local
    # provider's one node type, so min_workers: 1 is met by the head alone and no worker starts.
    sh(log, ["ray", "up", "-y", "--no-config-cache", CONFIG], timeout=900,
       env=dict(env, RAY_UP_enable_autoscaler_v2="0"))
    summary["ray_up_s"] = round(time.time() - t0)

    # The dashboard answers; both nodes join (the head's autoscaler starts the worker over SSH).
    deadline, nodes = time.time() + 420, []
    while time.time() < deadline:
        code, text = http(f"{DASHBOARD}/api/v0/nodes?detail=1", token)
        if code == 200:
            nodes = [n for n in rows(text) if n.get("state") == "ALIVE"]
            if len(nodes) >= 2:
                break
        time.sleep(5)
    check(len(nodes) == 2, f"{len(nodes)} node(s) alive after 7 minutes (log: {work}/tmp/ray/session_latest/logs/"
                           "monitor.*)")
    summary["worker_joined_s"] = round(time.time() - t0)
    kind = {}
    for n in nodes:
        res = n.get("resources_total") or {}
        name = "head" if n.get("is_head_node") else "worker"
        kind[n["node_id"]] = name
        summary.setdefault("nodes", {})[name] = {"ip": n.get("node_ip"), "resources": res}
    log("nodes:", json.dumps(summary["nodes"]))
    check(summary["nodes"]["head"]["ip"] == summary["nodes"]["worker"]["ip"] == "127.0.0.1", "node IPs")
    check("rollout_slot" not in summary["nodes"]["head"]["resources"], "the head has rollout_slot")
    check(summary["nodes"]["worker"]["resources"].get("rollout_slot") == 1, "the worker lacks rollout_slot")

    # Security: the token is on, on every node, and the dashboard listens on loopback only.
    sec = summary["security"] = {}
    sec["api_without_token"] = http(f"{DASHBOARD}/api/jobs/")[0]
    sec["api_with_wrong_token"] = http(f"{DASHBOARD}/api/jobs/", "not-the-token")[0]
    sec["api_with_token"] = http(f"{DASHBOARD}/api/jobs/", token)[0]
    check(sec["api_without_token"] == 401, f"dashboard API without the token: {sec['api_without_token']}")
    check(sec["api_with_wrong_token"] == 403, f"with a wrong token: {sec['api_with_wrong_token']}")
    check(sec["api_with_token"] == 200, f"with the token: {sec['api_with_token']}")
    sec["dashboard_listens_on"] = sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections("tcp")
                                          if c.status == psutil.CONN_LISTEN and c.laddr.port == 48265})
    check(sec["dashboard_listens_on"] == ["127.0.0.1:48265"], f"dashboard listens on {sec['dashboard_listens_on']}")
    modes = {}
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] in ("raylet", "gcs_server"):
                e = p.environ()
                modes[f"{p.info['name']}@{e.get(MARK)}"] = e.get("RAY_AUTH_MODE")
        except psutil.Error:
            pass
    sec["auth_mode_of_ray_processes"] = modes
    check(set(modes) == {"raylet@head", "raylet@worker", "gcs_server@head"} and set(modes.values()) == {"token"},
          f"auth mode of the Ray processes: {modes}")
    bad = dict(env, RAY_AUTH_TOKEN="not-the-token")
    rc, out = sh(log, ["ray", "status", "--address", "127.0.0.1:46379"], timeout=120, env=bad, check_rc=False,
                 quiet=True)
    sec["gcs_with_wrong_token_rc"] = rc
    check(rc != 0, "`ray status` with a wrong token succeeded")
    # With the token it answers. (Its resource summary comes from the v1 autoscaler, which keys
    # nodes by IP: with both nodes on 127.0.0.1 it shows one node's resources, either one.)
    rc, out = sh(log, ["ray", "status", "--address", "127.0.0.1:46379"], timeout=120, env=env, quiet=True)
    summary["ray_status"] = [ln.strip() for ln in out.splitlines() if "CPU" in ln or "rollout_slot" in ln
                             or "local.cluster.node" in ln]

    # The dashboard as docs/CLUSTER.md reaches it: `ray dashboard` (an SSH tunnel to the head's
    # loopback), here to local port TUNNEL.
    log(f"$ ray dashboard -p {TUNNEL} --remote-port 48265 {CONFIG}  (in the background)")
    tunnel = subprocess.Popen(["ray", "dashboard", "-p", str(TUNNEL), "--remote-port", "48265", CONFIG], cwd=ROOT,
                              env=env, stdout=log.f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    via = f"http://localhost:{TUNNEL}"
    for _ in range(60):
        if http(f"{via}/api/jobs/")[0]:
            break
        time.sleep(1)
    sec["tunnel_without_token"] = http(f"{via}/api/jobs/")[0]
    sec["tunnel_with_token"] = http(f"{via}/api/jobs/", token)[0]
    check((sec["tunnel_without_token"], sec["tunnel_with_token"]) == (401, 200),
          f"through `ray dashboard`: {sec['tunnel_without_token']} without the token, "
          f"{sec['tunnel_with_token']} with it")

    # The job, as docs/CLUSTER.md sends it, through the tunnel (storage: a folder here; s3://... on AWS).
    storage = os.path.join(work, "storage")
    job_id = f"mlir-rl-launch-{int(time.time())}"
    job = JOB_ARGS + ["--storage-path", storage]
    t0 = time.time()
    sh(log, ["ray", "job", "submit", "--address", via, "--working-dir", ".", "--submission-id", job_id,
             "--no-wait", "--"] + job, timeout=300, env=env)
    tunnel.terminate()
    summary["job"] = {"command": " ".join(job), "submission_id": job_id}
    status, metrics, placement, seen = None, {}, {}, set()
    deadline = time.time() + 1500
    while time.time() < deadline:
        code, text = http(f"{DASHBOARD}/api/jobs/{job_id}", token)
        check(code == 200, f"GET /api/jobs/{job_id}: {code} {text[:200]}")
        info = json.loads(text)
        if info["status"] != status:
            status = info["status"]
            seen.add(status)
            log(f"job {job_id}: {status} after {time.time() - t0:.0f} s")
        code, text = http(f"{DASHBOARD}/api/v0/actors?detail=1&limit=1000", token)
        if code == 200:
            for a in rows(text):
                if a.get("state") == "ALIVE" and a.get("class_name") in ("PPO", "SingleAgentEnvRunner"):
                    placement.setdefault(a["class_name"], set()).add(kind.get(a.get("node_id"), a.get("node_id")))
        for node, port in METRICS.items():
            code, text = http(f"http://127.0.0.1:{port}/metrics")
            summary.setdefault("metrics_endpoint_status", {})[node] = code
            for line in text.splitlines():
                if line.startswith("ray_mlir_rl_"):
                    name = line.split("{")[0].split(" ")[0]
                    metrics[name] = {"node": node, "value": float(line.rsplit(" ", 1)[1])}
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(5)
    summary["job"].update(status=status, statuses_seen=sorted(seen), seconds=round(time.time() - t0),
                          message=info.get("message"))
    summary["placement"] = {k: sorted(v) for k, v in placement.items()}
    summary["metrics"] = metrics
    code, text = http(f"{DASHBOARD}/api/jobs/{job_id}/logs", token)
    logs = json.loads(text).get("logs", "") if code == 200 else ""
    with open(os.path.join(work, "job.log"), "w") as f:
        f.write(logs)
    summary["job"]["iteration_lines"] = [ln.strip() for ln in logs.splitlines() if "] iter " in ln]
    ckpts = []
    for d, subdirs, _ in os.walk(storage):
        ckpts += [os.path.relpath(os.path.join(d, s), storage) for s in subdirs if s.startswith("checkpoint_")]
    summary["job"]["checkpoints"] = sorted(ckpts)
    log("job:", json.dumps(summary["job"], indent=1))
    log("placement:", summary["placement"], "metrics:", json.dumps(metrics))
    check(status == "SUCCEEDED", f"the job ended {status}: {info.get('message')} (log: {work}/job.log)")
    check(len(summary["job"]["iteration_lines"]) >= 2, "fewer than 2 iteration lines in the job's log")
    check(ckpts, f"no checkpoint in {storage}")
    check(summary["placement"].get("SingleAgentEnvRunner") == ["worker"],
          f"env runners ran on {summary['placement'].get('SingleAgentEnvRunner')}, not on the worker only")
    check(any(k.startswith("ray_mlir_rl_speedup_geomean") for k in metrics), "no mlir_rl_speedup_geomean metric")

    # Down: `ray down` runs `ray stop` on the head, which here reaches this namespace's processes only.
    t0 = time.time()
    sh(log, ["ray", "down", "-y", CONFIG], timeout=300)
    left = []
    for _ in range(30):
        left = ray_processes()
        if not left:
            break
        time.sleep(2)
    summary["ray_down"] = {"seconds": round(time.time() - t0), "ray_processes_left": left,
                           "dashboard_after": http(f"{DASHBOARD}/api/jobs/", token)[0]}
    check(not left, f"Ray processes left after ray down: {left}")
    check(summary["ray_down"]["dashboard_after"] == 0, "the dashboard still answers after ray down")
    summary["total_s"] = round(time.time() - t_start)


def inside(work):
    """PID 1 of the new PID namespace: set it up, run the orchestration in a child, reap orphans."""
    setup_namespace(work)
    pid = os.fork()
    if pid == 0:
        summary = {"ok": False}
        try:
            orchestrate(work, summary)
            summary["ok"] = True
        except Failed as e:
            summary["failed"] = str(e)
            print(f"FAILED: {e}", file=sys.stderr)
        except Exception:
            summary["failed"] = traceback.format_exc()
            traceback.print_exc()
        with open(SUMMARY, "w") as f:
            json.dump(summary, f, indent=1)
        os._exit(0 if summary["ok"] else 1)
    rc = 1
    while True:
        try:
            p, status = os.wait()
        except ChildProcessError:
            break
        if p == pid:
            rc = os.waitstatus_to_exitcode(status)
            break
    return rc  # PID 1 exits: the kernel kills what is left in the namespace (sshd, anything of Ray)


# ---------------------------------------------------------------- outside

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stop-node", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--inside", metavar="WORK", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stop_node:
        return stop_node(args.stop_node)
    if args.inside:
        return inside(args.inside)
    missing = [t for t in ("unshare", "ssh", "ssh-keygen", "rsync", "ip") if not shutil.which(t)]
    missing += [] if os.path.exists("/usr/sbin/sshd") else ["sshd"]
    if os.geteuid() != 0 or missing:
        print("needs root" if os.geteuid() else f"missing: {', '.join(missing)} "
              "(apt-get install -y openssh-server rsync)", file=sys.stderr)
        return 2
    if os.path.exists(WORK):
        shutil.rmtree(WORK)
    os.makedirs(WORK)
    rc = subprocess.call(["unshare", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private",
                          sys.executable, os.path.abspath(__file__), "--inside", WORK])
    print(f"{'OK' if rc == 0 else 'FAILED'}: summary in {SUMMARY}, log in {WORK}/launch.log")
    return rc


if __name__ == "__main__":
    sys.exit(main())
