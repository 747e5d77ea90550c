"""Tests of the base notebook image, run on every stack: each child inherits them.

`conftest.py` says which images (every stack of the build, or SCIREPO_TEST_IMAGE). Each
test runs real containers of the image with Debian's docker client: the locked packages are
what is installed, the entrypoint drops root for good to the user the hub names, the image
has no setuid binaries nor sudo, and JupyterLab serves its API.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
import uuid

import pytest

from scirepo import images
from scirepo.progress import wait_for
from tests.images.conftest import REPO
from tests.images.containers import UID, USER_ENV, docker, make_home, remove_home

# What `python3 -m venv` puts in a venv besides the lock.
VENV_SEED = {"pip", "setuptools", "wheel"}


@pytest.fixture
def home():
    """A home directory owned by the test user, as the hub mounts it."""
    path = make_home()
    yield path
    remove_home(path)


def test_manifest_matches_the_lock(manifest, locked):
    lock = REPO / "images" / manifest["name"] / "requirements.txt"
    lock_text = lock.read_text() if lock.exists() else ""
    for package, version in manifest["packages"].items():
        assert locked[package] == version
    assert manifest["lock_sha256"] == hashlib.sha256(lock_text.encode()).hexdigest()


def test_installed_packages_are_exactly_the_lock(image, locked, local_packages):
    out = image.run(
        "pip",
        "list",
        "--format",
        "json",
        opts=("--user", "65534:65534", "-e", "PIP_NO_CACHE_DIR=1"),
    ).stdout
    installed = {images.normalize(p["name"]): p["version"] for p in json.loads(out)}
    wrong = {p: (v, installed.get(p)) for p, v in locked.items() if installed.get(p) != v}
    assert not wrong, f"locked version != installed version: {wrong}"
    # This repository's own packages (scirepo-fs) at the version of their source.
    assert {p: installed.get(p) for p in local_packages} == local_packages
    extra = set(installed) - set(locked) - VENV_SEED - set(local_packages)
    assert not extra, f"installed but not locked: {sorted(extra)}"


def test_headline_packages_import_at_locked_versions(image, locked):
    code = "import jupyterlab, jupyterhub; print(jupyterlab.__version__, jupyterhub.__version__)"
    lab, hub = image.run("python", "-c", code, opts=("--user", "65534:65534")).stdout.split()
    assert (lab, hub) == (locked["jupyterlab"], locked["jupyterhub"])


def test_singleuser_server_reports_the_hub_version(image, locked):
    out = image.run("jupyterhub-singleuser", "--version", opts=("--user", "65534:65534")).stdout
    assert out.strip() == locked["jupyterhub"]


def test_image_command_is_scirepo_singleuser(image):
    assert json.loads(image.inspect("{{json .Config.Cmd}}")) == ["scirepo-singleuser"]


# What the hub's spawner puts in a server's environment (the parts the server reads).
HUB_ENV = {
    "JUPYTERHUB_API_TOKEN": "t",
    "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
    "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-ann",
    "JUPYTERHUB_SERVICE_PREFIX": "/user/ann/",
    "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/ann/",
    "JUPYTERHUB_USER": "ann",
    "JUPYTERHUB_OAUTH_ACCESS_SCOPES": '["access:servers!server=ann/"]',
}
HUB_ENV_OPTS = tuple(arg for key, value in HUB_ENV.items() for arg in ("-e", f"{key}={value}"))

# Run in the image, with HUB_ENV: the module's rules, and what importing it costs.
SINGLEUSER_CHECKS = """
import os
import sys
import scirepo_singleuser as su

# The reason the module exists: none of jupyterhub's import chain is loaded.
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jupyterhub', 'sqlalchemy', 'alembic'))
assert not heavy, heavy

need = {'access:servers!server=ann/', 'access:servers!user=ann'}
for have, ok in [
    ('access:servers', True),
    ('access:servers!user=ann', True),
    ('access:servers!server=ann/', True),
    ('access:servers!user=anna', False),
    ('access:servers!user=an', False),
    ('access:servers!server=ann/other', False),
    ('access:servers!server=bob/', False),
    ('access:servers!group=ann', False),
    ('read:servers!user=ann', False),
    ('access:services', False),
    ('admin:servers', False),
]:
    assert su.has_access([have], need) is ok, have
named = {'access:servers!server=ann/lab2'}
assert su.has_access(['access:servers!user=ann'], named)
assert not su.has_access(['access:servers!server=ann/'], named)

env = {k: v for k, v in os.environ.items() if k.startswith('JUPYTERHUB_')}
hub = su.HubSettings(env)
assert (hub.hub_prefix, hub.callback_url) == ('/hub/', '/user/ann/oauth_callback')
for bad, word in [
    ({k: v for k, v in env.items() if k != 'JUPYTERHUB_API_TOKEN'}, 'JUPYTERHUB_API_TOKEN'),
    ({**env, 'JUPYTERHUB_OAUTH_ACCESS_SCOPES': '[oops'}, 'JSON'),
    ({**env, 'JUPYTERHUB_DISABLE_USER_CONFIG': '1'}, 'JUPYTERHUB_DISABLE_USER_CONFIG'),
]:
    try:
        su.HubSettings(bad)
    except su.ConfigError as e:
        assert word in str(e), e
    else:
        raise AssertionError(bad)

ip = su.HubIdentityProvider.__new__(su.HubIdentityProvider)
ip.hub = hub
for next_url, want in [
    ('/user/ann/lab?x=1', '/user/ann/lab?x=1'),
    ('https://evil.example/user/ann/', '/user/ann/'),
    ('//evil.example/user/ann/', '/user/ann/'),
    ('/user/bob/lab', '/user/ann/'),
    ('/user/ann\\@evil', '/user/ann/'),
    ('', '/user/ann/'),
]:
    assert ip.safe_next(next_url) == want, (next_url, ip.safe_next(next_url))
# Logins begun by anyone stay bounded in memory; the newest ones survive.
class Request:
    protocol = 'https'


class Handler:
    request = Request()

    def set_secure_cookie(self, *args, **kwargs):
        pass


ip.states = {}
urls = [ip.begin_login(Handler(), '/user/ann/lab') for _ in range(su.STATES_MAX + 50)]
assert len(ip.states) == su.STATES_MAX
newest = dict(p.split('=', 1) for p in urls[-1].split('?', 1)[1].split('&'))['state']
assert newest in ip.states
entries = dict.fromkeys(range(10))
su._keep_newest(entries, 3)
assert list(entries) == [7, 8, 9]
print('ok')
"""


def test_singleuser_rules_and_imports(image):
    out = image.run(
        "python", "-c", SINGLEUSER_CHECKS, opts=("--user", "65534:65534", *HUB_ENV_OPTS)
    )
    assert out.stdout.strip() == "ok"


def test_singleuser_refuses_to_start_without_the_hubs_environment(image):
    res = image.run("scirepo-singleuser", opts=("--user", "65534:65534"), check=False)
    assert res.returncode == 1
    assert "missing in the environment: JUPYTERHUB_API_TOKEN" in res.stderr


def status(proc_status: str, field: str) -> str:
    return re.search(rf"^{field}:\s*(\S+)", proc_status, re.M).group(1)


def test_entrypoint_drops_root_for_good(image):
    out = image.run(
        "sh", "-c", "id -u; id -g; id -un; echo $HOME $USER; cat /proc/self/status", user_env=True
    ).stdout
    uid, gid, name, env_line, *rest = out.splitlines()
    assert (uid, gid, name) == (str(UID), str(UID), "alice")
    assert env_line == "/home/alice alice"
    proc = "\n".join(rest)
    assert status(proc, "NoNewPrivs") == "1"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status(proc, caps), 16) == 0, caps
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", proc, re.M)
    assert re.search(rf"^Gid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", proc, re.M)


def test_entrypoint_groups_from_nb_groups(image):
    out = image.run(
        "sh",
        "-c",
        "id -gn; id -G; id -Gn",
        opts=("-e", "NB_GROUPS=alice:23456,scirepo-users:23500,users:23501"),
        user_env=True,
    ).stdout.splitlines()
    assert out[0] == "alice"
    assert sorted(out[1].split()) == sorted(["23456", "23500", "23501"])
    # "users" exists in Debian with gid 100: the host's gid is kept under another name.
    assert "scirepo-users" in out[2].split() and "g23501" in out[2].split()


def test_entrypoint_writes_consistent_account_files(image, home):
    """The entries the entrypoint writes itself (no useradd) are whole and consistent:
    shadow's own checkers find nothing wrong with the user or its groups."""
    script = (
        "scirepo-start true && getent passwd alice && getent shadow alice"
        " && getent group alice scirepo-users staff"
        " && grep -E '^(alice|scirepo-users|staff):' /etc/gshadow;"
        " pwck -r | grep alice; grpck -r; echo grpck $?"
    )
    lines = image.run(
        "-c",
        script,
        opts=(
            "--entrypoint",
            "sh",
            "-v",
            f"{home}:/home/alice",
            "-e",
            "NB_GROUPS=alice:23456,scirepo-users:23500,staff:50",
        ),
        user_env=True,
    ).stdout.splitlines()
    assert lines[:2] == [f"alice:x:{UID}:{UID}::/home/alice:/bin/bash", "alice:!:::::::"]
    assert lines[2:5] == [f"alice:x:{UID}:", "scirepo-users:x:23500:alice", "staff:x:50:alice"]
    assert lines[5:8] == ["staff:*::alice", "alice:!::", "scirepo-users:!::alice"]
    # pwck names no problem with alice (her home exists); grpck none at all.
    assert lines[8:] == ["grpck 0"], lines


def test_entrypoint_sets_the_group_list_again_on_each_start(image):
    """A restarted container keeps /etc: each start makes the user a member of exactly the
    groups NB_GROUPS names now (left groups dropped, new ones added, other members kept)."""
    script = (
        # A line that is not an entry (blank) is kept as it is.
        "echo >> /etc/group;"
        " NB_GROUPS=alice:23456,staff:50,proj-a:23600 scirepo-start id -Gn;"
        " NB_GROUPS=alice:23456,proj-b:23601 scirepo-start id -Gn;"
        " getent group staff proj-a proj-b; grep -c '^$' /etc/group"
    )
    out = image.run("-c", script, opts=("--entrypoint", "sh"), user_env=True).stdout.splitlines()
    assert out[0].split() == ["alice", "staff", "proj-a"]
    assert out[1].split() == ["alice", "proj-b"]
    assert out[2:] == ["staff:x:50:", "proj-a:x:23600:", "proj-b:x:23601:alice", "1"]


def test_entrypoint_refuses_a_home_that_passwd_cannot_hold(image):
    for home in ("/home/al:ice", "/home/al\nice", "home/alice"):
        res = image.run("id", opts=("-e", f"NB_HOME={home}"), user_env=True, check=False)
        assert res.returncode == 1, home
        assert f"NB_HOME '{home}'" in res.stderr, res.stderr


def test_entrypoint_refuses_root_and_missing_identity(image):
    res = image.run("id", opts=("-e", "NB_USER=alice", "-e", "NB_UID=0"), check=False)
    assert res.returncode == 1 and "NB_UID is 0" in res.stderr
    res = image.run(
        "id", check=False, opts=("-e", "NB_USER=alice", "-e", "NB_UID=1000", "-e", "NB_GID=0")
    )
    assert res.returncode == 1 and "NB_GID is 0" in res.stderr
    res = image.run("id", check=False)
    assert res.returncode == 1 and "NB_USER and NB_UID" in res.stderr
    res = image.run("id", opts=("-e", "NB_USER=Bad;name", "-e", "NB_UID=1000"), check=False)
    assert res.returncode == 1 and "not a valid user name" in res.stderr


def test_entrypoint_not_root_execs_directly(image):
    assert image.run("id", "-u", opts=("--user", "4321:4321")).stdout.strip() == "4321"


def test_restarted_container_starts_again(image):
    name = f"scirepo-test-{uuid.uuid4().hex[:8]}"
    try:
        docker("run", "--name", name, *USER_ENV, image.ref, "id", "-u")
        out = docker("start", "-a", name).stdout
        assert out.strip() == str(UID)
    finally:
        docker("rm", "-f", name, check=False)


def test_files_in_the_home_belong_to_the_user(image, home):
    image.run(
        "sh", "-c", "touch ~/made-here && pwd", user_env=True, opts=("-v", f"{home}:/home/alice")
    )
    made = home / "made-here"
    assert (made.stat().st_uid, made.stat().st_gid) == (UID, UID)


def test_no_setuid_or_setgid_files(image):
    out = image.run(
        "/", "-xdev", "-perm", "/6000", "-type", "f", opts=("--entrypoint", "find")
    ).stdout
    assert out.strip() == ""


def test_no_sudo(image):
    res = image.run(
        "-c", "command -v sudo su-exec doas gosu", opts=("--entrypoint", "sh"), check=False
    )
    assert res.stdout.strip() == ""


def test_jupyterlab_serves_its_api_and_extension_as_the_user(image, home):
    name = f"scirepo-test-{uuid.uuid4().hex[:8]}"
    lab = ["jupyter", "lab", "--no-browser", "--port", "8888", "--ServerApp.token=x"]
    # All interfaces of the container's own network namespace; published on loopback only.
    lab += ["--ip", "0.0.0.0"]  # noqa: S104
    opts = ["-v", f"{home}:/home/alice", "-p", "127.0.0.1::8888"]
    # The hosts of JupyterLab's news feed and update check are the container's loopback,
    # where a listener counts the connections (below).
    opts += [f"--add-host={h}:127.0.0.1" for h in ("pypi.org", "jupyterlab.github.io")]
    docker("run", "-d", "--name", name, *USER_ENV, *opts, image.ref, *lab)
    try:
        port = docker("port", name, "8888/tcp").stdout.split(":")[-1].strip()
        url = f"http://127.0.0.1:{port}/api/status"

        def answers() -> bool:
            req = urllib.request.Request(url, headers={"Authorization": "token x"})
            with urllib.request.urlopen(req, timeout=3) as r:  # noqa: S310 - loopback test
                return r.status == 200 and "started" in json.loads(r.read())

        wait_for("JupyterLab's /api/status", answers, deadline=60)
        # Every process in the container, PID 1 (tini) included, runs as the user.
        top = docker("top", name, "-o", "uid,pid,comm").stdout.splitlines()[1:]
        assert top and all(line.split()[0] == str(UID) for line in top), top
        # JupyterLab offers scirepo's own extension to the page, and serves its code.
        base = f"http://127.0.0.1:{port}"
        page = _get(f"{base}/lab")
        config = r'<script id="jupyter-config-data" type="application/json">(.*?)</script>'
        found = re.search(config, page, re.S)
        assert found, page[:500]
        page_config = json.loads(found.group(1))
        federated = page_config["federated_extensions"]
        mine = [e for e in federated if e["name"] == "scirepo-lab"]
        assert mine and mine[0]["extension"] == "./extension", federated
        code = _get(f"{base}/lab/extensions/scirepo-lab/{mine[0]['load']}")
        assert "containers[NAME] = {" in code and '"launcher:create"' in code
        # JupyterLab's language-server plugins are off, as is the server extension they
        # would ask (jupyter_lsp): no /lsp/status request that can only get a 404.
        lsp = {
            "@jupyterlab/lsp-extension",
            "@jupyterlab/notebook-extension:language-server",
            "@jupyterlab/fileeditor-extension:language-server",
        }
        assert lsp <= set(page_config["disabledExtensions"]), page_config["disabledExtensions"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            _get(f"{base}/lsp/status")
        assert missing.value.code == 404
        # No news prompt, news feed or update check: the announcements plugin is off, and
        # the server would not fetch them either (its news is off, its checker never asks).
        announcements = "@jupyterlab/apputils-extension:announcements"
        assert announcements in page_config["disabledExtensions"], page_config["disabledExtensions"]
        assert page_config["news"] == {"disabled": True}, page_config["news"]
        # The extension manager lists what the image has and offers no install: the venv
        # is not the user's to write, so an install from PyPI could only fail.
        manager = page_config["extensionManager"]
        assert manager["name"] == "read-only" and manager["can_install"] is False, manager
        installed = json.loads(_get(f"{base}/lab/api/extensions?refresh=0"))
        assert "scirepo-lab" in {e["name"] for e in installed}, installed
        listen = (
            "import socket\n"
            "s = socket.create_server(('127.0.0.1', 443))\n"
            "open('/tmp/ready', 'w').close()\n"
            "while True:\n"
            "    c, _ = s.accept(); c.close()\n"
            "    open('/tmp/hits', 'a').write('x')\n"
        )
        docker("exec", "-d", "-u", "0", name, "python3", "-c", listen)
        hits = ["sh", "-c", "sleep 0.5; cat /tmp/hits 2>/dev/null; true"]

        def listening() -> bool:
            return docker("exec", name, "test", "-e", "/tmp/ready", check=False).returncode == 0

        wait_for("the listener", listening, deadline=20)
        # It counts: a connection to pypi.org is one.
        connect = "import socket; socket.create_connection(('pypi.org', 443))"
        docker("exec", name, "python3", "-c", connect)
        assert docker("exec", name, *hits).stdout == "x"
        assert json.loads(_get(f"{base}/lab/api/news")) == {"news": []}
        assert json.loads(_get(f"{base}/lab/api/update")) == {"notification": None}
        assert docker("exec", name, *hits).stdout == "x", "the server asked the internet"
    except BaseException:
        print(docker("logs", name, check=False).stderr[-3000:])
        raise
    finally:
        docker("rm", "-f", name, check=False)


def _get(url: str) -> str:
    req = urllib.request.Request(url, headers={"Authorization": "token x"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback test
        return r.read().decode()


def run_with_hub_env(image, home, code: str, *args: str) -> dict:
    """Run Python `code` (with `args`) in the image as the test user, with `home` and the
    hub's environment (HUB_ENV); the JSON of its last line of output."""
    res = image.run(
        "python3",
        "-c",
        code,
        *args,
        opts=("-v", f"{home}:/home/alice", *HUB_ENV_OPTS),
        user_env=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


# Run in the image, with HUB_ENV: the server's kernel spec manager once it is set up.
KERNELSPECS_CHECK = """
import json, sys
import scirepo_singleuser
argv = list(sys.argv)
ksm = scirepo_singleuser.set_up(*sys.argv[1:]).kernel_spec_manager
specs = ksm.get_all_specs()
ipython = 'IPython' in sys.modules
from jupyter_client.kernelspec import KernelSpecManager
stock = KernelSpecManager()
print(json.dumps({'class': type(ksm).__name__, 'ipython': ipython, 'names': sorted(specs),
                  'same': specs == stock.get_all_specs(), 'dirs': ksm.kernel_dirs,
                  'stock_dirs': stock.kernel_dirs, 'argv_kept': sys.argv == argv}))
"""


def test_server_finds_kernel_specs_without_importing_ipython(image, home):
    """The server's kernel specs are jupyter_client's, from the same directories, found
    without importing IPython into the server (scirepo_singleuser/kernelspecs.py); a
    config that names its own manager keeps it."""

    def check(*args: str) -> dict:
        return run_with_hub_env(image, home, KERNELSPECS_CHECK, *args)

    found = check()
    assert found["class"] == "KernelSpecs" and not found["ipython"], found
    assert found["argv_kept"], found  # set_up() gives the caller its sys.argv back
    assert found["same"] and "python3" in found["names"], found
    assert found["dirs"] == found["stock_dirs"], found
    assert found["dirs"][-1] == "/home/alice/.ipython/kernels", found
    own = check("--ServerApp.kernel_spec_manager_class=jupyter_client.kernelspec.KernelSpecManager")
    assert own["class"] == "KernelSpecManager", own


LAB_SETTINGS_CHECK = """
import json, os, sys, tempfile
home = tempfile.mkdtemp()
os.environ["HOME"] = home
mine = os.path.join(home, ".jupyter/lab/user-settings/@jupyterlab/apputils-extension")
os.makedirs(mine)
with open(os.path.join(mine, "themes.jupyterlab-settings"), "w") as f:
    f.write('{"theme": "JupyterLab Dark"}')
with open(os.path.join(mine, "notification.jupyterlab-settings"), "w") as f:
    f.write('{"fetchNews": 7}')  # not a string: refused with a warning
from jupyterlab.labapp import LabApp
from jupyterlab_server import settings_utils, translation_utils
from jupyterlab_server.translation_utils import translator
from scirepo_singleuser import labsettings
lab = LabApp()
dirs = dict(app_settings_dir=lab.app_settings_dir, schemas_dir=lab.schemas_dir,
            settings_dir=lab.user_settings_dir,
            labextensions_path=lab.extra_labextensions_path + lab.labextensions_path)
translator.set_locale(translation_utils.SYS_LOCALE)  # what the settings handler does
def answers():
    every = settings_utils.get_settings(translator=translator.translate_schema, **dirs)
    one = settings_utils.get_settings(schema_name="@jupyterlab/apputils-extension:themes",
                                      translator=translator.translate_schema, **dirs)
    return json.dumps([every, one], sort_keys=True)
before = [answers(), answers()]
applied = labsettings.apply()
preloaded = len(settings_utils.Validator.passed)  # from the image's record, before any call
after = [answers(), answers()]
again = os.path.join(tempfile.mkdtemp(), "checked")
recorded = labsettings.record(again)
with open(labsettings.CHECKED) as a, open(again) as b:
    same_record = a.read() == b.read()
broken = dict(json.loads(before[0])[0][0]["settings"][0]["schema"], type=7)
try:
    settings_utils.Validator.check_schema(broken)
    refused = False
except Exception:
    refused = True
print(json.dumps({"applied": applied, "locale": translator._LOCALE, "same": after == before,
                  "answer": json.loads(after[-1]), "refused": refused,
                  "preloaded": preloaded, "recorded": recorded, "same_record": same_record}))
"""


def test_lab_settings_answers_are_the_same_without_the_spared_work(image):
    """scirepo-singleuser's settings speed-ups (scirepo_singleuser/labsettings.py) change
    nothing in the settings API's answers: every plugin's settings and one plugin's, with a
    user setting kept and an invalid one refused with its warning; a broken schema is
    still refused. The schemas checked when the image was built are every schema served."""
    res = image.run("python3", "-c", LAB_SETTINGS_CHECK, opts=("--user", "65534:65534"))
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert found["applied"] and found["same"] and found["refused"], found
    # The image was built with the record of its schemas, loaded before any call: it is
    # what checking them again gives, every schema the listing serves.
    assert found["same_record"] and found["preloaded"] == found["recorded"], found
    # Why the translation walk ran for nothing: LANG=C.UTF-8 reads as en_US, which has no
    # language pack here.
    assert found["locale"] == "en_US"
    (every, warnings), (one, _) = found["answer"]
    assert len(every["settings"]) > 50
    assert found["recorded"] == len(every["settings"]), found["recorded"]
    assert one["settings"] == {"theme": "JupyterLab Dark"}
    assert len(warnings) == 1 and "apputils-extension:notification" in warnings[0], warnings


# Run in the image, with HUB_ENV: the modules a server's start leaves unrun (deferred.py),
# then each one's first use, once the server serves.
DEFERRED_CHECK = """
import asyncio, json, sys
import scirepo_singleuser
from scirepo_singleuser import deferred
server = scirepo_singleuser.set_up()
pending = deferred.pending()
urllib3 = 'urllib3' in sys.modules
ext = next(iter(server.extension_manager.extension_apps['scirepo_singleuser']))
asyncio.run(ext._start_jupyter_server_extension(server))  # as the server starts serving
finders = [f for f in sys.meta_path if getattr(f, deferred.MARK, False)]
import arrow, babel, platformdirs, requests, uri_template, webcolors, websocket
from jsonschema import Draft3Validator, Draft202012Validator
formats = Draft202012Validator.FORMAT_CHECKER
uses = {
    'arrow': arrow.get('2026-12-04T10:00:00+00:00').year,
    'babel': babel.Locale.parse('fr_FR').get_display_name('en'),
    'platformdirs': platformdirs.user_data_dir('jupyter', appauthor=False),
    'requests': requests.Session().headers['User-Agent'].split('/')[0],
    'uri_template': [uri_template.validate('/user/{name}'), uri_template.validate('/x/{y')],
    'webcolors': webcolors.name_to_hex('white'),
    'websocket': websocket.WebSocket.__name__,
    'formats': [formats.conforms('P1D', 'duration'), formats.conforms('P1X', 'duration'),
                formats.conforms('/x/{y', 'uri-template'),
                Draft3Validator.FORMAT_CHECKER.conforms('not a colour', 'color')],
}
print(json.dumps({'pending': pending, 'listed': sorted(deferred.MODULES), 'urllib3': urllib3,
                  'finders': len(finders), 'uses': uses, 'left': deferred.pending()}))
"""


def test_server_start_leaves_the_modules_it_does_not_use_unrun(image, home):
    """Every module deferred.py lists is imported by the server's start but not run until
    its first use (requests, and with it urllib3, not at all); once the server serves,
    imports are as usual, and each module works at its first use, as do jsonschema's
    formats that use them."""
    found = run_with_hub_env(image, home, DEFERRED_CHECK)
    assert found["pending"] == found["listed"], found
    assert not found["urllib3"] and found["finders"] == 0 and found["left"] == [], found
    assert found["uses"] == {
        "arrow": 2026,
        "babel": "French (France)",
        "platformdirs": "/home/alice/.local/share/jupyter",
        "requests": "python-requests",
        "uri_template": [True, False],
        "webcolors": "#ffffff",
        "websocket": "WebSocket",
        "formats": [True, False, False, False],
    }, found["uses"]


# Run in the image, with HUB_ENV: which regular expressions a server's start compiles in
# Python, the record made when the image was built, and a record of another Python.
REGEXES_CHECK = """
import json, marshal, os, re, sys, tempfile
from re import _compiler
python_compile = _compiler.compile
missed = []
def counting(p, flags=0):  # what the record lacks reaches Python's own compile
    missed.append(p if isinstance(p, str) else repr(p))
    return python_compile(p, flags)
_compiler.compile = counting
import scirepo_singleuser  # installs the record first (regexes.py)
from scirepo_singleuser import regexes
installed = getattr(_compiler.compile, regexes.MARK, None)
server = scirepo_singleuser.set_up()
at_start = list(missed)
import asyncio
set_up = [getattr(_compiler.compile, regexes.MARK, None)]
ext = next(iter(server.extension_manager.extension_apps['scirepo_singleuser']))
asyncio.run(ext._start_jupyter_server_extension(server))  # as the server starts serving
set_up.append(getattr(_compiler.compile, regexes.MARK, None))
table = regexes.read()
unlike = [p for (p, f), args in table.items()
          if not regexes.same(regexes.build(p, args), python_compile(p, f))]
import jinja2.lexer
# Not recorded: compiled by Python, as before.
new = re.compile(r"(?P<who>[a-z]+)-" + str(os.getpid()))
fresh = (new.pattern, 0) not in table and new.match("ann-%d" % os.getpid())["who"] == "ann"
other = os.path.join(tempfile.mkdtemp(), "regexes")
with open(other, "wb") as f:
    marshal.dump((("another Python",), table), f)
regexes.uninstall()
prefix = os.environ['JUPYTERHUB_SERVICE_PREFIX']
print(json.dumps({'installed': installed, 'set_up': set_up, 'recorded': len(table),
                  'unlike': unlike[:5],
                  'jinja2': (jinja2.lexer.name_re.pattern, 0) in table, 'fresh': fresh,
                  'missed': [m[:80] for m in at_start if prefix not in m],
                  'routes': sum(prefix in m for m in at_start),
                  'other': [len(regexes.read(other)), regexes.install(other)],
                  'uninstalled': _compiler.compile is counting}))
"""


def test_server_start_compiles_its_regular_expressions_from_the_record(image, home):
    """The regular expressions a server's start compiles come from the record made when
    the image was built (scirepo_singleuser/regexes.py): each recorded one is the pattern
    object Python compiles itself; Python compiles only the server's own routes (they name
    the user) and patterns whose text changes with every process; the record is let go
    once the server serves; a pattern not recorded is compiled as before; a record
    written by another Python is not used."""
    found = run_with_hub_env(image, home, REGEXES_CHECK)
    assert found["installed"] == "installed" and found["uninstalled"], found
    # Once the server serves, Python's own compile is back and the record let go.
    assert found["set_up"] == ["installed", None], found
    assert found["recorded"] > 250 and found["unlike"] == [], found
    assert found["jinja2"] and found["fresh"], found  # jinja2's identifier class: 25-40 ms
    assert found["routes"] > 20, found
    # Left to Python at start: patterns built from a set, in string hash order, which
    # differs from process to process (tokenize's string prefixes), and locale's, which
    # the recording did not compile. Without the record Python compiles some 310.
    assert len(found["missed"]) <= 5, found["missed"]
    assert found["other"] == [0, 0], found


def test_server_starts_without_the_slow_optional_imports(image):
    """The locks leave out what costs every server start time and memory for nothing
    (images.LOCK_OMIT), and the server extensions that serve nothing here are off."""
    code = (
        "import importlib.util, json, sys\n"
        "import jupyter_server.serverapp, jupyterlab\n"
        "from jupyter_core.paths import jupyter_config_path\n"
        "from jupyter_server.extension.config import ExtensionConfigManager\n"
        f"omitted = {sorted(images.LOCK_OMIT)!r}\n"
        "config = ExtensionConfigManager(read_config_path=jupyter_config_path())\n"
        "print(json.dumps({'installed': [p for p in omitted\n"
        "                                if importlib.util.find_spec(p.replace('-', '_'))],\n"
        "                  'loaded': sorted(m for m in sys.modules if m.startswith('rfc3987')),\n"
        "                  'extensions': config.get_jpserver_extensions()}))\n"
    )
    res = docker("run", "--rm", *USER_ENV, image.ref, "python3", "-c", code)
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert found["installed"] == [] and found["loaded"] == [], found
    assert found["extensions"].get("jupyter_lsp") is False, found
    assert found["extensions"].get("notebook_shim") is False, found
