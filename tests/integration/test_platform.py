"""The platform core, end to end: one user, the same files and password over SSH and the hub."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import ssl
import time
import urllib.request

import pytest
import requests

from scirepo import deploy
from scirepo.hubclient import HubError

from .conftest import (
    ansible_recap,
    bridge_gateway,
    changed_tasks,
    deploy_local,
    on_host,
    scirepo_cli,
    ssh_client,
    ssh_run,
)

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def alice(users):
    """A user with a running server (started through the hub API)."""
    name, password, hub = users.logged_in("a")
    hub.start_server()
    yield name, password, hub
    hub.stop_server()


@pytest.fixture(scope="module")
def bob(users):
    name, password = users.add("b")
    return name, password


def test_tls_endpoint_is_signed_by_the_local_ca(hub_url, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen(f"{hub_url}/hub/api", context=ctx, timeout=20) as res:  # noqa: S310
        assert res.status == 200
        assert "max-age" in res.headers["Strict-Transport-Security"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(
            f"{hub_url}/hub/api",
            context=ssl.create_default_context(),  # noqa: S310
            timeout=20,
        )


def test_static_files_are_compressed_pages_are_not(hub_url, cafile):
    """nginx compresses scripts, styles and icons (JupyterLab's 5 MB of scripts), never
    pages or API answers (BREACH: secrets next to user-controlled text)."""
    gz = {"Accept-Encoding": "gzip"}
    page = requests.get(f"{hub_url}/hub/login", headers=gz, verify=cafile, timeout=30)
    assert page.status_code == 200 and "Content-Encoding" not in page.headers
    api = requests.get(f"{hub_url}/hub/api", headers=gz, verify=cafile, timeout=30)
    assert api.status_code == 200 and "Content-Encoding" not in api.headers
    script = re.search(r'src="(/hub/static/[^"?]+\.js)[^"]*"', page.text).group(1)
    res = requests.get(f"{hub_url}{script}", headers=gz, verify=cafile, timeout=30)
    assert res.status_code == 200 and res.headers.get("Content-Encoding") == "gzip"
    assert len(res.content) > 1024  # requests decompressed it
    plain = {"Accept-Encoding": "identity"}
    raw = requests.get(f"{hub_url}{script}", headers=plain, verify=cafile, timeout=30)
    assert raw.content == res.content and "Content-Encoding" not in raw.headers


LAB_STATIC = "/opt/venv/share/jupyter/lab/static"  # in the images
HASHED_SCRIPT = re.compile(r"[A-Za-z0-9_-]+\.[0-9a-f]{16,}\.js")


def test_lab_scripts_of_every_image_come_from_nginx_with_no_server_running(
    host, cfg, bob, hub_url, cafile
):
    """JupyterLab's content-hashed scripts of every offered image are on the host, and
    nginx serves them at any user's /user/NAME/static/lab/ (bob has no server): the
    image's bytes, gzipped ahead, to be cached for good. A hashed name the host lacks (a
    server from an older image) goes on to the servers."""
    images = json.loads(host.file(f"{cfg['paths']['etc']}/images.json").content_string)
    current = f"{cfg['paths']['state']}/lab-static/current"
    assert host.file(current).is_symlink
    on_host_sums = dict(
        line.split()[::-1]
        for line in host.check_output(f"cd {current} && sha256sum *.js").splitlines()
    )
    for stack in cfg["hub"]["images"]:
        ref = images["scirepo_images"]["stacks"][stack]["ref"]
        listing = host.check_output(
            f"docker run --rm --entrypoint sh {ref} -c 'cd {LAB_STATIC} && sha256sum *.js'"
        )
        sums = {n: h for h, n in (line.split() for line in listing.splitlines())
                if HASHED_SCRIPT.fullmatch(n)}  # fmt: skip
        assert sums, f"{stack}: no hashed scripts in {LAB_STATIC}"
        assert {n: on_host_sums.get(n) for n in sums} == sums, stack

    name, _ = bob
    core = next(n for n in on_host_sums if n.startswith("jlab_core."))
    gz = {"Accept-Encoding": "gzip"}
    res = requests.get(f"{hub_url}/user/{name}/static/lab/{core}?v=1", headers=gz,
                       verify=cafile, timeout=30)  # fmt: skip
    assert res.status_code == 200, res.text[:300]
    assert res.headers.get("Content-Encoding") == "gzip"
    assert "immutable" in res.headers["Cache-Control"]
    assert "max-age" in res.headers["Strict-Transport-Security"]
    assert hashlib.sha256(res.content).hexdigest() == on_host_sums[core]
    plain = requests.get(f"{hub_url}/user/{name}/static/lab/{core}", verify=cafile, timeout=30,
                         headers={"Accept-Encoding": "identity"})  # fmt: skip
    assert plain.content == res.content and "Content-Encoding" not in plain.headers
    miss = requests.get(f"{hub_url}/user/{name}/static/lab/jlab_core.0123456789abcdef.js",
                        verify=cafile, timeout=30, allow_redirects=False)  # fmt: skip
    assert "immutable" not in miss.headers.get("Cache-Control", "")


def test_hub_cookies_are_secure(hub_url, cafile):
    res = requests.get(f"{hub_url}/hub/login", verify=cafile, timeout=20)
    cookies = res.headers["Set-Cookie"]
    assert "_xsrf=" in cookies and "Secure" in cookies


def test_plain_http_redirects_to_https(host):
    out = host.check_output(
        "python3 -c \"import http.client as h; c = h.HTTPConnection('localhost', 80);"
        " c.request('GET', '/hub/login'); r = c.getresponse();"
        " print(r.status, r.getheader('Location'))\""
    )
    assert out == "301 https://localhost/hub/login"


def test_ssh_login_with_password_and_wrong_password_fails(users, cfg):
    name, password = users.add("s")
    client = ssh_client(cfg, name, password)
    rc, out, _ = ssh_run(client, "id -un; readlink ~/workspace")
    client.close()
    assert rc == 0
    assert out.split() == [name, f"{cfg['paths']['workspaces']}/{name}"]
    with pytest.raises(Exception, match="[Aa]uthentication"):
        ssh_client(cfg, name, password + "x")


def test_root_cannot_log_in_over_ssh(cfg):
    with pytest.raises(Exception, match="[Aa]uthentication"):
        ssh_client(cfg, "root", "anything")


def test_readme_add_a_user_command_makes_a_user_who_logs_in(users, site_path):
    """The README's "Add a user" line, as an operator types it: `scirepo local exec` passes
    the command's own options (--name, --email) on, and the printed password logs in."""
    name = f"rd{secrets.token_hex(3)}"
    users.made.append(name)  # removed with the others
    res = scirepo_cli("local", "exec", "--site", str(site_path), "scirepo", "user", "add", name,
                      "--name", "Read Me", "--email", f"{name}@example.org")  # fmt: skip
    assert res.returncode == 0, res.stderr
    printed = re.search(r"^temporary password: (\S+)$", res.stdout, re.MULTILINE)
    assert printed, res.stdout
    assert users.hub(name).login(printed.group(1))


def test_wrong_password_is_refused_by_the_hub(users):
    name, password = users.add("w")
    assert not users.hub(name).login(password + "x")


def test_non_platform_user_cannot_log_in_to_the_hub(cfg, users):
    """A Unix user outside the platform group is refused even with the right password."""
    name = f"np{secrets.token_hex(3)}"
    on_host(cfg, "useradd", "-M", name)
    on_host(cfg, "chpasswd", input=f"{name}:Outside-Pass-123\n")
    try:
        assert not users.hub(name).login("Outside-Pass-123")
    finally:
        on_host(cfg, "userdel", name)


def test_file_made_in_jupyterlab_is_the_users_file_over_ssh(alice, cfg, host):
    name, password, hub = alice
    hub.put_file("workspace/from-lab.txt", "made in JupyterLab\n")
    client = ssh_client(cfg, name, password)
    rc, out, _ = ssh_run(
        client, "cat ~/workspace/from-lab.txt; stat -c '%u %U' ~/workspace/from-lab.txt"
    )
    client.close()
    assert rc == 0
    text, owner = out.split("\n", 1)
    uid = host.user(name).uid
    assert text == "made in JupyterLab"
    assert owner.split() == [str(uid), name]


def test_server_runs_as_the_user_without_privileges(alice, host):
    name, _, hub = alice
    res = hub.run_code(
        "import os\n"
        "print(os.getuid(), os.getgid(), os.geteuid())\n"
        "st = open('/proc/self/status').read()\n"
        "f = dict(l.split(':\\t', 1) for l in st.splitlines())\n"
        "print(f['NoNewPrivs'].strip(), f['CapEff'].strip())\n"
        "print(os.environ['HOME'])\n"
    )
    assert res["status"] == "ok", res
    ids, privs, home = res["stdout"].splitlines()
    user = host.user(name)
    assert ids.split() == [str(user.uid), str(user.gid), str(user.uid)]
    assert privs.split() == ["1", "0000000000000000"]
    assert home == user.home


def test_server_is_on_the_default_bridge_and_reaches_the_hub_api_on_its_gateway(alice, cfg):
    """User servers run on the engine's default bridge (faster container starts than on a
    user-defined network); the hub's API is published on the bridge's gateway for them."""
    name, _, hub = alice
    gateway = bridge_gateway(cfg)
    box = json.loads(on_host(cfg, "docker", "inspect", f"jupyter-{name}").stdout)[0]
    assert set(box["NetworkSettings"]["Networks"]) == {"bridge"}
    env = dict(item.split("=", 1) for item in box["Config"]["Env"])
    api = f"http://{gateway}:8081/hub/api"
    assert env["JUPYTERHUB_API_URL"] == api
    assert env["JUPYTERHUB_ACTIVITY_URL"] == f"{api}/users/{name}/activity"
    # The server's own token, from inside the container, at that address.
    res = hub.run_code(
        "import json, os, urllib.request\n"
        "req = urllib.request.Request(os.environ['JUPYTERHUB_API_URL'] + '/user',\n"
        "    headers={'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']})\n"
        "print(json.load(urllib.request.urlopen(req, timeout=10))['name'])\n"
    )
    assert (res["status"], res["stdout"]) == ("ok", f"{name}\n"), res


def test_site_data_and_software_are_read_only_in_the_container(alice, cfg):
    _, _, hub = alice
    site = next(iter(cfg["paths"]["sites"].values()))
    res = hub.run_code(
        "import os\n"
        f"for d in [{site!r}, {cfg['paths']['software']!r}]:\n"
        "    try:\n"
        "        open(os.path.join(d, 'x'), 'w')\n"
        "        print('WROTE', d)\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
    )
    assert res["status"] == "ok", res
    lines = res["stdout"].split()
    assert lines[::2] == ["refused", "refused"], res["stdout"]
    # EROFS (30): refused by the read-only mount, not only by modes.
    assert lines[1::2] == ["30", "30"]


def test_users_cannot_read_each_others_workspaces(alice, bob, cfg):
    a_name, a_password, hub = alice
    b_name, b_password = bob
    b_ws = f"{cfg['paths']['workspaces']}/{b_name}"
    client = ssh_client(cfg, b_name, b_password)
    ssh_run(client, "echo secret > ~/workspace/private.txt")
    client.close()
    # Over SSH as A.
    client = ssh_client(cfg, a_name, a_password)
    rc, _, err = ssh_run(client, f"ls {b_ws}; cat {b_ws}/private.txt")
    client.close()
    assert rc != 0 and "Permission denied" in err
    # From A's container (B's workspace is not even mounted there; the host path is refused).
    res = hub.run_code(
        "import os\n"
        f"for p in [{b_ws!r}, {b_ws + '/private.txt'!r}, '/home/{b_name}']:\n"
        "    try:\n"
        "        print(open(p).read() if os.path.isfile(p) else os.listdir(p))\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    assert "secret" not in res["stdout"]
    assert res["stdout"].count("refused") == 3, res


def test_password_changed_over_ssh_is_the_hub_password(users, cfg):
    name, old = users.add("p")
    new = "N3w-" + old[::-1]
    client = ssh_client(cfg, name, old)
    chan = client.get_transport().open_session()
    chan.get_pty()
    chan.exec_command("passwd")
    transcript = ""
    for answer in (old, new, new):
        deadline = time.monotonic() + 15
        while not transcript.rstrip().endswith(":") and time.monotonic() < deadline:
            transcript += chan.recv(1024).decode(errors="replace")
        chan.send(answer + "\n")
        transcript = ""
    rc = chan.recv_exit_status()
    client.close()
    assert rc == 0
    assert users.hub(name).login(new)
    assert not users.hub(name).login(old)


def test_hub_restart_leaves_servers_running_and_reachable(alice, cfg):
    name, _, hub = alice
    before = on_host(cfg, "docker", "inspect", "-f", "{{.Id}}", f"jupyter-{name}").stdout
    assert on_host(cfg, "systemctl", "restart", "scirepo-hub").returncode == 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if hub.api("GET", f"/users/{name}").status_code == 200:
                break
        except OSError:
            pass
        time.sleep(1)
    assert on_host(cfg, "docker", "inspect", "-f", "{{.Id}}", f"jupyter-{name}").stdout == before
    assert hub.server("GET", "api/status").status_code == 200


def test_second_deploy_changes_nothing(local_host, site_path, cfg):
    res = deploy_local(site_path)
    assert res.returncode == 0, res.stdout[-3000:]
    recap = ansible_recap(res.stdout)
    assert recap[cfg["local"]["container"]]["changed"] == 0, changed_tasks(res.stdout)
    assert recap[cfg["local"]["container"]]["failed"] == 0


def test_admins_come_from_the_site_config(cfg, users, alice):
    """The configured admin exists, logs in with the password make up fetched, and is a hub
    admin; other users are not."""
    admin = cfg["users"]["admins"][0]
    assert on_host(cfg, "id", "-nG", admin).stdout.split()[1:] == [cfg["users"]["group"]]
    creds = deploy.CREDENTIALS / cfg["local"]["container"] / f"admin-{admin}"
    assert creds.stat().st_mode & 0o777 == 0o600
    password = creds.read_text().split("password:", 1)[1].strip()
    hub = users.hub(admin)
    assert hub.login(password)
    assert hub.api("GET", f"/users/{admin}").json()["admin"] is True
    name, _, hub = alice
    assert hub.api("GET", f"/users/{name}").json()["admin"] is False
    # Only an admin may list all users: the API refuses a plain user.
    assert hub.api("GET", "/users").status_code == 403


def test_stopped_server_container_is_removed(users, cfg):
    name, _, hub = users.logged_in("r")
    hub.start_server()
    assert on_host(cfg, "docker", "inspect", f"jupyter-{name}").returncode == 0
    hub.stop_server()
    gone = on_host(cfg, "docker", "inspect", f"jupyter-{name}")
    assert gone.returncode != 0 and "No such object" in gone.stderr


def test_server_that_exits_at_start_fails_fast_naming_its_container(users, cfg):
    """The spawner waits for a starting server itself (every 50 ms) and watches its
    container: a server that exits before it answers fails its start at once, with the
    container named, not after the hub's 60 s wait; the next start works again."""
    name, password, hub = users.logged_in("x")
    client = ssh_client(cfg, name, password)
    config = ".jupyter/jupyter_server_config.py"
    try:
        code, _, err = ssh_run(
            client, f"mkdir -p .jupyter && echo 'import os; os._exit(3)' > {config}"
        )
        assert code == 0, err
        t0 = time.monotonic()
        with pytest.raises(HubError) as failed:
            hub.start_server(deadline=120, progress=True)
        took = time.monotonic() - t0
        message = str(failed.value)
        assert f"jupyter-{name}" in message and "stopped" in message, message
        assert took < 20, f"the failed start took {took:.1f} s"
        assert ssh_run(client, f"rm {config}")[0] == 0
        hub.start_server(deadline=120, progress=True)
        assert hub.server("GET", "api/status").status_code == 200
    finally:
        client.close()
        hub.stop_server()
