#!/usr/bin/python3
"""pct for the lab node: the subset of Proxmox's `pct` the program uses, backed by the lab's fakepve.

Installed as /usr/sbin/pct in the node tree by lab/lab-up.sh; runs there (python3 of
the node's Debian 12). Power state lives in fakepve, reached through its API with a root@pam
ticket (credentials in /etc/pve-lab/api.json, root-only). Containers are real LXC containers
(the lab's API starts them with lxc-start; their trees are /var/lib/lxc/<id>/rootfs).

    pct list
    pct status <id> [--verbose]
    pct start|stop|reboot|shutdown <id> [--timeout N] [--forceStop 1]
    pct config <id>                  the main section of /etc/pve/lxc/<id>.conf (pmxcfs stand-in)
    pct set <id> --key value ...     PUT .../config (API keys only, like pct set)
    pct unlock <id>
    pct exec <id> [--keep-env 0|1] [--] <command> [args...]

`pct exec` is PVE's (pve-container src/PVE/CLI/pct.pm, exec): the container must be running,
SSL_CERT_FILE and SSL_CERT_DIR are dropped (clean_environment), then `lxc-attach -n <id>
--keep-env|--clear-env -- <command>` (keep-env 1 is PVE 8's default). So stdin, stdout,
stderr, the exit code and signals are lxc-attach's; the command runs in the container's
namespaces beside its systemd, and outlives a killed `pct exec`, as on PVE. Lab only: the
node's SYSFS_ROOT/DEV_ROOT are dropped too, and apt's downloaded packages are shared between
container trees through /var/cache/lab-apt (hard links in before the command, new ones
back after it).

Every call is logged to /var/log/pct.log: `<time> <pid> pct <args>` when it starts and
`<time> <pid> exit <code> <seconds>s` when it ends. Errors print PVE's message and exit 255.
"""

import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

API_FILE = '/etc/pve-lab/api.json'
LOG = '/var/log/pct.log'
LXC = '/var/lib/lxc'
CONF_DIR = '/etc/pve/lxc'
APT_SHARED = '/var/cache/lab-apt'
DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
LAB_ONLY_ENV = ('SYSFS_ROOT', 'DEV_ROOT')
CLEANED_ENV = ('SSL_CERT_FILE', 'SSL_CERT_DIR')  # pct.pm clean_environment


class Die(Exception):
    pass


def now():
    return time.strftime('%Y-%m-%dT%H:%M:%S%z')


def logline(text):
    try:
        with open(LOG, 'a', encoding='utf-8') as fh:
            fh.write('{0} {1} {2}\n'.format(now(), os.getpid(), text.replace('\n', '\\n')))
    except OSError:
        pass


# ------------------------------------------------------------------------- API

class Api(object):
    def __init__(self):
        try:
            with open(API_FILE, encoding='utf-8') as fh:
                cfg = json.load(fh)
        except OSError as e:
            raise Die('cannot read {0} ({1}); is this the lab node?'.format(API_FILE, e.strerror))
        self.url = cfg['url'].rstrip('/') + '/api2/json'
        self.node = cfg['node']
        self.user, self.password = cfg['username'], cfg['password']
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ticket = self.csrf = None

    def _call(self, method, path, data=None, auth=True):
        body = urllib.parse.urlencode(data or {}).encode() if method != 'GET' else None
        url = self.url + path
        if method == 'GET' and data:
            url += '?' + urllib.parse.urlencode(data)
        req = urllib.request.Request(url, data=body, method=method)
        if auth:
            req.add_header('Cookie', 'PVEAuthCookie=' + self.ticket)
            if method != 'GET':
                req.add_header('CSRFPreventionToken', self.csrf)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=60) as resp:
                return json.load(resp).get('data')
        except urllib.error.HTTPError as e:
            try:
                msg = (json.load(e).get('message') or e.reason).strip()
            except ValueError:
                msg = str(e.reason)
            raise Die(msg)
        except (urllib.error.URLError, OSError) as e:
            raise Die('cannot reach the PVE API at {0}: {1}'.format(self.url, getattr(e, 'reason', e)))

    def call(self, method, path, data=None):
        if self.ticket is None:
            got = self._call('POST', '/access/ticket', {'username': self.user, 'password': self.password},
                             auth=False)
            self.ticket, self.csrf = got['ticket'], got['CSRFPreventionToken']
        return self._call(method, path, data)

    def ct(self, vmid, tail='', method='GET', data=None):
        return self.call(method, '/nodes/{0}/lxc/{1}{2}'.format(self.node, vmid, tail), data)

    def wait(self, upid):
        """Wait for a worker task; Die with its exit status if it failed."""
        path = '/nodes/{0}/tasks/{1}/status'.format(self.node, urllib.parse.quote(upid, safe=''))
        while True:
            st = self.call('GET', path)
            if st.get('status') == 'stopped':
                if st.get('exitstatus') != 'OK':
                    # as pct runs the task in the foreground: its output (a hookscript's), then the error
                    try:
                        got = self.call('GET', path[:-len('/status')] + '/log', {'limit': 1000}) or []
                        for row in got:
                            text = row.get('t', '') if isinstance(row, dict) else str(row)
                            if text and not text.startswith('TASK ') and text != st.get('exitstatus'):
                                print(text, file=sys.stderr)
                    except Die:
                        pass
                    raise Die(st.get('exitstatus') or 'task failed')
                return
            time.sleep(0.2)


# ------------------------------------------------------------------- conf files

def main_section(path):
    """`key: value` lines of a conf's main section (description lines left out)."""
    out = []
    try:
        with open(path, encoding='utf-8') as fh:
            for line in fh:
                line = line.rstrip('\n')
                if line.startswith('['):
                    break
                if line.strip() and not line.startswith('#'):
                    out.append(line)
    except FileNotFoundError:
        return None
    return out


def need_vmid(text):
    if not re.fullmatch(r'[1-9]\d{2,8}', str(text)):
        raise Die("value '{0}' does not look like a valid VM ID".format(text))
    return int(text)


# ------------------------------------------------------------------- commands

def cmd_list(api, args):
    rows = sorted(api.call('GET', '/nodes/{0}/lxc'.format(api.node)), key=lambda r: int(r['vmid']))
    print('{0:<10} {1:<10} {2:<12} {3:<20}'.format('VMID', 'Status', 'Lock', 'Name').rstrip())
    for r in rows:
        print('{0:<10} {1:<10} {2:<12} {3:<20}'.format(r['vmid'], r['status'], r.get('lock') or '',
                                                       r.get('name') or '').rstrip())
    return 0


def cmd_status(api, args):
    vmid = need_vmid(args[0]) if args else None
    if vmid is None:
        raise Die('400 not enough arguments\npct status <vmid> [OPTIONS]')
    st = api.ct(vmid, '/status/current')
    print('status: {0}'.format(st['status']))
    if '--verbose' in args[1:]:
        for key in sorted(st):
            if key != 'status':
                print('{0}: {1}'.format(key, json.dumps(st[key]) if isinstance(st[key], dict) else st[key]))
    return 0


def options(args):
    """--key value pairs as a dict."""
    out = {}
    i = 0
    while i < len(args):
        if not args[i].startswith('-') or i + 1 >= len(args):
            raise Die("400 unable to parse option '{0}'".format(args[i]))
        out[args[i].lstrip('-')] = args[i + 1]
        i += 2
    return out


def cmd_power(action):
    def run(api, args):
        if not args:
            raise Die('400 not enough arguments\npct {0} <vmid> [OPTIONS]'.format(action))
        vmid = need_vmid(args[0])
        upid = api.ct(vmid, '/status/' + action, 'POST', options(args[1:]))
        api.wait(upid)
        return 0
    return run


def cmd_config(api, args):
    if not args:
        raise Die('400 not enough arguments\npct config <vmid> [OPTIONS]')
    vmid = need_vmid(args[0])
    path = os.path.join(CONF_DIR, '{0}.conf'.format(vmid))
    lines = main_section(path)
    if lines is None:
        raise Die("Configuration file 'nodes/{0}/lxc/{1}.conf' does not exist".format(api.node, vmid))
    desc = api.ct(vmid, '/config').get('description')
    if desc:
        print('description: {0}'.format(desc.replace('\n', '\\n')))
    for line in lines:
        print(line)
    return 0


def cmd_set(api, args):
    if not args:
        raise Die('400 not enough arguments\npct set <vmid> [OPTIONS]')
    vmid = need_vmid(args[0])
    api.ct(vmid, '/config', 'PUT', options(args[1:]))
    return 0


def cmd_unlock(api, args):
    if not args:
        raise Die('400 not enough arguments\npct unlock <vmid>')
    api.ct(need_vmid(args[0]), '/config', 'PUT', {'delete': 'lock'})
    return 0


# ---------------------------------------------------------------------- exec

def link_debs(src, dst):
    """Hard-link the .deb files of src into dst (both on the node's filesystem); returns how many."""
    n = 0
    try:
        names = os.listdir(src)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.endswith('.deb'):
            continue
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.exists(d) or not os.path.isfile(s):
            continue
        try:
            os.link(s, d)
            n += 1
        except FileExistsError:
            pass
        except OSError:
            try:
                shutil.copy2(s, d)
                n += 1
            except OSError:
                pass
    return n


def cmd_exec(api, args):
    if not args:
        raise Die('400 not enough arguments\npct exec <vmid> [<extra-args>] [OPTIONS]')
    vmid = need_vmid(args[0])
    rest = args[1:]
    keep_env = True
    while rest and rest[0] != '--' and rest[0].startswith('--'):
        if rest[0] == '--keep-env' and len(rest) > 1:
            keep_env = rest[1] not in ('0', 'false', 'no')
            rest = rest[2:]
        else:
            raise Die("400 unknown option '{0}'".format(rest[0]))
    if rest and rest[0] == '--':
        rest = rest[1:]
    if not rest:
        raise Die('missing command')
    st = api.ct(vmid, '/status/current')
    if st.get('status') != 'running':
        raise Die('CT {0} not running'.format(vmid))
    rootfs = os.path.join(LXC, str(vmid), 'rootfs')
    archives = os.path.join(rootfs, 'var/cache/apt/archives')
    if os.path.isdir(archives):
        link_debs(APT_SHARED, archives)
    env = dict((k, v) for k, v in os.environ.items() if k not in LAB_ONLY_ENV + CLEANED_ENV)
    cmd = ['lxc-attach', '-n', str(vmid), '--keep-env' if keep_env else '--clear-env', '--'] + rest
    try:
        rc = subprocess.call(cmd, env=env)
    finally:
        if os.path.isdir(archives):
            link_debs(archives, APT_SHARED)
    return rc if rc >= 0 else 128 - rc


COMMANDS = {
    'list': cmd_list, 'status': cmd_status, 'config': cmd_config, 'set': cmd_set, 'unlock': cmd_unlock,
    'start': cmd_power('start'), 'stop': cmd_power('stop'), 'reboot': cmd_power('reboot'),
    'shutdown': cmd_power('shutdown'), 'exec': cmd_exec,
}


def main(argv):
    if not argv or argv[0] in ('help', '-h', '--help'):
        print(__doc__.split('\n\n')[1] if argv else __doc__)
        return 0 if argv else 255
    if os.geteuid() != 0:
        print('only root can use pct', file=sys.stderr)
        return 255
    start = time.time()
    logline('pct ' + shlex.join(argv))
    rc = 255
    try:
        fn = COMMANDS.get(argv[0])
        if fn is None:
            raise Die("unknown command 'pct {0}'".format(argv[0]))
        rc = fn(Api(), argv[1:])
    except Die as e:
        print(str(e), file=sys.stderr)
        rc = 255
    except KeyboardInterrupt:
        rc = 130
    finally:
        logline('exit {0} {1:.1f}s'.format(rc, time.time() - start))
    return rc


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
