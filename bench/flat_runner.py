"""The flat prototype's runner, under /usr/bin/python3 (BCC lives there).

Timing mode (benchmark 1b), inside a benchmark namespace: compile the current
dispatch program and the flat prototype, fill both with the same bindings, and
time both on the same lookups, interleaved.
  argv[1]: JSON {"collections": path, "lpm_source": path, "flat_source": path,
                 "sizes": [...], "repeat": n, "runs": n}
  Prints one JSON document.

Attach mode (benchmark 2): load the prototype, fill it with a set, put the
given sockets of running servers into its SOCKMAP (pidfd_getfd), attach it to
a benchmark namespace with a BPF link held by this process, print "ready" and
keep it attached until stdin closes (or the process is killed).
  argv[1]: JSON {"collections": path, "flat_source": path, "attach": netns path,
                 "size": n, "extra": [bindings], "dests": {label: id},
                 "sockets": [{"pid": n, "fd": n, "dest": id}]}
"""

import ctypes
import json
import os
import socket
import struct
import sys

import bindset

cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg['collections'])
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bpf_syscalls as bpf  # noqa: E402
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import bindings as bnd  # noqa: E402
from ansible_collections.bpfsteer.sk_lookup.plugins.module_utils import compiler  # noqa: E402

SO_COOKIE = 57
FILL_DEST = 4
FLAT_KEY = struct.Struct('=BB2sI16s')
LENS = struct.Struct('=I8B8B')
MAX_LENS = 8


def sockets():
    """One socket per (protocol, family), as registered sockets would be."""
    out = {}
    for i, (proto, version) in enumerate(bindset.COMBOS):
        fam = socket.AF_INET if version == 4 else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM)
        s.bind(('127.0.0.1' if version == 4 else '::1', 0))
        if proto == 'tcp':
            s.listen(16)
        cookie = struct.unpack('=Q', s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
        out[(proto, version)] = (i, s, cookie)
    return out


class Prog(object):
    def __init__(self, source):
        self.compiled = compiler.compile_source(source)
        self.maps = dict((name, fd) for name, (fd, _spec) in self.compiled.maps.items())
        self.fd = bpf.prog_load(bpf.BPF_PROG_TYPE_SK_LOOKUP, 'dispatch', self.compiled.relocated(self.maps),
                                bpf.BPF_SK_LOOKUP)

    def register(self, socks):
        for dest_id, s, _cookie in socks.values():
            bpf.map_update(self.maps['sockets'], struct.pack('=I', dest_id), struct.pack('=Q', s.fileno()))

    def reset(self):
        for name in ('bindings_0', 'flat_bindings', 'prefix_lens'):
            if name not in self.maps:
                continue
            if name == 'prefix_lens':
                for idx in range(4):
                    bpf.map_update(self.maps[name], struct.pack('=I', idx), b'\0' * LENS.size)
                continue
            size = bnd.KEY_SIZE if name == 'bindings_0' else FLAT_KEY.size
            for key in bpf.map_keys(self.maps[name], size):
                bpf.map_delete(self.maps[name], key)

    def close(self):
        self.fd.close()
        self.compiled.close()


def dest_of(binding, dests=None):
    if dests is not None:
        return dests.get(binding.label, FILL_DEST)
    if binding.label != bindset.LABEL:
        return FILL_DEST
    return bindset.COMBOS.index((binding.protocol, binding.network.version))


def fill_lpm(prog, parsed):
    keys = [b.to_key() for b in parsed.values()]
    values = [bnd.encode_value(dest_of(b), b.network) for b in parsed.values()]
    bpf.map_update_batch(prog.maps['bindings_0'], keys, values, bnd.KEY_SIZE, bnd.VALUE_SIZE)


def fill_flat(prog, parsed, dests=None):
    keys, values, lens = [], [], {}
    for b in parsed.values():
        keys.append(FLAT_KEY.pack(bnd.PROTOCOLS[b.protocol], b.family, struct.pack('>H', b.port),
                                  b.network.prefixlen, b.network.packed.ljust(16, b'\0')))
        values.append(bnd.encode_value(dest_of(b, dests), b.network))
        idx = (2 if b.protocol == 'udp' else 0) + (1 if b.network.version == 6 else 0)
        kinds = lens.setdefault(idx, {})
        kinds[b.network.prefixlen] = kinds.get(b.network.prefixlen, 0) | (2 if b.port == 0 else 1)
    bpf.map_update_batch(prog.maps['flat_bindings'], keys, values, FLAT_KEY.size, bnd.VALUE_SIZE)
    for idx, kinds in lens.items():
        order = sorted(kinds, reverse=True)
        if len(order) > MAX_LENS:
            raise SystemExit('prototype limit: more than %d prefix lengths' % MAX_LENS)
        pad = [0] * (MAX_LENS - len(order))
        bpf.map_update(prog.maps['prefix_lens'], struct.pack('=I', idx),
                       LENS.pack(len(order), *(order + pad), *([kinds[x] for x in order] + pad)))


def ctx_for(proto, version, addr, port):
    ctx = bpf.SkLookupCtx()
    ctx.protocol = socket.IPPROTO_TCP if proto == 'tcp' else socket.IPPROTO_UDP
    ctx.remote_port = socket.htons(40000)
    ctx.local_port = port
    if version == 4:
        ctx.family = socket.AF_INET
        ctx.local_ip4 = struct.unpack('=I', socket.inet_aton(addr))[0]
        ctx.remote_ip4 = struct.unpack('=I', socket.inet_aton('198.51.100.1'))[0]
    else:
        ctx.family = socket.AF_INET6
        ctx.local_ip6[:] = struct.unpack('=4I', socket.inet_pton(socket.AF_INET6, addr))
        ctx.remote_ip6[:] = struct.unpack('=4I', socket.inet_pton(socket.AF_INET6, '2001:db8::1'))
    return ctx


def pidfd_getfd(pid, fd):
    """A copy of another process's descriptor (pidfd_open + pidfd_getfd, Linux 5.6+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(438, pidfd, fd, 0)      # SYS_pidfd_getfd on x86_64
        if got < 0:
            raise OSError(ctypes.get_errno(), 'pidfd_getfd')
        return got
    finally:
        os.close(pidfd)


def attach():
    with open(cfg['flat_source']) as f:
        prog = Prog(f.read())
    for spec in cfg['sockets']:
        fd = pidfd_getfd(spec['pid'], spec['fd'])
        try:
            bpf.map_update(prog.maps['sockets'], struct.pack('=I', spec['dest']), struct.pack('=Q', fd))
        finally:
            os.close(fd)
    entries = bindset.build_set(cfg['size'] - len(cfg['extra']))[0] + cfg['extra']
    fill_flat(prog, bnd.parse_bindings(entries), dests=cfg['dests'])
    del entries
    netns = os.open(cfg['attach'], os.O_RDONLY)
    link = bpf.link_create(prog.fd, netns, bpf.BPF_SK_LOOKUP)
    os.close(netns)
    print('ready', flush=True)
    sys.stdin.read()            # attached until the parent closes stdin
    link.close()
    prog.close()


def main():
    with open(cfg['lpm_source']) as f:
        lpm_src = f.read()
    with open(cfg['flat_source']) as f:
        flat_src = f.read()
    socks = sockets()
    rows, checks = [], []
    for size in cfg['sizes']:
        # fresh programs and maps per size; the set is the one of benchmark 1
        lpm, flat = Prog(lpm_src), Prog(flat_src)
        try:
            lpm.register(socks)
            flat.register(socks)
            samples = {}

            def measure(key, ctx):
                by = samples.setdefault(key, {'lpm': [], 'flat': []})
                for name, p in (('lpm', lpm), ('flat', flat)):
                    by[name].append(bpf.prog_test_run(p.fd, ctx, cfg['repeat']))

            if size == 1:
                # each case gets a table holding exactly its one binding
                for (combo, case), (entries, probe) in sorted(bindset.single_sets().items()):
                    for p in (lpm, flat):
                        p.reset()
                    parsed = bnd.parse_bindings(entries)
                    fill_lpm(lpm, parsed)
                    fill_flat(flat, parsed)
                    ctx = ctx_for(combo[0], combo[1], *probe)
                    for _ in range(cfg['runs']):
                        measure((combo, case), ctx)
            else:
                entries, probes = bindset.build_set(size)
                parsed = bnd.parse_bindings(entries)
                fill_lpm(lpm, parsed)
                fill_flat(flat, parsed)
                del entries, parsed
                ctxs = dict(((combo, case), ctx_for(combo[0], combo[1], *probes[combo][case]))
                            for combo in bindset.COMBOS for case in bindset.CASES)
                for _ in range(cfg['runs']):           # rounds interleave cases and programs
                    for key, ctx in sorted(ctxs.items()):
                        measure(key, ctx)
            for (combo, case), by in sorted(samples.items()):
                want = 0 if case == 'miss' else socks[combo][2]
                for name, outs in by.items():
                    checks.append({'size': size, 'combo': '%s%d' % combo, 'case': case, 'prog': name,
                                   'ok': set(o[0] for o in outs) == {bindset.SK_PASS} and
                                   set(o[1] for o in outs) == {want}})
                lpm_ns = sorted(o[2] for o in by['lpm'])
                flat_ns = sorted(o[2] for o in by['flat'])
                ratios = sorted(f[2] / float(l_[2]) for f, l_ in zip(by['flat'], by['lpm']))
                rows.append({'size': size, 'proto': combo[0], 'family': 'IPv%d' % combo[1], 'case': case,
                             'lpm_ns': lpm_ns[len(lpm_ns) // 2], 'flat_ns': flat_ns[len(flat_ns) // 2],
                             'ratio': ratios[len(ratios) // 2]})
            print('flat: %d bindings done' % size, file=sys.stderr, flush=True)
        finally:
            lpm.close()
            flat.close()
    print(json.dumps({'rows': rows, 'checks': checks}))


if __name__ == '__main__':
    if cfg.get('attach'):
        attach()
    else:
        main()
