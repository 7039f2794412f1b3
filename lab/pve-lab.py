#!/usr/bin/env python3
"""The lab's Proxmox VE API: fakepve, plus a pmxcfs stand-in and a control API for tests.

    .venv/bin/python lab/pve-lab.py --node-root .lab/node --password-file .lab/pve/password \
        --cert .lab/pve/cert.pem --key .lab/pve/key.pem [--host 127.0.0.1] [--port 18006] [--node pve1]

fakepve keeps guests in memory. Real PVE keeps each container's config in
/etc/pve/lxc/<id>.conf (pmxcfs), where the program's scripts add raw `lxc.*` lines.
This launcher keeps the node tree's /etc/pve/nodes/<node>/lxc/<id>.conf in step
with fakepve, after every API request and every half second:

  * a container that appears gets its file (main section from the API config,
    keys sorted as PVE writes them, `#` description lines first);
  * API-managed keys are rewritten when they change; raw `lxc.*` lines of every
    section and sections the mirror does not know are kept as they are;
  * `[pve:pending]` and snapshot sections follow the API;
  * the file (and the container's tree under /var/lib/lxc/<id>) goes when the
    container is destroyed.

Raw lines go the other way too: GET .../lxc/<id>/config answers them as PVE
does (`lxc: [[key, value], ...]`).

Containers are real LXC containers in the node (Debian's lxc 5.0, booting /sbin/init:
systemd). A start does what PVE's vm_start does (pve-container src/PVE/LXC.pm):
/var/lib/lxc/<id>/config generated from the conf as update_lxc_config generates it
(lxc_config below), the hookscript's pre-start, then `lxc-start -F` (the node's
lab-lxc-start, standing in for pve-container@<id>.service) and post-start. Before it,
the node's lab-lxc-setup makes the rootfs from the template the first time and writes
hostname, hosts, network and DNS files as PVE::LXC::Setup does. Stop is `lxc-stop -k`,
shutdown `lxc-stop -t <timeout>`. Every half second the mirror also asks LXC (the
container's cgroup under the lab's cgroup) whether each container runs: one that powered
off by itself is marked stopped; one that rebooted from inside (the node's
lab-lxc-poststop left /var/lib/lxc/<id>/reboot, as lxc-pve-poststop-hook does) is started
again from a regenerated config without the hookscript; one that fakepve stopped another
way (a forced destroy, a rollback) is killed. `pct exec` in the node is lxc-attach.
Starts, stops, creations and destructions are appended to /var/log/lxc-events.log in the
node tree.

Hookscripts run as PVE runs them (PVE::LXC vm_start, exec_hookscript): a
container with `hookscript: <storage>:snippets/<file>` gets, at every start
(API start, pct start, reboot, create with start=1), its config generated
from the conf first, then `<file> <vmid> pre-start` run inside the node (its
namespaces, with SYSFS_ROOT=/opt/lab/sysfs) while the
container's config lock (/run/lock/lxc/pve-config-<vmid>.lock) is held, as PVE
holds it; a non-zero exit fails the start task (`hookscript error for ...`,
the script's output in the task log) and the container stays stopped. Then
post-start; pre-stop and post-stop around stop, shutdown and reboot (their
failures are logged, as PVE only warns). The file must exist and be
executable on the storage's path. Storage `local` allows snippets here (the
one-time `pvesm set local --content iso,vztmpl,backup,snippets` of a real
node), and /etc/pve/storage.cfg is written from fakepve's storages.

Control API (not PVE's; header `Authorization: Lab <password>`), JSON in and out:
  GET  /lab/state                 containers (status, pid, config), failures armed, request count
  GET  /lab/requests?since=N      API requests seen from number N: [seq, method, path, status]
  POST /lab/fail                  {"method","suffix","status","message"} or {"method","suffix","error"},
                                  optional "times": fakepve's FakePve.fail()
  POST /lab/fail-task             {"type": "vzcreate", "id": "201" or "*", "message": "...", "times": 1}:
                                  that worker task ends with `TASK ERROR: message` (a failed
                                  create leaves no container, as in PVE)
  POST /lab/start-error           {"vmid": 201, "message": "..." or null}: the CT's starts fail
  POST /lab/clear                 forget every armed failure
  POST /lab/ct-reboot             {"vmid": 202}: `reboot` run inside the running container, and
                                  waited for: LXC stops it (the node's post-stop hook turns the
                                  reboot into a stop, as src/lxc-pve-poststop-hook does) and it is
                                  started again from a regenerated config, without vm_start and so
                                  without the hookscript; LXC runs its lxc.hook.pre-start lines.
                                  Answers {"started": true, "log": [what LXC's hooks printed]} or
                                  {"started": false, "error": ..., "log": [...]} (a failing hook
                                  leaves it stopped)
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.parse

from aiohttp import web
from fakepve import FakePve
from fakepve.lxc import MOUNT_KEY
from fakepve.model import TaskError

SECTION = re.compile(r'^\[([^\]]+)\]\s*$')
KEYVAL = re.compile(r'^([a-z][a-z0-9_.-]*):\s?(.*)$', re.I)
PENDING = 'pve:pending'
log = logging.getLogger('pve-lab')


# ------------------------------------------------------------------ conf files

def parse_sections(text):
    """[(name or None for the main section, [lines])], blank lines dropped."""
    out = [(None, [])]
    for line in (text or '').splitlines():
        m = SECTION.match(line)
        if m:
            out.append((m.group(1), []))
        elif line.strip():
            out[-1][1].append(line)
    return out


def raw_lines(lines):
    return [line for line in lines if line.startswith('lxc.')]


def raw_pairs(lines):
    """[[key, value]] of the raw lxc lines, as GET config answers them."""
    pairs = []
    for line in raw_lines(lines):
        m = KEYVAL.match(line)
        if m:
            pairs.append([m.group(1), m.group(2).strip()])
    return pairs


def encode_description(text):
    """PVE::Tools::encode_text: the description as `#` lines, % and control characters escaped.

    pve-container's write_pct_config splits it with Perl's split(/\n/), which drops trailing
    empty fields: "x\n" and "x" both give one line `#x`."""
    out = []
    lines = str(text).split('\n')
    while lines and lines[-1] == '':
        lines.pop()
    for line in lines:
        enc = ''.join('%{0:02X}'.format(ord(c)) if c == '%' or ord(c) < 32 else c for c in line)
        out.append('#' + enc)
    return out


def decode_description(lines):
    """pve-container's parse_pct_config: every `#` line decoded, each followed by "\n"
    (`$descr .= PVE::Tools::decode_text($1) . "\n"`), so GET config answers "x\n" for `#x`."""
    return ''.join(urllib.parse.unquote(line[1:]) + '\n' for line in lines if line.startswith('#'))


def key_lines(cfg):
    """`key: value` lines of a config dict as PVE writes them: sorted, description and digest left out."""
    out = []
    for key in sorted(cfg):
        if key in ('description', 'digest', 'lxc') or cfg[key] is None:
            continue
        out.append('{0}: {1}'.format(key, cfg[key]))
    return out


def render_conf(ct, old_text, ours):
    """The conf file for container ct, keeping the raw lines and unknown sections of old_text.

    ours: names of the sections this mirror wrote before (they go when the API drops them).
    Returns (text, sections written)."""
    old = parse_sections(old_text)
    old_by_name = dict((name, lines) for name, lines in old)
    out = []
    if ct.config.get('description'):
        out += encode_description(ct.config['description'])
    out += key_lines(ct.config)
    out += raw_lines(old_by_name.get(None, []))
    written = set()
    if ct.pending:
        sets = dict((k, v) for k, v in ct.pending.items() if v is not None)
        deletes = sorted(k for k, v in ct.pending.items() if v is None)
        out += ['', '[{0}]'.format(PENDING)] + key_lines(sets)
        if deletes:
            out.append('delete: ' + ','.join(deletes))
        written.add(PENDING)
    for name, snap in ct.snapshots.items():
        out += ['', '[{0}]'.format(name)]
        if snap.get('description'):
            out += encode_description(snap['description'])
        out += key_lines(snap) + raw_lines(old_by_name.get(name, []))
        written.add(name)
    for name, lines in old[1:]:
        if name in written or name in ours or name == PENDING:
            continue
        out += ['', '[{0}]'.format(name)] + lines  # not the API's: kept verbatim
    return '\n'.join(out) + '\n', written


# ------------------------------------------------------------------ LXC's config

REBOOT_GRACE = 3.0  # seconds a container may be stopped without its reboot trigger before it counts as powered off
NET_KEY = re.compile(r'^net(\d+)$')
MP_KEY = re.compile(r'^mp(\d+)$')
TRUE = ('1', 'true', 'yes', 'on')


def conf_options(value):
    """PVE's property string (`a,k=v,...`): {'': first bare value, k: v}."""
    out = {}
    for i, part in enumerate(str(value).split(',')):
        k, sep, v = part.partition('=')
        if sep:
            out[k.strip()] = v.strip()
        elif i == 0:
            out[''] = part.strip()
    return out


def lxc_config(vmid, conf_text, *, include_dir='/usr/share/lxc/config', have_conf=lambda path: False,
               controllers=(), bridge_mtu=lambda bridge: 1500, device=None):
    """/var/lib/lxc/<vmid>/config as PVE 8 writes it from the conf's main section: a port of
    update_lxc_config (pve-container src/PVE/LXC.pm, at 94f5585) for what the lab's node has.

    Lab differences, each marked in the output: `lxc.apparmor.profile = unconfined` (this
    kernel has no AppArmor; PVE writes `generated`); mount points as lxc.mount.entry lines
    (PVE's lxc-pve-prestart-hook mounts them into the rootfs); the node's fake sysfs devices
    bound over the container's /sys/class and /sys/devices/pci0000:00; and the post-stop hook
    that turns a reboot from inside into a stop (lxc-pve-poststop-hook). No seccomp profile
    of PVE's own (LXC's common.conf one applies), no cpuset (no cpuset controller here).

    have_conf(path): whether the node has that LXC include file; controllers: the cgroup2
    controllers the node's cgroup offers (memory and cpu lines only if there, as PVE checks);
    bridge_mtu(name): the bridge's MTU; device(path): (b|c, major, minor) of a devN's node."""
    main = parse_sections(conf_text)[0][1]
    conf, raw = {}, []
    for line in main:
        m = KEYVAL.match(line)
        if not m or line.startswith('#'):
            continue
        if line.startswith('lxc.'):
            raw.append((m.group(1), m.group(2).strip()))
        else:
            conf.setdefault(m.group(1), m.group(2).strip())
    if str(conf.get('template', '')) in TRUE:
        return None
    custom_idmap = any(k == 'lxc.idmap' for k, _ in raw)
    unpriv = str(conf.get('unprivileged', '0')) in TRUE or custom_idmap
    ostype = conf.get('ostype') or 'debian'
    d = '/var/lib/lxc/{0}'.format(vmid)
    out = ['lxc.cgroup.relative = 0',
           'lxc.cgroup.dir.monitor = lxc.monitor/{0}'.format(vmid),
           'lxc.cgroup.dir.container = lxc/{0}'.format(vmid),
           'lxc.cgroup.dir.container.inner = ns',
           'lxc.arch = {0}'.format(conf.get('arch') or 'amd64')]
    inc = '{0}/{1}.common.conf'.format(include_dir, ostype)
    out.append('lxc.include = {0}'.format(inc if have_conf(inc) else include_dir + '/common.conf'))
    if unpriv:
        inc = '{0}/{1}.userns.conf'.format(include_dir, ostype)
        out.append('lxc.include = {0}'.format(inc if have_conf(inc) else include_dir + '/userns.conf'))
        # src/lxc-pve-userns.conf: the device list reset, then a deny-list that denies nothing
        out += ['lxc.cgroup2.devices.deny =', 'lxc.cgroup2.devices.allow =', 'lxc.cgroup2.devices.allow = a']
    out.append('lxc.apparmor.profile = unconfined')  # lab: this kernel has no AppArmor (PVE: generated)
    features = conf_options(conf.get('features', ''))
    if str(features.get('fuse', '')) in TRUE:
        out.append('lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file 0 0')
    if unpriv and str(features.get('force_rw_sys', '')) not in TRUE:
        out.append('lxc.mount.auto = sys:mixed')
    for key in sorted((k for k in conf if re.fullmatch(r'dev\d+', k)), key=lambda k: int(k[3:])):
        dev = conf_options(conf[key])
        path = dev.get('path') or dev.get('')
        if not path:
            raise ValueError('Path is not defined for passthrough device {0}'.format(key))
        kind, major, minor = device(path)
        out.append('lxc.cgroup2.devices.allow = {0} {1}:{2} {3}'.format(
            kind, major, minor, 'r' if str(dev.get('deny-write', '')) in TRUE else 'rw'))
        if str(dev.get('deny-write', '')) in TRUE:
            out.append('lxc.cgroup2.devices.deny = {0} {1}:{2} w'.format(kind, major, minor))
    out.append('lxc.monitor.unshare = 1')
    if unpriv and not custom_idmap:
        out += ['lxc.idmap = u 0 100000 65536', 'lxc.idmap = g 0 100000 65536']
    if str(conf.get('console', '1')) not in TRUE:
        out += ['lxc.console.path = none', 'lxc.cgroup2.devices.deny = c 5:1 rwm']
    tty = 0 if str(conf.get('cmode', 'tty')) == 'shell' else int(conf.get('tty', 2))
    out.append('lxc.tty.max = {0}'.format(tty))
    out.append('lxc.environment = TERM=linux')
    out.append('lxc.uts.name = {0}'.format(conf.get('hostname') or 'CT{0}'.format(vmid)))
    if 'memory' in controllers:
        memory = int(conf.get('memory') or 512)
        out.append('lxc.cgroup2.memory.max = {0}'.format(memory * 1024 * 1024))
        # Config.pm calculate_memory_constraints
        high = (memory - 128) * 1024 * 1024 if memory >= 16 * 1024 else memory * 1024 * 1016
        out.append('lxc.cgroup2.memory.high = {0}'.format(high))
        out.append('lxc.cgroup2.memory.swap.max = {0}'.format(int(conf.get('swap') or 0) * 1024 * 1024))
    if 'cpu' in controllers:
        if conf.get('cpulimit') and float(conf['cpulimit']):
            out.append('lxc.cgroup2.cpu.max = {0} 100000'.format(int(100000 * float(conf['cpulimit']))))
        if conf.get('cpuunits') is not None:
            out.append('lxc.cgroup2.cpu.weight = {0}'.format(max(1, min(10000, int(conf['cpuunits'])))))
    out.append('lxc.rootfs.path = {0}/rootfs'.format(d))
    if unpriv:
        out.append('lxc.rootfs.options = idmap=container')  # lab: PVE chowns the tree to 100000+ instead
    if conf.get('entrypoint'):
        out.append('lxc.init.cmd = {0}'.format(conf['entrypoint']))
    for key in sorted(k for k in conf if NET_KEY.match(k)):
        ind = NET_KEY.match(key).group(1)
        net = conf_options(conf[key])
        out.append('lxc.net.{0}.type = veth'.format(ind))
        out.append('lxc.net.{0}.veth.pair = veth{1}i{0}'.format(ind, vmid))
        if net.get('hwaddr'):
            out.append('lxc.net.{0}.hwaddr = {1}'.format(ind, net['hwaddr']))
        if net.get('name'):
            out.append('lxc.net.{0}.name = {1}'.format(ind, net['name']))
        limit = bridge_mtu(net.get('bridge'))
        mtu = int(net.get('mtu') or limit)
        if mtu > limit:
            raise ValueError("{0}: MTU size '{1}' is bigger than bridge MTU '{2}'".format(key, mtu, limit))
        out.append('lxc.net.{0}.mtu = {1}'.format(ind, mtu))
        out.append('lxc.net.{0}.script.up = /usr/local/sbin/lab-lxcnetaddbr'.format(ind))
    out += ['{0} = {1}'.format(k, v) for k, v in raw]
    out.append('# lab only: what PVE does elsewhere (lxc-pve-prestart-hook, lxc-pve-poststop-hook, real sysfs)')
    for key in sorted((k for k in conf if MP_KEY.match(k)), key=lambda k: int(k[2:])):
        mp = conf_options(conf[key])
        src, target = mp.get(''), mp.get('mp')
        if not src or not target:
            continue
        if not src.startswith('/'):
            src = '{0}/volumes/{1}'.format(d, key)
        opts = 'rbind,create=dir' + (',ro' if str(mp.get('ro', '')) in TRUE else '')
        out.append('lxc.mount.entry = {0} {1} none {2} 0 0'.format(src, target.lstrip('/'), opts))
    # devN: PVE's lxc-pve-prestart-hook makes the node under /var/lib/lxc/<id>/passthrough and
    # lxc-pve-autodev-hook bind-mounts it onto the container's /dev (pve-container src/, 94f5585);
    # the lab makes the node when it writes this config (passthrough_nodes) and mounts it here
    for key in sorted((k for k in conf if re.fullmatch(r'dev\d+', k)), key=lambda k: int(k[3:])):
        dev = conf_options(conf[key])
        path = (dev.get('path') or dev.get('')).lstrip('/')
        out.append('lxc.mount.entry = {0}/passthrough/{1} {1} none bind,create=file 0 0'.format(d, path))
    out.append('lxc.mount.entry = /opt/lab/sysfs/class sys/class none bind,ro,optional 0 0')
    out.append('lxc.mount.entry = /opt/lab/sysfs/devices/pci0000:00 sys/devices/pci0000:00 none bind,ro,optional 0 0')
    out.append('lxc.hook.post-stop = /usr/local/sbin/lab-lxc-poststop')
    return '\n'.join(out) + '\n'


def write_atomic(path, text, mode=0o640):
    tmp = '{0}.lab-{1}.tmp'.format(path, os.getpid())
    with open(tmp, 'w', encoding='utf-8') as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_text(path):
    try:
        with open(path, encoding='utf-8') as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def rmtree_one_fs(path):
    """Remove a tree, refusing if anything in it is another filesystem (a mount); symlinks are not followed."""
    if not os.path.lexists(path):
        return
    top = os.lstat(path).st_dev
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            full = os.path.join(root, name)
            if not os.path.islink(full) and os.lstat(full).st_dev != top:
                raise OSError('{0} is another filesystem (a mount?); not removing {1}'.format(full, path))
    shutil.rmtree(path)


# ------------------------------------------------------------------ the server

class LabNode(object):
    """One node of the lab's cluster: its tree, and where lab-up.sh wrote its init's pid and cgroup
    (run/<tree's name>.pid and .cgroup beside the trees: run/node.pid for .lab/node). The container
    configs of every node live under the first node's etc/pve/nodes/<name>/lxc, which lab-up.sh binds
    into the other nodes at /etc/pve/nodes: pmxcfs shows each node every node's configs."""

    def __init__(self, name, root, pve_root):
        self.name = name
        self.root = os.path.abspath(root)
        self.conf_dir = os.path.join(os.path.abspath(pve_root), 'etc/pve/nodes', name, 'lxc')
        self.lxc_dir = os.path.join(self.root, 'var/lib/lxc')
        self.events = os.path.join(self.root, 'var/log/lxc-events.log')
        base = os.path.basename(self.root.rstrip('/'))
        run = os.path.join(os.path.dirname(self.root), 'run')
        self.pid_file = os.path.join(run, base + '.pid')
        self.cgroup_file = os.path.join(run, base + '.cgroup')

    def path(self, inside):
        """A path of the node's own filesystem, seen from here."""
        return os.path.join(self.root, str(inside).lstrip('/'))


class LabPve(FakePve):
    def __init__(self, node_root, node='pve1', extra_nodes=(), **kwargs):
        super().__init__(**kwargs)
        # the program targets PVE 8; the nodes of one cluster: the first one and --extra-node's
        self.version, self.release_version = '8.4.1', '8.4'
        self.lab_node = node
        self.node_root = os.path.abspath(node_root)
        self.lab_nodes = {node: LabNode(node, node_root, node_root)}
        for name, root in extra_nodes:
            self.lab_nodes[name] = LabNode(name, root, node_root)
        self.nodes = dict((name, {'online': True}) for name in self.lab_nodes)
        main = self.lab_nodes[node]
        self.conf_dir, self.lxc_dir, self.events = main.conf_dir, main.lxc_dir, main.events
        self.task_failures = {}
        self.seen = []          # [seq, method, path, status]
        self._lab_ours = {}         # vmid -> sections the mirror wrote
        self._lab_pids = {}         # vmid -> pid seen at the last sync (None: stopped)
        self._busy = set()          # vmids being started or stopped right now (the mirror keeps off)
        self.lxc_output = {}        # vmid -> what the last lxc-start printed (its hooks' output)
        self._seen_stopped = {}     # vmid -> when LXC was first seen stopped while the API said running
        self.lab_dir = os.path.dirname(self.node_root)
        for n in self.lab_nodes.values():
            os.makedirs(n.conf_dir, exist_ok=True)
            os.makedirs(n.lxc_dir, exist_ok=True)
        # the node has run `pvesm set local --content iso,vztmpl,backup,snippets` (README)
        self.storages['local']['content'] = 'iso,vztmpl,backup,snippets'

    # ---------------------------------------------------------------- app

    def _build_app(self):
        app = super()._build_app()
        app.middlewares.insert(0, self._lab_middleware)
        return app

    @web.middleware
    async def _lab_middleware(self, request, handler):
        if request.path.startswith('/lab/'):
            return await self._control(request)
        try:
            response = await handler(request)
        finally:
            self.sync()
        self.seen.append([len(self.seen), request.method, request.path, getattr(response, 'status', 0)])
        return response

    async def _lxc_config_get(self, user, v):
        data = await super()._lxc_config_get(user, v)
        if not v.get('snapshot'):
            text = read_text(self.conf_path(int(v['vmid'])))
            main = parse_sections(text)[0][1] if text else []
            pairs = raw_pairs(main)
            if pairs:
                data['lxc'] = pairs
            # the description as PVE parses it from the conf (a "\n" after every line);
            # bpg's provider expects that, and diffs forever without it
            descr = decode_description(main)
            if descr:
                data['description'] = descr
        return data

    async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
        rule = self.task_failures.get((ttype, str(tid))) or self.task_failures.get((ttype, '*'))
        if rule is not None:
            if rule['times'] is not None:
                rule['times'] -= 1
                if rule['times'] <= 0:
                    self.task_failures = dict((k, r) for k, r in self.task_failures.items() if r is not rule)
            message = rule['message'].replace('{vmid}', str(tid))
            target = vm

            async def body():  # noqa: F811 - replaces the worker's body
                if ttype == 'vzcreate' and target is not None:
                    self._drop(target)  # PVE removes the half-made container
                raise TaskError(message)
        return await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)

    # ---------------------------------------------------------------- mirror

    def node_of(self, vmid, node=None):
        """The lab node of a container: the one named, else fakepve's, else the one whose
        config or tree it left (a destroyed container), else the first node."""
        if node is not None:
            return node if isinstance(node, LabNode) else self.lab_nodes[node]
        ct = self.ct(int(vmid))
        if ct is not None and ct.node in self.lab_nodes:
            return self.lab_nodes[ct.node]
        for n in self.lab_nodes.values():
            if os.path.exists(os.path.join(n.conf_dir, '{0}.conf'.format(vmid))) or \
                    os.path.lexists(os.path.join(n.lxc_dir, str(vmid))):
                return n
        return self.lab_nodes[self.lab_node]

    def conf_path(self, vmid, node=None):
        return os.path.join(self.node_of(vmid, node).conf_dir, '{0}.conf'.format(vmid))

    def event(self, vmid, what, node=None):
        line = '{0} {1} {2}\n'.format(time.strftime('%Y-%m-%dT%H:%M:%S%z'), vmid, what)
        with open(self.node_of(vmid, node).events, 'a', encoding='utf-8') as fh:
            fh.write(line)

    def sync(self):
        """Make the conf files, runtime configs and container trees follow fakepve."""
        try:
            self._sync()
        except Exception:  # noqa: BLE001 - the API must keep answering
            log.exception('conf mirror failed')

    def _sync(self):
        self._storage_cfg()
        present = set()
        for ct in self.cts:
            if ct.node not in self.lab_nodes:
                continue
            vmid = ct.vmid
            present.add((ct.node, vmid))
            path = self.conf_path(vmid)
            old = read_text(path)
            if old is None:
                self.event(vmid, 'create')
            text, written = render_conf(ct, old, self._lab_ours.get(vmid, set()))
            self._lab_ours[vmid] = written
            if text != old:
                write_atomic(path, text)
            if vmid not in self._busy:
                self._reconcile(ct)
            pid = ct.pid if ct.status == 'running' else None
            if pid != self._lab_pids.get(vmid):
                if pid is not None:
                    self.event(vmid, 'start pid={0}'.format(pid))
                elif vmid in self._lab_pids:
                    self.event(vmid, 'stop')
                self._lab_pids[vmid] = pid
        for node in self.lab_nodes.values():
            for name in os.listdir(node.conf_dir):
                m = re.fullmatch(r'(\d+)\.conf', name)
                if m and (node.name, int(m.group(1))) not in present:
                    vmid = int(m.group(1))
                    if self.lxc_running(vmid, node):
                        self.lxc_stop(vmid, node=node)  # destroyed while running (--force, --purge)
                    os.unlink(os.path.join(node.conf_dir, name))
                    self._lab_pids.pop(vmid, None)
                    self._lab_ours.pop(vmid, None)
                    self.event(vmid, 'destroy', node)
                    self._remove_tree(vmid, node)

    def _reconcile(self, ct):
        """fakepve's power state against LXC's: a container that powered off by itself is
        stopped; one whose post-stop hook asked for a reboot is started again (no hookscript,
        as pve-container@<id>'s restart); one fakepve stopped another way is killed."""
        state = self.lxc_state(ct.vmid)
        if ct.status == 'running' and state == 'stopped':
            reboot = os.path.join(self.node_of(ct.vmid).lxc_dir, str(ct.vmid), 'reboot')
            # LXC may leave the monitor's cgroup before its post-stop hook has written the
            # trigger: without one, wait a little before calling it a power-off
            first = self._seen_stopped.setdefault(ct.vmid, time.time())
            if not os.path.exists(reboot) and time.time() - first < REBOOT_GRACE:
                return
            self._seen_stopped.pop(ct.vmid, None)
            ct.status, ct.pid = 'stopped', None
            if os.path.exists(reboot):
                self.event(ct.vmid, 'stop (reboot from inside)')
                self._lab_pids[ct.vmid] = None
                try:
                    self._restart_after_reboot(ct)
                except TaskError as e:
                    log.warning('CT %s: reboot from inside: %s', ct.vmid, e)
            else:
                self.event(ct.vmid, 'stop (powered off inside)')
                self._lab_pids[ct.vmid] = None
        else:
            self._seen_stopped.pop(ct.vmid, None)
            if ct.status != 'running' and state == 'running':
                self.lxc_stop(ct.vmid)

    def lxc_config_text(self, vmid):
        """update_lxc_config for this node: the conf as it is now, the node's include files,
        cgroup controllers and bridges."""
        node = self.node_of(vmid)
        text = read_text(self.conf_path(vmid)) or ''
        controllers = (read_text(os.path.join(self.cgroup(node), 'cgroup.controllers')) or '').split()

        def have_conf(path):
            return os.path.isfile(node.path(path))

        def device(path):
            st = os.stat(node.path(path))
            return ('b' if stat.S_ISBLK(st.st_mode) else 'c'), os.major(st.st_rdev), os.minor(st.st_rdev)

        try:
            return lxc_config(vmid, text, have_conf=have_conf, controllers=controllers, device=device,
                              bridge_mtu=lambda bridge: self._bridge_mtu(bridge, node))
        except (OSError, ValueError) as e:
            raise TaskError(str(e)) from None

    def _bridge_mtu(self, bridge, node=None):
        """The bridge's MTU from `ip` in the node (its /sys holds only cgroup2)."""
        rc, out = self._node_run(['ip', '-o', 'link', 'show', 'dev', str(bridge)], timeout=10, node=node)
        m = re.search(r' mtu (\d+) ', out)
        if rc != 0 or not m:
            raise TaskError("bridge '{0}' does not exist on node (netN: bridge=)".format(bridge))
        return int(m.group(1))

    def _passthrough_nodes(self, vmid):
        """PVE's create_passthrough_device_node (src/PVE/LXC.pm, 94f5585) for each devN: the node,
        with the conf's mode (default 0660) and uid/gid seen through the container's id map
        (unprivileged: +100000), under /var/lib/lxc/<id>/passthrough (a fresh tree each start)."""
        conf = {}
        for line in parse_sections(read_text(self.conf_path(vmid)) or '')[0][1]:
            m = KEYVAL.match(line)
            if m and not line.startswith(('#', 'lxc.')):
                conf[m.group(1)] = m.group(2).strip()
        node = self.node_of(vmid)
        base = os.path.join(node.lxc_dir, str(vmid), 'passthrough')
        shutil.rmtree(base, ignore_errors=True)
        offset = 100000 if str(conf.get('unprivileged', '0')) in TRUE else 0
        for key in sorted((k for k in conf if re.fullmatch(r'dev\d+', k)), key=lambda k: int(k[3:])):
            dev = conf_options(conf[key])
            path = dev.get('path') or dev.get('')
            st = os.stat(node.path(path))
            made = os.path.join(base, path.lstrip('/'))
            os.makedirs(os.path.dirname(made), exist_ok=True)
            mode = int(dev.get('mode') or '0660', 8)
            os.mknod(made, (st.st_mode & (stat.S_IFCHR | stat.S_IFBLK)) | mode, st.st_rdev)
            os.chown(made, offset + int(dev.get('uid') or 0), offset + int(dev.get('gid') or 0))
            os.chmod(made, mode)

    def _write_lxc_config(self, vmid):
        d = os.path.join(self.node_of(vmid).lxc_dir, str(vmid))
        os.makedirs(d, exist_ok=True)
        try:
            self._passthrough_nodes(vmid)
        except (OSError, ValueError) as e:
            raise TaskError('passthrough devices of CT {0}: {1}'.format(vmid, e)) from None
        text = self.lxc_config_text(vmid)
        if text is None:
            try:
                os.unlink(os.path.join(d, 'config'))
            except FileNotFoundError:
                pass
            return
        write_atomic(os.path.join(d, 'config'), text, 0o644)

    # ------------------------------------------------------------------ LXC

    def cgroup(self, node=None):
        """The node's cgroup (lab-up.sh wrote it): the root of the node's cgroup namespace."""
        node = node if isinstance(node, LabNode) else self.lab_nodes[node or self.lab_node]
        path = read_text(node.cgroup_file)
        if not path or not os.path.isdir(path.strip()):
            raise TaskError('the lab node {0} is not running (no cgroup in {1})'.format(node.name, node.cgroup_file))
        return path.strip()

    def lxc_state(self, vmid, node=None):
        """LXC's view, read from the cgroups (no exec): 'running' while the container's cgroup
        lxc/<vmid> holds processes, 'stopping' while only its monitor (lxc.monitor/<vmid>, which
        runs the post-stop hooks) is left, else 'stopped'."""
        try:
            cg = self.cgroup(self.node_of(vmid, node))
        except TaskError:
            return 'stopped'
        for sub, state in (('lxc', 'running'), ('lxc.monitor', 'stopping')):
            if 'populated 1' in (read_text(os.path.join(cg, sub, str(vmid), 'cgroup.events')) or ''):
                return state
        return 'stopped'

    def lxc_running(self, vmid, node=None):
        return self.lxc_state(vmid, node) == 'running'

    def _node_run(self, argv, timeout=120, env=None, input=None, node=None):
        """Run argv in the node (the first one unless named): all its namespaces, its root and
        the cgroup /init.scope (LXC reads its own cgroup from there; pct and sshd's sessions
        run there too)."""
        node = node if isinstance(node, LabNode) else self.lab_nodes[node or self.lab_node]
        procs = os.path.join(self.cgroup(node), 'init.scope', 'cgroup.procs')
        cmd = ['/bin/sh', '-c', 'echo $$ >"$1" && shift && exec "$@"', 'sh', procs,
               'nsenter', '-t', self._node_pid(node), '-m', '-u', '-i', '-p', '-C', '-n', '-r', '-w', '--'] + list(argv)
        base = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C.UTF-8',
                'SYSFS_ROOT': '/opt/lab/sysfs'}
        base.update(env or {})
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=base, input=input)
            return p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            return 124, '{0}timed out after {1}s\n'.format(e.stdout or '', timeout)

    def _lxc_start_ct(self, ct):
        """lab-lxc-start in the node (pve-container@<id>): lxc-start -F on the generated config;
        a failure (a hook, a refused line) fails the task and leaves the container stopped."""
        vmid = str(ct.vmid)
        rc, out = self._node_run(['lab-lxc-start', vmid], timeout=120, node=self.node_of(vmid))
        lines = [line for line in out.splitlines() if line.strip()]
        if rc != 0:
            self.event(ct.vmid, 'lxc-start failed exit={0}'.format(rc))
            self._append_task_log(vmid, lines)
            self.lxc_output[ct.vmid] = lines
            raise TaskError("startup for container '{0}' failed: {1}".format(vmid, ' | '.join(lines)[-1500:]))
        try:
            pid = int(lines[-1])
        except (IndexError, ValueError):
            raise TaskError("startup for container '{0}' failed: no pid from lxc-info ({1})".format(vmid, out)) from None
        self._append_task_log(vmid, lines[:-1])
        self.lxc_output[ct.vmid] = lines[:-1]
        return pid

    def lxc_stop(self, vmid, timeout=None, node=None):
        """lxc-stop: a clean shutdown within timeout seconds (True if it stopped), or a kill."""
        node = self.node_of(vmid, node)
        argv = ['lxc-stop', '-n', str(vmid)] + (['-t', str(int(timeout))] if timeout is not None else ['-k'])
        rc, out = self._node_run(argv, timeout=(timeout or 0) + 60, node=node)
        if rc != 0 and self.lxc_running(vmid, node):
            if timeout is not None:
                return False
            raise TaskError('lxc-stop -k of CT {0} failed: {1}'.format(vmid, out.strip()))
        return True

    def _append_task_log(self, vmid, lines):
        for task in reversed(self.tasklog):
            if task['id'] == str(vmid) and task['status'] == 'running':
                task['log'].extend(lines)
                break

    def _prepare(self, ct):
        """Before each start: the rootfs (from the template the first time) and PVE's Setup files."""
        rc, out = self._node_run(['lab-lxc-setup', str(ct.vmid)], timeout=600, node=self.node_of(ct.vmid))
        if rc != 0:
            raise TaskError("unable to prepare CT {0}: {1}".format(ct.vmid, ' '.join(out.split())[-800:]))

    # ------------------------------------------------------------ hookscripts

    def store_file(self, storage, filename, size, content):
        """After fakepve's download-url or upload: on a dir storage, a container template is also a
        file on the node (PVE: <path>/template/cache/<file>), which node-side tools read (e.g.
        host-template-group.sh reads its ./etc/group). The lab's containers are made from the
        template tree itself (lab-lxc-setup), so the file holds that tree's ./etc only.
        fakepve keeps one volume list per storage for the whole cluster, where PVE keeps a `local`
        dir storage per node: so the file is written on every node of the lab (a download on one
        node is seen on all; the program downloads the template on each node that runs a container)."""
        super().store_file(storage, filename, size, content)
        st = self.storages.get(storage) or {}
        if content != 'vztmpl' or st.get('type') != 'dir' or not st.get('path'):
            return
        for node in self.lab_nodes.values():
            try:
                pid = self._node_pid(node)
            except TaskError:
                continue  # a node that is not running gets it when asked again
            self._template_file(node, pid, st['path'], filename)

    def _template_file(self, node, pid, path, filename):
        cache = node.path(os.path.join(path, 'template', 'cache'))
        os.makedirs(cache, exist_ok=True)
        # the template tree as the node mounts it (node-boot.sh), seen through its init's root
        tree = '/proc/{0}/root/var/lib/lab/ct-template'.format(pid)
        target = os.path.join(cache, filename)
        tmp = target + '.lab-partial'
        comp = ['zstd', '-q', '-c'] if filename.endswith('.zst') else ['gzip', '-c']
        with open(tmp, 'wb') as out:
            tar = subprocess.Popen(['tar', '-C', tree, '-cf', '-', './etc'], stdout=subprocess.PIPE)
            rc = subprocess.call(comp, stdin=tar.stdout, stdout=out)
            tar.stdout.close()
            if tar.wait() != 0 or rc != 0:
                raise TaskError('lab: could not write the template file {0}'.format(target))
        os.replace(tmp, target)

    def _storage_cfg(self):
        """/etc/pve/storage.cfg from fakepve's storages (pmxcfs stand-in)."""
        out = []
        for name, st in sorted(self.storages.items()):
            out.append('{0}: {1}'.format(st.get('type', 'dir'), name))
            for key in ('path', 'content', 'vgname', 'thinpool'):
                if st.get(key):
                    out.append('\t{0} {1}'.format(key, st[key]))
            out.append('')
        text = '\n'.join(out)
        for node in self.lab_nodes.values():
            path = node.path('etc/pve/storage.cfg')
            if os.path.isdir(os.path.dirname(path)) and read_text(path) != text:
                write_atomic(path, text)

    def _node_pid(self, node=None):
        """The node's init (PID 1 of its namespaces): the child of the unshare lab-up.sh started."""
        node = node if isinstance(node, LabNode) else self.lab_nodes[node or self.lab_node]
        run = node.pid_file
        try:
            with open(run, encoding='utf-8') as fh:
                outer = fh.read().strip()
            with open('/proc/{0}/task/{0}/children'.format(outer), encoding='utf-8') as fh:
                return fh.read().split()[0]
        except (OSError, IndexError):
            raise TaskError('the lab node is not running (no {0} or no init under it)'.format(run)) from None

    def _hook(self, ct, phase):
        """exec_hookscript: `<file> <vmid> <phase>` in the node under the config lock; pre-start
        failures fail the task, other phases only log."""
        try:
            self._run_hook(ct, phase)
        except TaskError as e:
            if phase == 'pre-start':
                raise
            log.warning('CT %s %s: %s', ct.vmid, phase, e)

    def _run_hook(self, ct, phase):
        volid = ct.config.get('hookscript')
        if not volid:
            return
        sid, _, volname = str(volid).partition(':')
        store = self.storages.get(sid)
        if store is None or not volname.startswith('snippets/'):
            raise TaskError("'{0}' is not in the snippets directory".format(volid))
        path = os.path.join(store.get('path') or '/var/lib/vz', volname)
        node = self.node_of(ct.vmid)
        full = node.path(path)
        if not os.path.isfile(full):
            raise TaskError("script '{0}' does not exist".format(volid))
        if not os.access(full, os.X_OK):
            raise TaskError("script '{0}' is not executable".format(volid))
        vmid = str(ct.vmid)
        rc, output = self._node_run(
            ['/bin/sh', '-c', 'mkdir -p /run/lock/lxc && exec flock -w 60 /run/lock/lxc/pve-config-"$1".lock "$2" "$1" "$3"',
             'sh', vmid, path, phase], node=node)
        self._append_task_log(vmid, [line for line in output.splitlines() if line.strip()])
        self.event(ct.vmid, 'hook {0} exit={1}'.format(phase, rc))
        if rc != 0:
            msg = "hookscript error for {0} on {1}: command '{2} {0} {1}' failed: exit code {3}".format(
                vmid, phase, path, rc)
            raise TaskError(msg)

    def _restart_after_reboot(self, ct):
        """What pve-container@<vmid>'s restart does after lxc-pve-poststop-hook: the config
        generated again, lxc-start; no vm_start, so no hookscript."""
        self._busy.add(ct.vmid)
        try:
            self._write_lxc_config(ct.vmid)
            pid = self._lxc_start_ct(ct)
        finally:
            self._busy.discard(ct.vmid)
        ct.status, ct.started_at, ct.pid = 'running', time.time(), pid
        self._lab_pids[ct.vmid] = pid
        self.event(ct.vmid, 'start pid={0} (reboot from inside)'.format(pid))

    def ct_reboot_from_inside(self, vmid):
        """`reboot` inside the container, waited for: LXC stops it (the post-stop hook leaves
        the trigger), then it starts again as _reconcile would start it."""
        ct = self.ct(vmid)
        if ct is None or ct.status != 'running' or not self.lxc_running(vmid):
            raise ValueError('CT {0} is not running'.format(vmid))
        self._busy.add(ct.vmid)
        try:
            # its exit code is lost when systemd ends the container under it: the stop decides
            # as someone typing it would: once systemd answers (a container just started may not yet)
            boot = ('for i in $(seq 300); do [ -S /run/systemd/private ] && break; sleep 0.1; done; '
                    'systemctl is-system-running --wait >/dev/null 2>&1; exec systemctl reboot')
            rc, out = self._node_run(['lxc-attach', '-n', str(vmid), '--', '/bin/sh', '-c', boot], timeout=90,
                                     node=self.node_of(vmid))
            deadline = time.time() + 60
            while self.lxc_state(vmid) != 'stopped' and time.time() < deadline:
                time.sleep(0.05)
            if self.lxc_state(vmid) != 'stopped':
                raise ValueError('CT {0} did not stop within 60 s of its reboot (systemctl reboot: exit {1}, {2})'.format(
                    vmid, rc, out.strip()))
            trigger = os.path.join(self.node_of(vmid).lxc_dir, str(vmid), 'reboot')
            deadline = time.time() + REBOOT_GRACE
            while not os.path.exists(trigger) and time.time() < deadline:
                time.sleep(0.05)  # the post-stop hook may run after the cgroups emptied
            if not os.path.exists(trigger):
                raise ValueError('CT {0} stopped without its reboot trigger'.format(vmid))
            ct.status, ct.pid = 'stopped', None
            self._lab_pids[ct.vmid] = None
            self.event(ct.vmid, 'stop (reboot from inside)')
        finally:
            self._busy.discard(ct.vmid)
        try:
            self._restart_after_reboot(ct)
        except TaskError as e:
            return {'started': False, 'error': str(e), 'log': self.lxc_output.get(ct.vmid, [])[-20:]}
        return {'started': True, 'log': self.lxc_output.get(ct.vmid, [])[-20:]}

    async def _start_steps(self, ct, user, skiplock=False):
        """vm_start: pending changes applied, the config generated from the conf, the rootfs
        set up, pre-start (a failure leaves the container stopped), lxc-start, post-start."""
        if ct.template:
            raise TaskError("you can't start a CT if it's a template")
        if not skiplock:
            self._task_lock(ct, allow=('mounted',))
        await self.ceph_io(ct, [k for k in ct.config if MOUNT_KEY.match(k)])
        await self.pause(ct.start_secs)
        if ct.start_error:
            raise TaskError(ct.start_error)
        self._apply(ct)
        self.sync()
        self._busy.add(ct.vmid)
        try:
            self._write_lxc_config(ct.vmid)
            self._prepare(ct)
            self._hook(ct, 'pre-start')
            pid = self._lxc_start_ct(ct)
        finally:
            self._busy.discard(ct.vmid)
        ct.status = 'running'
        ct.started_at = time.time()
        ct.pid = pid
        self._lab_pids[ct.vmid] = ct.pid
        self.event(ct.vmid, 'start pid={0}'.format(ct.pid))
        self._hook(ct, 'post-start')

    async def _ct_powerdown(self, ct, timeout, force):
        """vm_stop with a clean shutdown: lxc-stop -t <timeout>; killed after it if forced."""
        self._hook(ct, 'pre-stop')
        self._busy.add(ct.vmid)
        try:
            if not self.lxc_stop(ct.vmid, timeout):
                if not force:
                    raise TaskError('container did not stop')
                self.lxc_stop(ct.vmid)
        finally:
            self._busy.discard(ct.vmid)
        ct.status, ct.pid = 'stopped', None
        self._stopped(ct)

    def _stopped(self, ct):
        if ct.status == 'stopped' and self._lab_pids.get(ct.vmid) is not None:
            self._lab_pids[ct.vmid] = None
            self.event(ct.vmid, 'stop')
        self._hook(ct, 'post-stop')

    async def _lxc_stop(self, user, v):  # noqa: F811 - the API handler (the name is fakepve's)
        ct = self._here(v)
        if ct is not None and ct.status == 'running' and not ct.ha_managed:
            self._hook(ct, 'pre-stop')
        upid = await super()._lxc_stop(user, v)
        if ct is not None and ct.status == 'stopped':
            if self.lxc_running(ct.vmid):
                self.lxc_stop(ct.vmid)
            self._stopped(ct)
        return upid

    def _remove_tree(self, vmid, node=None):
        """The container's volume goes with it: move its tree aside now, delete it in the background."""
        lxc_dir = self.node_of(vmid, node).lxc_dir
        d = os.path.join(lxc_dir, str(vmid))
        if not os.path.lexists(d):
            return
        trash = os.path.join(lxc_dir, '.destroyed-{0}-{1}'.format(vmid, int(time.time() * 1000)))
        os.rename(d, trash)

        def remove():
            try:
                rmtree_one_fs(trash)
            except OSError:
                log.exception('could not remove %s', trash)
        threading.Thread(target=remove, daemon=True).start()

    async def sync_forever(self, every=0.5):
        while True:
            await asyncio.sleep(every)
            self.sync()

    # --------------------------------------------------------------- control

    async def _control(self, request):
        given = request.headers.get('Authorization', '')
        if not hmac.compare_digest(given.encode(), 'Lab {0}'.format(self.password).encode()):
            return web.json_response({'error': 'needs Authorization: Lab <password>'}, status=401)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({'error': 'body is not JSON'}, status=400)
        route = (request.method, request.path)
        try:
            if route == ('GET', '/lab/state'):
                return web.json_response(self._state())
            if route == ('GET', '/lab/requests'):
                since = int(request.query.get('since', 0))
                return web.json_response({'next': len(self.seen), 'requests': self.seen[since:]})
            if route == ('POST', '/lab/fail'):
                self.fail(body['method'], body['suffix'], status=body.get('status'), message=body.get('message'),
                          error=body.get('error'), times=body.get('times'))
                return web.json_response({'ok': True})
            if route == ('POST', '/lab/fail-task'):
                self.task_failures[(body['type'], str(body.get('id', '*')))] = {
                    'message': body['message'], 'times': body.get('times')}
                return web.json_response({'ok': True})
            if route == ('POST', '/lab/start-error'):
                ct = self.ct(int(body['vmid']))
                if ct is None:
                    return web.json_response({'error': 'no container {0}'.format(body['vmid'])}, status=404)
                ct.start_error = body.get('message')
                return web.json_response({'ok': True})
            if route == ('POST', '/lab/ct-reboot'):
                return web.json_response(self.ct_reboot_from_inside(int(body['vmid'])))
            if route == ('POST', '/lab/clear'):
                self.failures.clear()
                self.task_failures.clear()
                for ct in self.cts:
                    ct.start_error = None
                return web.json_response({'ok': True})
        except (KeyError, TypeError, ValueError) as e:
            return web.json_response({'error': '{0}: {1}'.format(type(e).__name__, e)}, status=400)
        return web.json_response({'error': 'no such control route'}, status=404)

    def _state(self):
        return {
            'node': self.lab_node,
            'nodes': sorted(self.lab_nodes),
            'containers': [{'vmid': ct.vmid, 'node': ct.node, 'status': ct.status, 'pid': ct.pid,
                            'lock': ct.lock, 'config': ct.config, 'pending': ct.pending}
                           for ct in self.cts],
            'failures': [list(k) for k in self.failures],
            'task_failures': [list(k) for k in self.task_failures],
            'requests': len(self.seen),
            'storage': dict((name, sorted(store.get('volumes', {}))) for name, store in self.storages.items()),
        }


async def serve(args):
    with open(args.password_file, encoding='utf-8') as fh:
        password = fh.read().strip()
    extra = []
    for spec in args.extra_node:
        name, _, root = spec.partition('=')
        if not name or not root:
            raise SystemExit('--extra-node wants NAME=TREE, got {0!r}'.format(spec))
        extra.append((name, root))
    pve = LabPve(args.node_root, node=args.node, extra_nodes=extra, user='root@pam', password=password,
                 host=args.host, port=args.port)
    pve.time_scale = args.time_scale
    await pve.start(args.cert, args.key)
    pve.sync()
    print('pve-lab: fakepve on https://{0}:{1} (nodes {2}, conf files in {3})'.format(
        pve.host, pve.port, ' '.join(sorted(pve.lab_nodes)), os.path.dirname(pve.conf_dir)), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    syncer = asyncio.ensure_future(pve.sync_forever())
    await stop.wait()
    syncer.cancel()
    await pve.stop()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--node-root', required=True, help='the node tree (its etc/pve is the pmxcfs stand-in)')
    p.add_argument('--node', default='pve1', help='node name (default pve1)')
    p.add_argument('--extra-node', action='append', default=[], metavar='NAME=TREE',
                   help='another node of the cluster and its tree (its pid and cgroup in run/<tree name>.*)')
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=18006)
    p.add_argument('--password-file', required=True, help="root@pam's password (first line)")
    p.add_argument('--cert', required=True)
    p.add_argument('--key', required=True)
    p.add_argument('--time-scale', type=float, default=0.0,
                   help='real seconds per PVE second (default 0: tasks finish before the request returns)')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    asyncio.run(serve(args))
    return 0


if __name__ == '__main__':
    sys.exit(main())
