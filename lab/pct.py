#!/usr/bin/python3
"""pct for the lab node: the subset of Proxmox's `pct` the program uses, backed by the lab's fakepve.

Installed as /usr/sbin/pct in the node tree by lab/lab-up.sh; runs there (python3 of
the node's Debian 12). Power state lives in fakepve, reached through its API with a root@pam
ticket (credentials in /etc/pve-lab/api.json, root-only). A container's "rootfs" is a Debian 12
tree at /var/lib/lxc/<id>/rootfs, copied from the cached template on first use.

    pct list
    pct status <id> [--verbose]
    pct start|stop|reboot|shutdown <id> [--timeout N] [--forceStop 1]
    pct config <id>                  the main section of /etc/pve/lxc/<id>.conf (pmxcfs stand-in)
    pct set <id> --key value ...     PUT .../config (API keys only, like pct set)
    pct unlock <id>
    pct exec <id> [--keep-env 0|1] [--] <command> [args...]

`pct exec` runs the command chrooted in the container's tree, in new mount, UTS, IPC and PID
namespaces (a small init reaps and passes signals on; when `pct exec` dies, the init and
everything the command started go with it), with what LXC would give it at start, read
from /var/lib/lxc/<id>/config (the main section as it was at the container's last start;
the lab's fakepve launcher writes it):
  - /proc, a tmpfs /dev with the usual nodes and a devpts, the node's fake sysfs at /sys
    (with this machine's real /sys/devices/system: CPUs and NUMA nodes);
  - mpN mount points (a bind mount of a host path at mp=; a storage volume is a directory
    under /var/lib/lxc/<id>/volumes/);
  - lxc.mount.entry lines (bind, create=file|dir, optional, ro). A device node is bound
    only if an lxc.cgroup2.devices.allow line allows its type:major:minor; otherwise the
    target is left an empty file, as unusable as LXC's device cgroup makes it;
  - hostname from the config, /etc/resolv.conf from the node.
stdin, stdout and stderr are the caller's; the exit code is the command's. With keep-env 1
(PVE 8's default) the caller's environment is kept, minus the lab's SYSFS_ROOT/DEV_ROOT.
apt's downloaded packages are shared between container trees through /var/cache/lab-apt
(hard links in before the command, new ones back after it).

Every call is logged to /var/log/pct.log: `<time> <pid> pct <args>` when it starts and
`<time> <pid> exit <code> <seconds>s` when it ends. Errors print PVE's message and exit 255.
"""

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import stat
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
TEMPLATE = '/var/lib/lab/ct-template'
APT_SHARED = '/var/cache/lab-apt'
SYSFS = '/opt/lab/sysfs'
DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
LAB_ONLY_ENV = ('SYSFS_ROOT', 'DEV_ROOT')


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


def pairs(lines):
    out = []
    for line in lines:
        m = re.match(r'^(lxc\.[\w.]+)\s*=\s*(.*)$', line)  # the runtime config's raw lines (LXC's own syntax)
        if m:
            out.append((m.group(1), m.group(2).strip()))
            continue
        key, sep, value = line.partition(':')
        if sep:
            out.append((key.strip(), value.strip()))
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


def ensure_rootfs(vmid):
    """The container's tree, copied from the template the first time (under a lock)."""
    d = os.path.join(LXC, str(vmid))
    rootfs = os.path.join(d, 'rootfs')
    if os.path.isdir(rootfs):
        return rootfs
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(rootfs):
            return rootfs
        if not os.path.isfile(os.path.join(TEMPLATE, 'etc/debian_version')):
            raise Die('the container template is not mounted at {0} (lab node not started by lab-up.sh?)'.format(
                TEMPLATE))
        partial = rootfs + '.partial'
        if os.path.lexists(partial):
            subprocess.run(['rm', '-rf', '--one-file-system', partial], check=True)
        subprocess.run(['cp', '-a', TEMPLATE, partial], check=True)
        for junk in ('.complete',):
            try:
                os.unlink(os.path.join(partial, junk))
            except FileNotFoundError:
                pass
        os.rename(partial, rootfs)
    return rootfs


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
    rootfs = ensure_rootfs(vmid)
    conf = os.path.join(LXC, str(vmid), 'config')
    if not os.path.isfile(conf):
        conf = os.path.join(CONF_DIR, '{0}.conf'.format(vmid))
    archives = os.path.join(rootfs, 'var/cache/apt/archives')
    os.makedirs(archives, exist_ok=True)
    link_debs(APT_SHARED, archives)
    if keep_env:
        env = dict((k, v) for k, v in os.environ.items() if k not in LAB_ONLY_ENV)
    else:
        env = {'PATH': DEFAULT_PATH}
        if os.environ.get('TERM'):
            env['TERM'] = os.environ['TERM']
    env['container'] = 'lxc'
    env.setdefault('PATH', DEFAULT_PATH)
    cmd = ['unshare', '--mount', '--uts', '--ipc', '--pid', '--fork', '--kill-child=SIGUSR2',
           '--propagation', 'private', '--', sys.executable, os.path.abspath(__file__), '__attach',
           str(vmid), rootfs, conf, '--'] + rest
    try:
        rc = subprocess.call(cmd, env=env)
    finally:
        if os.path.isdir(archives):
            link_debs(archives, APT_SHARED)
    return rc if rc >= 0 else 128 - rc


def run(*argv):
    subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL)


def device_rule_allows(rules, kind, major, minor):
    for rule in rules:
        words = rule.split()
        if not words:
            continue
        if words[0] == 'a':
            return True
        if len(words) < 2 or words[0] not in (kind, 'a'):
            continue
        maj, _, mino = words[1].partition(':')
        if maj in ('*', str(major)) and mino in ('*', str(minor)):
            return True
    return False


def device_allowed(rules, src, st, vmid, warn):
    kind = 'c' if stat.S_ISCHR(st.st_mode) else 'b'
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if device_rule_allows(rules, kind, major, minor):
        return True
    warn.append('CT {0}: {1} ({2} {3}:{4}) has no lxc.cgroup2.devices.allow rule: not usable'.format(
        vmid, src, kind, major, minor))
    return False


def copy_device_dir(src, dst, rules, vmid, warn):
    """Fill dst (a fresh tmpfs) with src's entries: allowed device nodes bound in, the others
    left as empty files (LXC's device cgroup would refuse to open them), symlinks copied."""
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.islink(s):
            os.symlink(os.readlink(s), d)
            continue
        st = os.stat(s)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o755)
            copy_device_dir(s, d, rules, vmid, warn)
            continue
        open(d, 'a').close()
        if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and device_allowed(rules, s, st, vmid, warn):
            run('mount', '--bind', s, d)


def attach(vmid, rootfs, conf, argv):
    """Stage two of exec, as PID 1 of fresh namespaces: mount the container's view, chroot, exec."""
    cfg = pairs(main_section(conf) or [])
    warn = []

    def under(path):
        full = os.path.normpath(os.path.join(rootfs, path.lstrip('/')))
        if full != rootfs and not full.startswith(rootfs + '/'):
            raise Die('mount target {0} escapes the container root'.format(path))
        return full

    def target(path, kind):
        full = under(path)
        if kind == 'dir':
            os.makedirs(full, exist_ok=True)
        elif not os.path.lexists(full):
            os.makedirs(os.path.dirname(full), exist_ok=True)
            open(full, 'a').close()
        return full

    run('mount', '--make-rprivate', '/')
    run('mount', '-t', 'proc', 'proc', target('/proc', 'dir'))
    dev = target('/dev', 'dir')
    run('mount', '-t', 'tmpfs', '-o', 'mode=0755,size=4m', 'lxc-dev', dev)
    for name in ('null', 'zero', 'full', 'random', 'urandom', 'tty'):
        run('mount', '--bind', '/dev/' + name, target('/dev/' + name, 'file'))
    run('mount', '-t', 'devpts', '-o', 'newinstance,ptmxmode=0666,mode=0620,gid=5', 'devpts',
        target('/dev/pts', 'dir'))
    os.symlink('pts/ptmx', under('/dev/ptmx'))
    for i, name in enumerate(('stdin', 'stdout', 'stderr')):
        os.symlink('/proc/self/fd/{0}'.format(i), under('/dev/' + name))
    os.symlink('/proc/self/fd', under('/dev/fd'))
    run('mount', '-t', 'tmpfs', '-o', 'mode=1777', 'shm', target('/dev/shm', 'dir'))
    if os.path.isdir(SYSFS):
        run('mount', '--bind', SYSFS, target('/sys', 'dir'))
        # The machine's real CPU and NUMA topology under the fake devices (libnuma, x265's
        # thread pool and friends read /sys/devices/system): from a sysfs of our own.
        real = under('/dev/.lab-sysfs')  # in this exec's own /dev tmpfs: no other exec sees it
        os.makedirs(real)
        run('mount', '-t', 'sysfs', 'sysfs', real)
        system = target('/sys/devices/system', 'dir')
        run('mount', '--bind', os.path.join(real, 'devices/system'), system)
        run('mount', '-o', 'remount,bind,ro', system)
        run('umount', '-l', real)
        os.rmdir(real)
        run('mount', '-o', 'remount,bind,ro', under('/sys'))
    rules = [v for k, v in cfg if k == 'lxc.cgroup2.devices.allow']

    # mount points: mpN = volume,mp=/path[,ro=1]
    for key, value in cfg:
        if not re.fullmatch(r'mp\d+', key):
            continue
        parts = value.split(',')
        opts = dict(p.split('=', 1) for p in parts[1:] if '=' in p)
        src, mp = parts[0], opts.get('mp')
        if not mp:
            continue
        if not src.startswith('/'):
            src = os.path.join(LXC, str(vmid), 'volumes', key)
            os.makedirs(src, exist_ok=True)
        dst = target(mp, 'dir')
        run('mount', '--bind', src, dst)
        if opts.get('ro') in ('1', 'true'):
            run('mount', '-o', 'remount,bind,ro', dst)

    # raw mount entries: SRC DST TYPE OPTIONS
    for key, value in cfg:
        if key != 'lxc.mount.entry':
            continue
        fields = value.split()
        if len(fields) < 4:
            warn.append('ignored malformed lxc.mount.entry: ' + value)
            continue
        src, dst, _fstype, mopts = fields[:4]
        mo = mopts.split(',')
        if 'bind' not in mo and 'rbind' not in mo:
            warn.append('ignored non-bind lxc.mount.entry: ' + value)
            continue
        kind = 'dir' if 'create=dir' in mo else 'file'
        if not os.path.exists(src):
            if 'optional' in mo:
                continue
            raise Die('lxc.mount.entry source {0} does not exist (and the entry is not optional)'.format(src))
        if os.path.isdir(src):
            if src == '/dev' or src.startswith('/dev/'):
                # A device directory (/dev/dri): the device cgroup still decides, node by node.
                full = target(dst, 'dir')
                run('mount', '-t', 'tmpfs', '-o', 'mode=0755,size=1m', 'lxc-devdir', full)
                copy_device_dir(src, full, rules, vmid, warn)
                if 'ro' in mo:
                    run('mount', '-o', 'remount,ro', full)
                continue
            kind = 'dir'
        full = target(dst, kind)
        st = os.stat(src)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            if not device_allowed(rules, src, st, vmid, warn):
                continue
        run('mount', '--rbind' if 'rbind' in mo else '--bind', src, full)
        if 'ro' in mo:
            run('mount', '-o', 'remount,bind,ro', full)
    for w in warn:
        logline('warning ' + w)

    hostname = dict(cfg).get('hostname') or 'CT{0}'.format(vmid)
    subprocess.run(['hostname', hostname], check=False)
    try:
        shutil.copyfile('/etc/resolv.conf', under('/etc/resolv.conf'))
    except OSError:
        pass
    os.chroot(rootfs)
    os.chdir('/root' if os.path.isdir('/root') else '/')
    return run_as_init(vmid, argv)


def run_as_init(vmid, argv):
    """Be PID 1 of the container's PID namespace: run the command as a child, pass signals on,
    reap orphans, exit with the command's status. A PID-namespace init ignores signals it has
    no handler for (even the parent-death SIGKILL), so the death of `pct exec` arrives as
    SIGUSR2 (unshare --kill-child=SIGUSR2) and ends the init: the kernel then kills every
    process left in the namespace."""
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            print('lxc-attach: {0}: failed to exec "{1}": {2}'.format(vmid, argv[0], e.strerror), file=sys.stderr)
            os._exit(127)

    def forward(sig, _frame):
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    signal.signal(signal.SIGUSR2, lambda _s, _f: os._exit(137))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == child:
            rc = os.waitstatus_to_exitcode(status)
            return rc if rc >= 0 else 128 - rc


COMMANDS = {
    'list': cmd_list, 'status': cmd_status, 'config': cmd_config, 'set': cmd_set, 'unlock': cmd_unlock,
    'start': cmd_power('start'), 'stop': cmd_power('stop'), 'reboot': cmd_power('reboot'),
    'shutdown': cmd_power('shutdown'), 'exec': cmd_exec,
}


def main(argv):
    if argv[:1] == ['__attach']:
        vmid, rootfs, conf = argv[1], argv[2], argv[3]
        try:
            return attach(vmid, rootfs, conf, argv[5:])
        except (Die, subprocess.CalledProcessError, OSError) as e:
            print('lxc-attach: {0}: {1}'.format(vmid, e), file=sys.stderr)
            return 1
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
